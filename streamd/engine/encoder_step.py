"""The encoder's cache-aware streaming step, run eagerly or replayed from CUDA graphs.

On a GPU a streaming step of the nemotron-0.6b encoder is launch-bound: ~37 ms for one stream on
an H200, almost all of it kernel launches and Python in 24 conformer layers (docs/benchmarks.md).
A CUDA graph replays the whole step's kernels with one launch. NeMo captures its RNNT decoder
this way but not the encoder, so this module does, within what a graph allows:

* A graph has fixed shapes. Batches are padded up to a bucket (powers of two, and 1.5x powers
  of two from 24: at most a third of a step is padding). Padded rows are computed and ignored:
  every operation of the encoder is per row (eval-mode batch norm uses its running statistics).
* The number of mel frames must be fixed too, and a cache-aware step must not be padded in time:
  the attention cache kept after a step depends on the step's frame count. Only steady chunks are
  replayed (every stream of the group fed a whole chunk after a full pre-encode history: one
  frame count per chunk size); first chunks, short last chunks and [70, 0]'s second chunk run
  eagerly. They are a stream's first and last steps only.
* Inputs and the new caches live in static buffers sized for the largest bucket used so far,
  shared by every graph (a bucket uses its leading rows). When a larger bucket is needed, the
  buffers grow and graphs are captured again as they are used; the old ones are retired, not
  destroyed (below). The server captures the largest bucket first, so its buffers never grow.
* Graphs are kept per model, not per engine, so that the engines a benchmark builds over one
  model share them (:func:`encoder_step`); all share one memory pool (only one runs at a time).

Capturing needs a CUDA device; on other devices the same padded static-buffer path runs eagerly
when ``static_buffers`` is forced, which is how the CPU tests check the padding and buffer logic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from streamd.log import get_logger

log = get_logger(__name__)

EncoderOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def bucket(batch: int) -> int:
    """The padded batch size a graph is captured for: 1, 2, 4, 8, 16, 24, 32, 48, 64, 96, ..."""
    power = 1
    while power < batch:
        power *= 2
    three_quarters = power * 3 // 4
    return three_quarters if power >= 32 and batch <= three_quarters else power


def buckets_up_to(batch: int) -> list[int]:
    """Every bucket a batch of at most ``batch`` streams may be padded to, largest first."""
    return sorted({bucket(b) for b in range(1, batch + 1)}, reverse=True)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph | None  # None: the static-buffer path without capture (CPU tests)
    run: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    encoded: torch.Tensor | None = None
    encoded_len: torch.Tensor | None = None

    def replay(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is None:
            return self.run()
        self.graph.replay()
        assert self.encoded is not None and self.encoded_len is not None
        return self.encoded, self.encoded_len


class EncoderStep:
    """``cache_aware_stream_step`` for a batch of streams, eager or from CUDA graphs."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        parameter = next(encoder.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.cuda_graphs = False
        self.static_buffers = False  # the graph path's buffers without capturing (CPU tests)
        self._graphs: dict[tuple[Any, ...], _Graph] = {}
        # Graphs captured on buffers since outgrown, kept alive with their buffers until graphs are
        # switched off. On an H200 (torch 2.11), the first replay after the old graphs were destroyed
        # at a growth hit an illegal memory access (2026-11-27; cause not established): keeping
        # them costs only the smaller buffers.
        self._retired: list[_Graph] = []
        self._rows = 0  # batch rows of the static buffers
        self._buffers: dict[str, torch.Tensor] = {}
        self._signals: dict[int, torch.Tensor] = {}  # per mel frame count
        self._pool: Any = None

    def set_cuda_graphs(self, enabled: bool) -> None:
        """Replay steady steps from CUDA graphs (only on CUDA; elsewhere a warning and eager)."""
        if enabled and self.device.type != "cuda":
            log.warning("encoder CUDA graphs need a CUDA device; running eagerly", device=str(self.device))
            enabled = False
        if enabled != self.cuda_graphs:
            self._reset(0)  # new buffers when next needed, and with them a memory pool for the graphs
            self._retired.clear()
            self._pool = None
        self.cuda_graphs = enabled

    @property
    def graphs_captured(self) -> int:
        return len(self._graphs)

    def __call__(self, signal: torch.Tensor, lengths: torch.Tensor, cache: tuple[torch.Tensor, ...], drop: int,
                 key: Any, steady: bool) -> EncoderOutput:
        """One step over ``signal`` [B, n_mels, T]. ``key`` names the encoder's current streaming
        settings (the chunk size, set on the encoder by the caller): graphs are per key, frame
        count, frames dropped and bucket. ``steady``: every stream is fed a whole chunk after a full
        history, so that the frame count is the chunk size's one (only such steps are replayed)."""
        if not steady or not (self.cuda_graphs or self.static_buffers):
            return self._eager(signal, lengths, cache, drop)
        batch, frames = signal.shape[0], signal.shape[2]
        graph = self._graph(key, drop, frames, bucket(batch), signal.shape[1], cache)
        if graph is None:
            return self._eager(signal, lengths, cache, drop)
        # Padded rows keep what earlier steps left there (or the capture's fill): any finite input.
        buffers = self._buffers
        self._signals[frames][:batch].copy_(signal)
        buffers["lengths"][:batch].copy_(lengths)
        buffers["channel"][:, :batch].copy_(cache[0])
        buffers["time"][:, :batch].copy_(cache[1])
        buffers["channel_len"][:batch].copy_(cache[2])
        encoded, encoded_len = graph.replay()
        return (encoded[:batch], encoded_len[:batch], buffers["channel"][:, :batch], buffers["time"][:, :batch],
                buffers["channel_len"][:batch])

    def capture(self, key: Any, drop: int, frames: int, rows: int, n_mels: int) -> None:
        """Capture ahead of use (server warm-up), so that no live step waits for a capture."""
        cache = self.encoder.get_initial_cache_state(batch_size=1, dtype=self.dtype, device=self.device)
        self._graph(key, drop, frames, rows, n_mels, cache)

    def _eager(self, signal: torch.Tensor, lengths: torch.Tensor, cache: tuple[torch.Tensor, ...],
               drop: int) -> EncoderOutput:
        return self.encoder.cache_aware_stream_step(
            processed_signal=signal, processed_signal_length=lengths, cache_last_channel=cache[0],
            cache_last_time=cache[1], cache_last_channel_len=cache[2], keep_all_outputs=True,
            drop_extra_pre_encoded=drop)

    def _graph(self, key: Any, drop: int, frames: int, rows: int, n_mels: int,
               cache: tuple[torch.Tensor, ...]) -> _Graph | None:
        """The graph for this step shape, captured if new; None if the capture failed: then graphs
        are switched off, with a warning, rather than failing steps."""
        if rows > self._rows:
            self._grow(rows, cache)
        if frames not in self._signals:
            self._signals[frames] = torch.zeros(self._rows, n_mels, frames, dtype=self.dtype, device=self.device)
        graph = self._graphs.get((key, drop, frames, rows))
        if graph is None:
            try:
                graph = self._graphs[(key, drop, frames, rows)] = self._new_graph(drop, frames, rows)
            except Exception as exc:  # any capture failure: eager steps still work
                log.warning("encoder CUDA graph capture failed; encoder CUDA graphs off", error=repr(exc),
                            frames=frames, rows=rows)
                self.set_cuda_graphs(False)
                return None
        return graph

    def _grow(self, rows: int, cache: tuple[torch.Tensor, ...]) -> None:
        """Static buffers for ``rows`` streams; graphs captured on the old ones are retired."""
        if self._graphs:
            log.info("encoder graph buffers grow; graphs are captured again", rows=rows, retired=len(self._graphs))
        self._retired.extend(self._graphs.values())
        self._reset(rows)
        channel, conv, channel_len = cache
        self._buffers = {
            "channel": channel.new_zeros((channel.shape[0], rows, *channel.shape[2:])),
            "time": conv.new_zeros((conv.shape[0], rows, *conv.shape[2:])),
            "channel_len": channel_len.new_zeros(rows),
            "lengths": torch.zeros(rows, dtype=torch.int64, device=self.device),
        }
        if self.cuda_graphs and self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()

    def _reset(self, rows: int) -> None:
        self._graphs.clear()
        self._signals.clear()
        self._buffers.clear()
        self._rows = rows

    def _new_graph(self, drop: int, frames: int, rows: int) -> _Graph:
        buffers, signal = self._buffers, self._signals[frames][:rows]
        channel, conv = buffers["channel"][:, :rows], buffers["time"][:, :rows]
        channel_len, lengths = buffers["channel_len"][:rows], buffers["lengths"][:rows]

        def run() -> tuple[torch.Tensor, torch.Tensor]:
            encoded, encoded_len, new_channel, new_conv, new_len = self._eager(
                signal, lengths, (channel, conv, channel_len), drop)
            # The new caches overwrite the inputs: every layer has read its cache by now.
            channel.copy_(new_channel)
            conv.copy_(new_conv)
            channel_len.copy_(new_len)
            return encoded, encoded_len

        lengths.fill_(frames)  # rows no step has used yet: any finite input will do
        if not self.cuda_graphs:
            return _Graph(None, run)
        started = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # cuBLAS/cuDNN set up their workspaces outside the capture
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            encoded, encoded_len = run()
        torch.cuda.synchronize(self.device)
        log.debug("encoder graph captured", frames=frames, rows=rows, drop=drop,
                  ms=round(1000 * (time.perf_counter() - started), 1))
        return _Graph(graph, run, encoded, encoded_len)


def encoder_step(model: Any) -> EncoderStep:
    """The model's :class:`EncoderStep`, created on first use and kept with the model."""
    step = model.__dict__.get("_streamd_encoder_step")
    if step is None:
        step = model.__dict__["_streamd_encoder_step"] = EncoderStep(model.encoder)
    return step
