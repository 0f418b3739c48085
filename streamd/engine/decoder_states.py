"""Every stream's RNNT decoder state in one set of slot rows, and a group's greedy decoding from it.

NeMo's greedy label-looping decoder (``GreedyBatchedRNNTInfer``) takes the previous state as one
partial ``Hypothesis`` per stream and returns one per stream: after every call it splits the
batched state into per-stream items, and before the next it stacks them again; each result
``Hypothesis`` is built from tensor slices, and each continuation merged into its partial. That
wrapping is Python work per stream per step: with 512 streams on the CPU it took ~30 ms of a
~35 ms decoder phase whose decoding (``decoding_computer``) took ~5 ms; on a GPU, where the
decoding itself is fast, it is most of the phase. NeMo's streaming pipelines wrap it the same way.

Here the state stays batched: rows preallocated for every stream slot (the slots of the encoder's
cache context manager), gathered for a group with one ``index_select`` per state tensor and
written back with one ``index_copy_``, and the group's tokens and their frames come back in one
transfer. The decoding is NeMo's own ``decoding_computer``, with its CUDA graphs where enabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DecodedGroup:
    """One decoding call's result, kept apart from the slot rows until the caller commits it."""

    tokens: list[list[int]]  # per row: this call's tokens
    frames: list[list[int]]  # per row: their encoder frames, counted from the stream's start
    probabilities: list[list[float]]  # per row: the model's probability of each token
    state: Any  # NeMo's BatchedLabelLoopingState after the call (rows may exceed the group: CUDA graphs pad)


class DecoderStates:
    """The decoder state of ``slots`` streams, one row each; :meth:`decode` runs a group.

    A row holds a stream's state only between steps: :meth:`decode` starts a stream's first call
    from the decoder's initial (after start-of-sequence) state whatever its row holds, so a slot
    needs no reset when it passes to a new stream.
    """

    def __init__(self, model: Any, slots: int, device: torch.device) -> None:
        self.model = model
        computer = self._computer()
        with torch.inference_mode():
            one = computer._get_batched_decoding_state_after_sos(device=device, batch_size=1)
            two = computer._get_batched_decoding_state_after_sos(device=device, batch_size=2)
            rows = computer._get_batched_decoding_state_after_sos(device=device, batch_size=slots)
        self._template = rows
        # The batch dimension of each state tensor: where a batch of two differs from one (an
        # LSTM's (h, c) are [layers, B, H], the other fields [B, ...]).
        self._dims = [next(d for d, (a, b) in enumerate(zip(t1.shape, t2.shape)) if a != b)
                      for t1, t2 in zip(_tensors(one), _tensors(two))]
        self._rows = _tensors(rows)
        self._initial = _tensors(one)

    def _computer(self) -> Any:
        """NeMo's label-looping computer; looked up per call, as changing the decoding strategy
        (e.g. its CUDA graphs) replaces it."""
        return self.model.decoding.decoding.decoding_computer

    def decode(self, encoded: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor, first: list[int]
               ) -> DecodedGroup:
        """Greedy-decode a group's encoder output ``[B, D, T]`` from the states of its ``slots``;
        ``first``: the rows whose stream has not been decoded yet. The rows are not changed:
        :meth:`commit` writes the new state once the caller's whole step has succeeded."""
        previous = [row.index_select(dim, slots) for row, dim in zip(self._rows, self._dims)]
        if first:
            index = torch.tensor(first, device=slots.device)
            for tensor, initial, dim in zip(previous, self._initial, self._dims):
                shape = list(tensor.shape)
                shape[dim] = len(first)
                tensor.index_copy_(dim, index, initial.expand(shape).to(tensor.dtype))
        hyps, state = self._computer()(
            x=encoded.transpose(1, 2), out_len=lengths, prev_batched_state=_rebuild(self._template, previous))
        count = len(slots)
        lengths_nb, labels, stamps, _, confidence = hyps.get_data_without_blank()
        counts = lengths_nb[:count].tolist()
        width = max(counts, default=0)
        both = torch.stack((labels[:count, :width], stamps[:count, :width])).tolist()  # one transfer
        # NeMo's max_prob confidence (alpha 1) is (v p - 1) / (v - 1) over v outputs (the
        # vocabulary and blank); the emitted token is the most likely output, so p is its probability.
        outputs = self._computer()._blank_index + 1
        probabilities = ((confidence[:count, :width].float() * (outputs - 1) + 1) / outputs).tolist()
        return DecodedGroup(tokens=[row[:n] for row, n in zip(both[0], counts)],
                            frames=[row[:n] for row, n in zip(both[1], counts)],
                            probabilities=[[round(p, 4) for p in row[:n]] for row, n in zip(probabilities, counts)],
                            state=state)

    def commit(self, slots: torch.Tensor, decoded: DecodedGroup) -> None:
        """Write a decoded group's new states into its slots' rows."""
        for row, new, dim in zip(self._rows, _tensors(decoded.state), self._dims):
            row.index_copy_(dim, slots, new.narrow(dim, 0, len(slots)).to(row.dtype))


def _tensors(state: Any) -> list[torch.Tensor]:
    """A ``BatchedLabelLoopingState``'s tensors, flat, in a fixed order (see :func:`_rebuild`)."""
    return [*state.predictor_states, state.predictor_outputs, state.labels, state.decoded_lengths,
            *state.fusion_states_list]


def _rebuild(template: Any, tensors: list[torch.Tensor]) -> Any:
    """The ``BatchedLabelLoopingState`` of ``tensors`` (ordered as :func:`_tensors` gives them)."""
    predictors = len(template.predictor_states)
    return type(template)(
        predictor_states=type(template.predictor_states)(tensors[:predictors]),
        predictor_outputs=tensors[predictors],
        labels=tensors[predictors + 1],
        decoded_lengths=tensors[predictors + 2],
        fusion_states_list=tensors[predictors + 3:],
        time_jumps=None,
    )
