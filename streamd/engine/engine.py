"""The streaming engine: continuous batching of cache-aware FastConformer-RNNT streams.

Built on NeMo's lower-level streaming pieces — ``ConformerEncoder.cache_aware_stream_step``,
the batched greedy RNNT decoder with partial hypotheses, and ``CacheAwareContextManager`` from
``nemo.collections.asr.inference`` (preallocated cache slots, gathered per step). Where this
deviates from NeMo 3.0's ``CacheAwareRNNTPipeline``, and why:

* One pipeline serves one ``att_context_size``; here every stream picks its own (80/160/560/
  1120 ms) on one loaded model: each step groups ready streams by chunk size.
* The pipeline recomputes features per chunk (frames at chunk edges see padding the offline run
  does not) and pre-fills the first chunk with log-zero frames; here features are exact
  (:mod:`streamd.engine.features`) and the first chunk is the encoder's own first chunk
  (``1 + 8R`` frames, no pre-encode cache), as in an offline run. With [70, 0] the second chunk
  has only one frame of history, fewer than the 9-frame pre-encode cache: it is fed that true
  history and drops one subsampled frame instead of two. Streaming therefore equals offline.
* The pipeline runs ending streams in a second model call per step (``keep_all_outputs``); for
  ``chunked_limited`` attention that flag changes nothing, so they share the batch here.
* The decoder continues each stream from its decoder state alone, kept batched in slot rows
  (:mod:`streamd.engine.decoder_states`), not from per-stream partial hypotheses that NeMo
  merges every step: a step's cost neither grows with the stream's age nor pays per-stream
  Python wrapping. That needs NeMo's label-looping batched greedy decoder, which the engine
  selects.
* On CUDA the encoder's steady steps can be replayed from CUDA graphs, which NeMo does for the
  decoder only (:mod:`streamd.engine.encoder_step`; ``prepare_model(encoder_cuda_graphs=...)``).

The engine is single-threaded by design: one worker thread owns the model and calls every method
(see :mod:`streamd.engine.runner`). Nothing here touches asyncio.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamd.devices import device_fault
from streamd.engine.blank_bias import BlankBias
from streamd.engine.decoder_states import DecoderStates
from streamd.engine.decoding import tokens_to_text, tokens_to_words
from streamd.engine.encoder_step import buckets_up_to, encoder_step
from streamd.engine.endpointing import utterance_ended
from streamd.engine.features import FeatureExtractor, append_samples
from streamd.engine.loading import STREAMING_GREEDY, configure_decoding
from streamd.engine.offline import frame_seconds, model_device_dtype
from streamd.engine.stream import Stream, StreamOptions, StreamUpdate, Utterance
from streamd.log import get_logger
from streamd.nemo_import import import_nemo_asr

log = get_logger(__name__)


class EngineFullError(RuntimeError):
    """No free stream slot: the engine already serves ``max_streams`` streams."""


class DeviceFailedError(RuntimeError):
    """The device stopped running work (e.g. a CUDA error that poisons the process's context):
    no stream can go on in this process."""


class StateWriteError(RuntimeError):
    """Writing a group's new caches or decoder states failed partway: its streams' states are
    mixed old and new, so running their chunk again would decode from wrong context. The group's
    streams are dropped, not retried."""


@dataclass
class StepStats:
    """Timing of the last :meth:`StreamingEngine.step`, for logs and benchmarks."""

    streams: int = 0
    model_calls: int = 0
    features_s: float = 0.0
    encoder_s: float = 0.0
    decoder_s: float = 0.0
    total_s: float = 0.0


class _CacheSource:
    """Adapter giving NeMo's context manager the encoder's initial cache in our dtype/device."""

    def __init__(self, encoder: Any, dtype: torch.dtype, device: torch.device) -> None:
        self.encoder, self.dtype, self.device = encoder, dtype, device

    def get_initial_cache_state(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        return self.encoder.get_initial_cache_state(batch_size=batch_size, dtype=self.dtype, device=self.device)


class StreamingEngine:
    """Batched cache-aware streaming over one loaded model.

    Feed audio with :meth:`push_audio` (float32 mono at :attr:`sample_rate`), mark the end with
    :meth:`end_stream`, and call :meth:`step` repeatedly: each call runs at most one chunk per
    stream, batching all ready streams (up to ``max_batch``), and returns what changed.
    """

    def __init__(self, model: Any, max_batch: int = 32, max_streams: int = 64,
                 record_encoder_output: bool = False) -> None:
        nemo_asr = import_nemo_asr()
        from nemo.collections.asr.inference.utils.context_manager import CacheAwareContextManager

        self.model = model
        self.encoder = model.encoder
        self.device, self.dtype = model_device_dtype(model)
        if not isinstance(model, nemo_asr.models.EncDecRNNTModel):
            raise ValueError("streamd streams RNNT models (EncDecRNNTModel / EncDecRNNTBPEModel)")
        if getattr(self.encoder, "att_context_style", None) != "chunked_limited":
            raise ValueError("the model's encoder is not cache-aware (att_context_style chunked_limited)")
        # Label-looping batched greedy decoding: it batches all streams of a step and continues
        # each from its decoder state alone (DecoderStates).
        if configure_decoding(model, "greedy_batch", **STREAMING_GREEDY):
            log.info("decoding switched to greedy_batch with label looping and token probabilities "
                     "(streaming needs them)")
        self.att_context_sizes = [tuple(s) for s in self.encoder.att_context_size_all]
        self.sample_rate = int(model.cfg.preprocessor.sample_rate)
        self.subsampling = int(self.encoder.subsampling_factor)
        self.frame_s = frame_seconds(model)
        self.features = FeatureExtractor(model.preprocessor, self.device)
        self.max_batch = max_batch
        self.max_streams = max_streams
        self._streaming_cfgs = {}
        for size in self.att_context_sizes:
            self.encoder.set_default_att_context_size(list(size))
            self._streaming_cfgs[size] = self.encoder.streaming_cfg
        first = self._streaming_cfgs[self.att_context_sizes[0]]
        self.pre_encode_cache = int(first.pre_encode_cache_size[1])
        self.drop_extra = int(first.drop_extra_pre_encoded)
        # A steady step: a whole chunk after a full pre-encode history (the one step shape that
        # the encoder's CUDA graphs replay, see streamd.engine.encoder_step).
        self._steady_frames = {size: int(cfg.chunk_size[1]) + self.pre_encode_cache
                               for size, cfg in self._streaming_cfgs.items()}
        self._encoder_step = encoder_step(model)  # eager, or CUDA graphs as prepare_model set
        # A benchmark model calibrated to a trained model's token rate asks for its joint's blank
        # output bias to be set per chunk size (streamd.models.token_rate); any other model has none.
        self._blank_bias = BlankBias(model)
        self.contexts = CacheAwareContextManager(_CacheSource(self.encoder, self.dtype, self.device), max_streams)
        self.decoder_states = DecoderStates(model, max_streams, self.device)  # rows indexed by the same slots
        self.streams: dict[int, Stream] = {}
        self._ids = itertools.count()
        self.last_stats = StepStats()
        # For parity checks and tests: every stream's encoder output, chunk by chunk.
        self.record_encoder_output = record_encoder_output
        self.encoder_outputs: dict[int, list[torch.Tensor]] = defaultdict(list)

    # ----------------------------------------------------------------- stream lifecycle
    def open_stream(self, options: StreamOptions | None = None) -> int:
        options = options or StreamOptions()
        if tuple(options.att_context_size) not in self._streaming_cfgs:
            raise ValueError(
                f"att_context_size {list(options.att_context_size)} not supported by this model; "
                f"choose one of {[list(s) for s in self.att_context_sizes]}"
            )
        if len(self.streams) >= self.max_streams:
            raise EngineFullError(f"engine serves its maximum of {self.max_streams} streams")
        stream_id = next(self._ids)
        self.streams[stream_id] = Stream(stream_id, options, self.features.n_mels, waiting_since=time.monotonic())
        return stream_id

    def push_audio(self, stream_id: int, samples: np.ndarray) -> None:
        """Append float32 mono samples at :attr:`sample_rate`. NaN/Inf are refused here so a
        bad client can never poison a batch shared with other streams."""
        stream = self._live(stream_id)
        if stream.eof:
            raise ValueError("audio after end of stream")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(samples).all():
            raise ValueError("audio contains NaN or infinite samples")
        append_samples(stream.features, samples)

    def end_stream(self, stream_id: int) -> None:
        """No more audio: the stream's remaining audio is decoded and its last final emitted."""
        self._live(stream_id).eof = True

    def finalize(self, stream_id: int) -> None:
        """End the current utterance at the audio decoded so far (at the next step)."""
        self._live(stream_id).finalize_requested = True

    def close_stream(self, stream_id: int) -> None:
        """Drop a stream at once (client gone): no final, its cache slot is freed."""
        if self.streams.pop(stream_id, None) is not None:
            self._free_slot(stream_id)

    def close_all_streams(self, free_slots: bool = True) -> list[int]:
        """Drop every stream at once (no finals); return their ids. ``free_slots=False`` leaves
        the cache slots as they are: for a device that runs nothing more (freeing one is a
        device operation, which would raise)."""
        ids = list(self.streams)
        for stream_id in ids:
            if free_slots:
                self.close_stream(stream_id)
            else:
                del self.streams[stream_id]
        return ids

    def _free_slot(self, stream_id: int) -> None:
        """Give the stream's cache slot back (it gets one in its first model call, failed or not)."""
        if stream_id in self.contexts.streamidx2slotidx:
            self.contexts.reset_slots([stream_id], [True])

    def has_work(self) -> bool:
        """True when a :meth:`step` would make progress."""
        return any(self._ready(s) or s.finalize_requested for s in self.streams.values())

    def _live(self, stream_id: int) -> Stream:
        stream = self.streams.get(stream_id)
        if stream is None or stream.finished:
            raise KeyError(f"no open stream {stream_id}")
        return stream

    @property
    def architecture(self) -> str:
        """streamd's name for an architecture it made (``tiny``, ``nemotron-0.6b``), else the
        encoder's layers x width and the model's class."""
        made = (self.model.cfg.get("streamd") or {}).get("arch")
        return made or f"{len(self.encoder.layers)}x{self.encoder.d_model} {type(self.model).__name__}"

    def chunk_samples(self, size: tuple[int, int]) -> int:
        """Audio samples in one steady chunk of an att_context_size: R + 1 encoder frames."""
        return (size[1] + 1) * round(self.sample_rate * self.frame_s)

    # ----------------------------------------------------------------- scheduling
    def _chunk_frames(self, stream: Stream) -> int:
        """Mel frames of the stream's next chunk: 1 + 8R first, then 8(R + 1)."""
        cfg = self._streaming_cfgs[stream.options.att_context_size]
        return int(cfg.chunk_size[0] if stream.steps == 0 else cfg.chunk_size[1])

    def _ready(self, stream: Stream) -> bool:
        """Whether the stream has a whole chunk (counting audio not yet featurized) or has ended."""
        if stream.finished:
            return False
        if stream.eof:
            return True
        unfeaturized = self.features.ready_frames(stream.features, False) - stream.features.frames_done
        return stream.pending_frames() + unfeaturized >= self._chunk_frames(stream)

    def _pre_encode(self, stream: Stream) -> tuple[torch.Tensor | None, int]:
        """Frames fed before the chunk and how many subsampled frames they yield (dropped)."""
        if stream.steps == 0 or stream.history is None:
            return None, 0
        history = stream.history
        if history.shape[1] >= self.pre_encode_cache:
            return history[:, -self.pre_encode_cache :], self.drop_extra
        # Short history ([70, 0] after its 1-frame first chunk): feed all of it, as the offline
        # convolution sees it, and drop exactly the frames it produces.
        return history, math.ceil(history.shape[1] / self.subsampling)

    # ----------------------------------------------------------------- the step
    def step(self) -> list[StreamUpdate]:
        """Run one batched step over every ready stream; return per-stream updates."""
        started = time.perf_counter()
        stats = StepStats()
        updates: dict[int, StreamUpdate] = {}

        # 1. features for every stream with new audio and less than its next chunk's frames, up
        # to that chunk (one batched featurizer call; see FeatureExtractor.extract)
        needs = [s for s in self.streams.values()
                 if not s.features_final and s.pending_frames() < self._chunk_frames(s) and (
                     s.eof or self.features.ready_frames(s.features, False) > s.features.frames_done)]
        extracted: list[tuple[Stream, torch.Tensor]] = []

        def extract(part: list[Stream]) -> None:
            extracted.extend(zip(part, self.features.extract(
                [s.features for s in part], [s.eof for s in part],
                [self._chunk_frames(s) - s.pending_frames() for s in part])))

        self._run_in_parts("feature extraction", needs, extract, updates)
        for stream, frames in extracted:
            stream.append_frames(frames)
            stream.features_final = stream.eof and (
                stream.features.frames_done == self.features.ready_frames(stream.features, True))
        stats.features_s = time.perf_counter() - started

        # 2. pick ready streams, oldest first, and group by (chunk size, frames to drop)
        ready = [s for s in self.streams.values() if self._ready(s)]  # with their chunk's frames now
        ready.sort(key=lambda s: s.waiting_since)
        ready = ready[: self.max_batch]
        groups: dict[tuple[tuple[int, int], int], list[Stream]] = defaultdict(list)
        ending_without_audio = []
        for stream in ready:
            if stream.pending_frames() == 0:
                ending_without_audio.append(stream)  # eof exactly at a chunk boundary, or no audio
                continue
            groups[(stream.options.att_context_size, self._pre_encode(stream)[1])].append(stream)
        for (size, drop), group in groups.items():
            def model_call(part: list[Stream]) -> None:  # run before the loop moves on
                self._run_group(size, drop, part, stats, updates)  # noqa: B023

            self._run_in_parts("model call", group, model_call, updates, att_context_size=list(size))
        stats.streams = sum(len(g) for g in groups.values())

        # 3. utterance ends: end of stream, forced finalize, endpoint. Only streams this step
        # touched (or asked to finalize) can have one: the rest have no new frame or token.
        now = time.monotonic()
        for stream in ready:
            stream.waiting_since = now
        ending = {s.stream_id for s in ending_without_audio}
        touched = [s for s in self.streams.values()
                   if s.stream_id in updates or s.stream_id in ending or s.finalize_requested]
        for stream in touched:
            try:
                self._update_transcript(stream, stream.stream_id in ending, updates)
            except Exception as exc:  # a bug in one stream's bookkeeping: that stream only
                log.exception("transcript update failed; dropping the stream", stream_id=stream.stream_id)
                self._drop(stream, exc, updates)
        for stream_id, update in updates.items():
            if update.finished:
                del self.streams[stream_id]
        stats.total_s = time.perf_counter() - started
        self.last_stats = stats
        return list(updates.values())

    def _run_in_parts(self, what: str, streams: list[Stream], run: Callable[[list[Stream]], None],
                      updates: dict[int, StreamUpdate], first: bool = True, **context: Any) -> None:
        """``run(streams)`` (one batched call); if it raises, each half on its own, down to single
        streams. ``run`` changes no stream when it raises, so splitting costs only time: work too
        large for the device's memory still gets through, and a fault that one stream causes (a
        bug) drops that stream alone, after about log2(len(streams)) extra calls. The exception
        is a :class:`StateWriteError`: the streams did change, so all of them are dropped."""
        if not streams:
            return
        try:
            run(streams)
            return
        except Exception as exc:
            if first:  # the traceback once, not once per part
                log.exception(f"{what} failed", streams=len(streams), **context)
                if (fault := device_fault(self.device)) is not None:  # no part can succeed
                    raise DeviceFailedError(f"{what} failed and {self.device} no longer runs work: {fault}") from exc
            if len(streams) == 1 or isinstance(exc, StateWriteError):
                message = (f"{what} failed writing its states; dropping its streams" if len(streams) > 1
                           else f"{what} failed for a stream alone; dropping it")
                log.error(message, stream_ids=[s.stream_id for s in streams], error=f"{type(exc).__name__}: {exc}",
                          **context)
                for stream in streams:
                    self._drop(stream, exc, updates)
                return
        half = len(streams) // 2
        for part in (streams[:half], streams[half:]):
            self._run_in_parts(what, part, run, updates, first=False, **context)

    def _drop(self, stream: Stream, exc: Exception, updates: dict[int, StreamUpdate]) -> None:
        """Close a stream the step failed for (a bug) and report why, in place of its update."""
        self.close_stream(stream.stream_id)
        updates[stream.stream_id] = StreamUpdate(stream.stream_id, failure=f"{type(exc).__name__}: {exc}")

    def _update_transcript(self, stream: Stream, ended_without_audio: bool, updates: dict[int, StreamUpdate]
                           ) -> None:
        """After the model calls: end the stream's utterance (end of stream, forced finalize,
        endpoint) or refresh its partial, and record its update if anything changed."""
        update = updates.get(stream.stream_id) or StreamUpdate(stream.stream_id)
        ends_now = stream.features_final and stream.pending_frames() == 0 and not stream.finished
        if ends_now and (ended_without_audio or stream.stream_id in updates):
            self._end_utterance(stream, "eof", update)
            update.finished = stream.finished = True
            self._free_slot(stream.stream_id)
        elif stream.finalize_requested:
            stream.finalize_requested = False
            self._end_utterance(stream, "finalize", update)
        elif utterance_ended(stream.options.endpointing, self._last_token_frame(stream),
                             stream.encoder_frames, self.frame_s * 1000):
            self._end_utterance(stream, "endpoint", update)
        else:
            self._set_partial(stream, update)
        update.audio_seconds = stream.features.samples_total / self.sample_rate
        update.processed_seconds = stream.encoder_frames * self.frame_s
        if update.partial is not None or update.finals or update.finished:
            updates[stream.stream_id] = update

    def _run_group(self, size: tuple[int, int], drop: int, group: list[Stream], stats: StepStats,
                   updates: dict[int, StreamUpdate]) -> None:
        """One encoder and one decoder call for a group. The streams (frames, caches, decoder
        state, tokens) change only once both calls have succeeded."""
        t0 = time.perf_counter()
        signal, signal_len, fed, histories = self._assemble(group)
        ids = [s.stream_id for s in group]

        with torch.inference_mode():
            self._use_size(size)
            context, _ = self.contexts.get_context(ids)  # a new stream gets its slot here
            slots = torch.tensor([self.contexts.streamidx2slotidx[i] for i in ids], device=self.device)
            encoded, encoded_len, *caches = self._encoder_step(
                signal, signal_len,
                (context.cache_last_channel, context.cache_last_time, context.cache_last_channel_len), drop,
                key=size, steady=drop == self.drop_extra and signal.shape[2] == self._steady_frames[size])
            t1 = time.perf_counter()
            decoded = self.decoder_states.decode(encoded, encoded_len, slots,
                                                 first=[i for i, s in enumerate(group) if s.steps == 0])
            t2 = time.perf_counter()
            try:
                self._store_caches(slots, *caches)
                self.decoder_states.commit(slots, decoded)
            except Exception as exc:
                raise StateWriteError(f"{type(exc).__name__}: {exc}") from exc
        stats.encoder_s += t1 - t0 + time.perf_counter() - t2
        stats.decoder_s += t2 - t1
        stats.model_calls += 1
        for i, (stream, frames, history, tokens, token_frames, probabilities, n_out) in enumerate(zip(
                group, fed, histories, decoded.tokens, decoded.frames, decoded.probabilities, encoded_len.tolist())):
            if self.record_encoder_output:
                self.encoder_outputs[stream.stream_id].append(encoded[i, :, :n_out].float().cpu())
            stream.drop_frames(frames)
            stream.history = history
            stream.steps += 1
            # This chunk's tokens; their frame indices count from the stream's start (the decoder
            # state keeps the offset).
            stream.tokens.extend(tokens)
            stream.frames.extend(token_frames)
            stream.probabilities.extend(probabilities)
            stream.encoder_frames += int(n_out)
            updates.setdefault(stream.stream_id, StreamUpdate(stream.stream_id))

    def _store_caches(self, slots: torch.Tensor, channel: torch.Tensor, conv: torch.Tensor, channel_len: torch.Tensor
                      ) -> None:
        """Write a group's new caches into its streams' slots. NeMo's ``update_cache`` first gathers
        them again through the slot mapping, which here is the identity (rows are in slot order):
        a copy of every cache of the group per step, saved here."""
        contexts = self.contexts
        contexts.cache_last_channel.index_copy_(1, slots, channel)
        contexts.cache_last_time.index_copy_(1, slots, conv)
        contexts.cache_last_channel_len.index_copy_(0, slots, channel_len)

    def _use_size(self, size: tuple[int, int]) -> None:
        """Point the encoder at one chunk size's attention context and streaming settings (and
        the joint at that size's blank output bias, for a model that has one per size)."""
        self.encoder.att_context_size = list(size)
        self.encoder.streaming_cfg = self._streaming_cfgs[size]
        self._blank_bias.use(size)

    def capture_encoder_graphs(self) -> int:
        """With encoder CUDA graphs on, capture the steady step of every chunk size for every batch
        bucket up to ``max_batch`` now, so that no live step waits for a capture (the largest
        first: it sizes the shared buffers). Returns how many graphs are held."""
        if not self._encoder_step.cuda_graphs:
            return 0
        with torch.inference_mode():
            for size in self.att_context_sizes:
                self._use_size(size)
                for rows in buckets_up_to(self.max_batch):
                    self._encoder_step.capture(size, self.drop_extra, self._steady_frames[size], rows,
                                               self.features.n_mels)
        return self._encoder_step.graphs_captured

    def _assemble(self, group: list[Stream]
                  ) -> tuple[torch.Tensor, torch.Tensor, list[int], list[torch.Tensor | None]]:
        """The encoder input of a group: each stream's pre-encode history and next chunk, zero-padded
        to the longest, as ``[B, n_mels, T]`` in the model's dtype, and the lengths; with, per
        stream, the pending frames fed and the new history (applied by the caller on success).

        All pieces (views) go through one ``torch.cat`` and each stream's new history is sliced from
        one copy per distinct length: a handful of device operations per step rather than several
        per stream, which on a GPU would each be a kernel launch.
        """
        feeds, lengths, fed = [], [], []
        for stream in group:
            fed.append(min(stream.pending_frames(), self._chunk_frames(stream)))
            history, _ = self._pre_encode(stream)
            feeds.append(([] if history is None else [history]) + stream.peek_frames(fed[-1]))
            lengths.append(sum(int(piece.shape[1]) for piece in feeds[-1]))
        longest = max(lengths)
        pieces = []
        for feed, length in zip(feeds, lengths):
            pieces += feed
            if length < longest:
                pieces.append(torch.zeros(self.features.n_mels, longest - length, device=self.device))
        flat = torch.cat(pieces, dim=1)  # [n_mels, B * longest], stream after stream
        batch = flat.view(self.features.n_mels, len(group), longest).transpose(0, 1)  # [B, n_mels, T] view
        # The new history: the last pre-encode-cache frames of what each stream was fed (the fed
        # history already holds as many of the old history's frames as can still be needed).
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, length in enumerate(lengths):
            by_length[length].append(i)
        histories: list[torch.Tensor | None] = [None] * len(group)
        for length, rows in by_length.items():
            keep = min(length, self.pre_encode_cache)
            index = torch.tensor(rows, device=self.device)
            for row, history in zip(rows, batch[:, :, length - keep : length].index_select(0, index)):
                histories[row] = history
        signal = batch.to(self.dtype, memory_format=torch.contiguous_format)
        return signal, torch.tensor(lengths, device=self.device), fed, histories

    # ----------------------------------------------------------------- transcripts
    def _last_token_frame(self, stream: Stream) -> int | None:
        if len(stream.frames) > stream.utterance_first_token:
            return stream.frames[-1]
        return None

    def _utterance_tokens(self, stream: Stream) -> tuple[list[int], list[int], list[float]]:
        first = stream.utterance_first_token
        return stream.tokens[first:], stream.frames[first:], stream.probabilities[first:]

    def _set_partial(self, stream: Stream, update: StreamUpdate) -> None:
        if len(stream.tokens) - stream.utterance_first_token == stream.partial_tokens:
            return  # no new token since the last partial, so no new text: skip detokenizing
        tokens, _, probabilities = self._utterance_tokens(stream)
        stream.partial_tokens = len(tokens)
        text = tokens_to_text(self.model.tokenizer, tokens)
        if text != stream.last_partial:
            stream.last_partial = text
            update.partial, update.partial_tokens, update.partial_probabilities = text, tokens, probabilities

    def _end_utterance(self, stream: Stream, reason: str, update: StreamUpdate) -> None:
        tokens, frames, probabilities = self._utterance_tokens(stream)
        audio_s = stream.features.samples_total / self.sample_rate
        end = min(stream.encoder_frames * self.frame_s, audio_s) if reason != "eof" else audio_s
        words = (tokens_to_words(self.model.tokenizer, tokens, frames, self.frame_s, probabilities)
                 if stream.options.word_timestamps else [])
        update.finals.append(Utterance(
            index=stream.utterance_index,
            text=tokens_to_text(self.model.tokenizer, tokens),
            tokens=tokens,
            words=words,
            start=round(stream.utterance_start, 3),
            end=round(end, 3),
            reason=reason,
            probabilities=probabilities,
        ))
        stream.utterance_index += 1
        stream.utterance_first_token = len(stream.tokens)
        stream.utterance_start = end
        stream.last_partial, stream.partial_tokens = "", 0
