"""The joint's blank output bias per att_context_size, for token-rate calibrated models.

:mod:`streamd.models.token_rate` calibrates an untrained benchmark model so that it emits a trained
model's number of tokens, with one blank bias per chunk size, stored in the model's config
(``streamd.token_rate.sizes``). Whatever decodes a size — the engine per group, offline
transcription per call — sets that size's bias first, so both decode alike.
"""

from __future__ import annotations

from typing import Any

import torch


def blank_output(model: Any) -> tuple[torch.nn.Linear, int]:
    """The joint's last linear layer and the blank's row in it."""
    last = model.joint.joint_net[-1]
    if not isinstance(last, torch.nn.Linear):
        raise ValueError(f"the joint network ends in {type(last).__name__}, not a linear layer")
    return last, int(model.decoder.blank_idx)


def blank_output_biases(model: Any) -> dict[tuple[int, int], float]:
    """Per att_context_size, the bias of the joint's blank output that a token-rate calibrated
    model asks for (none for any other model)."""
    calibration = (model.cfg.get("streamd") or {}).get("token_rate")
    if not calibration:
        return {}
    return {tuple(entry["att_context_size"]): float(entry["output_bias"]) for entry in calibration["sizes"]}


class BlankBias:
    """Sets a calibrated model's blank output bias for the att_context_size about to be decoded;
    does nothing for any other model."""

    def __init__(self, model: Any) -> None:
        self._values = blank_output_biases(model)
        if self._values:
            self._layer, self._row = blank_output(model)

    def use(self, att_context_size: tuple[int, int]) -> None:
        if self._values:
            with torch.no_grad():  # a parameter: in place only without autograd
                self._layer.bias[self._row] = self._values[tuple(att_context_size)]
