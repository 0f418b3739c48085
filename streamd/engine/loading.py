"""Loading a model for inference: ``.nemo`` files and pretrained names, onto a device in a dtype,
with the decoding the engine needs. Making models (architectures, training) is
:mod:`streamd.models`, which may import this, never the other way round.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import open_dict

from streamd.engine.encoder_step import encoder_step
from streamd.nemo_import import import_nemo_asr

UNTRAINED_WARNING = (
    "UNTRAINED model: its transcripts are meaningless (for shape, memory and speed benchmarks only)"
)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what to do."""


def is_untrained(model: Any) -> bool:
    """True for a model streamd built without training (its transcripts are meaningless)."""
    origin = model.cfg.get("streamd") or {}
    return "arch" in origin and not origin.get("trained")


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_model(name_or_path: str, map_location: str | torch.device = "cpu", timeout_s: float = 20.0) -> Any:
    """Load a ``.nemo`` file or a pretrained model name (the latter needs network access).

    Offline, a pretrained name fails within ``timeout_s`` with a clear message instead of hanging.
    """
    nemo_asr = import_nemo_asr()
    path = Path(name_or_path)
    if path.suffix == ".nemo" or path.exists():
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {name_or_path}")
        try:
            model = nemo_asr.models.ASRModel.restore_from(restore_path=str(path), map_location=map_location)
        except Exception as exc:
            raise ModelLoadError(f"cannot load {name_or_path}: {type(exc).__name__}: {exc}") from exc
    else:
        model = _load_pretrained(nemo_asr, name_or_path, map_location, timeout_s)
    model.eval()
    return model


def _load_pretrained(nemo_asr: Any, name: str, map_location: Any, timeout_s: float) -> Any:
    """``ASRModel.from_pretrained`` with a reachability check first (hub clients retry for minutes)."""
    import socket

    host = os.environ.get("STREAMD_HUB_HOST", "huggingface.co")
    started = time.monotonic()
    try:
        socket.create_connection((host, 443), timeout=min(timeout_s, 5.0)).close()
    except OSError as exc:
        raise ModelLoadError(
            f"model {name!r} is not a local file and the model hub ({host}) is unreachable "
            f"({exc}); download it elsewhere and pass the .nemo path"
        ) from exc
    try:
        return nemo_asr.models.ASRModel.from_pretrained(model_name=name, map_location=map_location)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load pretrained model {name!r} after {time.monotonic() - started:.1f}s: {exc}"
        ) from exc


def prepare_model(name_or_path: str, device: str = "auto", dtype: str = "float32",
                  decoder_cuda_graphs: bool = True, encoder_cuda_graphs: bool = False) -> Any:
    """Load a model onto a device in a dtype, ready for inference.

    The feature extractor stays in float32 (log-mel of low-precision audio loses the quiet
    bins); only the encoder, decoder and joint run in ``dtype``. ``decoder_cuda_graphs``: see
    :func:`set_decoder_cuda_graphs`; ``encoder_cuda_graphs``: the streaming engine replays the
    encoder's steady steps from CUDA graphs (CUDA only; :mod:`streamd.engine.encoder_step`).
    """
    from streamd.devices import check_dtype_supported, parse_dtype, resolve_device

    torch_device = resolve_device(device)
    torch_dtype = parse_dtype(dtype)
    check_dtype_supported(torch_device, torch_dtype)
    model = load_model(name_or_path, map_location=torch_device)
    model.to(torch_device)
    # Cast the networks only: a round trip of the preprocessor through a 16-bit dtype would
    # lose its filterbank and window precision for good.
    for network in (model.encoder, model.decoder, model.joint):
        network.to(dtype=torch_dtype)
    model.eval()
    set_decoder_cuda_graphs(model, decoder_cuda_graphs)
    encoder_step(model).set_cuda_graphs(encoder_cuda_graphs)
    return model


def set_decoder_cuda_graphs(model: Any, enabled: bool) -> None:
    """Whether NeMo's batched greedy RNNT decoder runs its label loop as CUDA graphs.

    NeMo does by default on CUDA (``decoding.greedy.use_cuda_graph_decoder``) and never on other
    devices; the switch exists to compare both on a GPU (docs/benchmarks.md).
    """
    configure_decoding(model, use_cuda_graph_decoder=enabled)


# NeMo's values for the greedy options streamd sets, where a model's config leaves them out.
_GREEDY_DEFAULTS = {"loop_labels": True, "use_cuda_graph_decoder": True, "preserve_frame_confidence": False,
                    "confidence_method_cfg": None}
# What the streaming engine decodes with: NeMo's label-looping batched greedy decoder (it batches
# all streams of a step and continues each from its decoder state alone), recording for each
# emitted token the model's probability of it: NeMo's "max_prob" measure with alpha 1, which
# streamd.engine.decoder_states turns back into the probability (protocols report it as
# confidence). It changes no decision, only what is recorded.
STREAMING_GREEDY = {"loop_labels": True, "preserve_frame_confidence": True,
                    "confidence_method_cfg": {"name": "max_prob", "alpha": 1.0}}


def configure_decoding(model: Any, strategy: str | None = None, **greedy: Any) -> bool:
    """Set ``decoding.strategy`` and ``decoding.greedy`` options; NeMo's decoder is rebuilt only
    when one of them differs from the model's (returns whether it was)."""
    decoding = model.cfg.decoding
    current = decoding.get("greedy") or {}
    if (strategy is None or decoding.get("strategy") == strategy) and all(
            current.get(key, _GREEDY_DEFAULTS.get(key)) == value for key, value in greedy.items()):
        return False
    decoding = decoding.copy()
    with open_dict(decoding):
        if strategy is not None:
            decoding.strategy = strategy
        decoding.greedy = decoding.get("greedy") or {}
        for key, value in greedy.items():
            decoding.greedy[key] = value
    model.change_decoding_strategy(decoding, verbose=False)
    return True
