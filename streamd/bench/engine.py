"""Engine benchmarks: throughput (RTFx), per-step latency, and the gain from batching.

Each measurement runs ``streams`` streams of ``seconds`` of audio together, giving every stream
its next chunk of audio before each step, and steps the engine until every stream has its
final: the engine then runs at full occupancy, one chunk per stream per step, which is its
throughput ceiling. The same streams run one after another give the sequential baseline; their
ratio is the batching gain.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from streamd.devices import synchronize
from streamd.engine.engine import StreamingEngine
from streamd.engine.stream import StreamOptions
from streamd.engine.worker import freeze_long_lived_objects
from streamd.models import tones


@dataclass
class EngineRun:
    streams: int
    chunk_ms: int
    audio_s: float
    compute_s: float
    steps: int
    step_p50_ms: float
    step_p99_ms: float
    tokens: int
    # Mean per step, from the engine's own StepStats: where a step's time goes. "other" is the
    # Python bookkeeping around the model calls (batch assembly, cache slots, transcripts).
    features_ms: float
    encoder_ms: float
    decoder_ms: float
    other_ms: float

    @property
    def rtfx(self) -> float:
        return self.audio_s / self.compute_s


def chunk_length_ms(size: tuple[int, int]) -> int:
    """The chunk length of an att_context_size: R + 1 encoder frames of 80 ms."""
    return (size[1] + 1) * 80


def warm_up(model: Any, size: tuple[int, int], rng: np.random.Generator, streams: int = 1) -> None:
    """Short streams first, as many as will be timed together, so that first-call costs stay out
    of the timings: allocator growth, and on a GPU the CUDA graphs captured per batch shape (one
    capture in a 30-step run is its p99). Three chunks each: first-chunk, steady and last shapes."""
    seconds = 3 * chunk_length_ms(size) / 1000
    run_engine(model, [tones.random_audio(rng, seconds) for _ in range(streams)], size, streams)
    freeze_long_lived_objects()  # as the server does after its warm-up: no full collection in a timed step


def run_engine(model: Any, audios: list[np.ndarray], size: tuple[int, int], max_batch: int) -> EngineRun:
    """Step all streams to their end, each receiving one chunk of audio before every step (as
    fast as the engine goes, but in the pieces a live stream delivers); time every step."""
    engine = StreamingEngine(model, max_batch=max_batch, max_streams=len(audios))
    ids = [engine.open_stream(StreamOptions(att_context_size=size, word_timestamps=False)) for _ in audios]
    chunk = engine.chunk_samples(size)
    cursors = [0] * len(audios)
    device = next(model.parameters()).device
    step_times, tokens = [], 0
    phases = np.zeros(3)  # features, encoder, decoder seconds
    started = time.perf_counter()
    while engine.streams:
        for i, (stream_id, audio) in enumerate(zip(ids, audios)):
            if cursors[i] < len(audio):
                engine.push_audio(stream_id, audio[cursors[i] : cursors[i] + chunk])
                cursors[i] += chunk
                if cursors[i] >= len(audio):
                    engine.end_stream(stream_id)
        t0 = time.perf_counter()
        for update in engine.step():
            tokens += sum(len(u.tokens) for u in update.finals)
        synchronize(device)
        step_times.append(time.perf_counter() - t0)
        stats = engine.last_stats
        phases += (stats.features_s, stats.encoder_s, stats.decoder_s)
    compute = time.perf_counter() - started
    ms = sorted(t * 1000 for t in step_times)
    features_ms, encoder_ms, decoder_ms = (1000 * phases / len(step_times)).tolist()
    return EngineRun(
        streams=len(audios), chunk_ms=chunk_length_ms(size), audio_s=sum(len(a) for a in audios) / tones.SAMPLE_RATE,
        compute_s=compute, steps=len(step_times), step_p50_ms=statistics.median(ms),
        step_p99_ms=ms[min(len(ms) - 1, int(0.99 * len(ms)))], tokens=tokens,
        features_ms=features_ms, encoder_ms=encoder_ms, decoder_ms=decoder_ms,
        other_ms=1000 * compute / len(step_times) - features_ms - encoder_ms - decoder_ms,
    )


def nemo_encoder_step_ms(model: Any, size: tuple[int, int], batch: int, repeats: int = 3) -> float:
    """NeMo's ``cache_aware_stream_step`` alone on a steady-state chunk (pre-encode history plus
    ``chunk_size[1]`` mel frames) for ``batch`` streams: the floor under the engine's encoder
    phase, measured in the same run so that the difference is streamd's own cost."""
    encoder = model.encoder
    encoder.set_default_att_context_size(list(size))
    cfg = encoder.streaming_cfg
    parameter = next(model.parameters())
    frames = int(cfg.chunk_size[1]) + int(cfg.pre_encode_cache_size[1])
    mels = int(model.cfg.preprocessor.features)
    signal = torch.randn(batch, mels, frames, generator=torch.Generator().manual_seed(0)).to(
        parameter.device, parameter.dtype)
    lengths = torch.full((batch,), frames, device=parameter.device)
    cache = encoder.get_initial_cache_state(batch_size=batch, dtype=parameter.dtype, device=parameter.device)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first call is a warm-up
            synchronize(parameter.device)
            started = time.perf_counter()
            encoder.cache_aware_stream_step(
                processed_signal=signal, processed_signal_length=lengths, cache_last_channel=cache[0],
                cache_last_time=cache[1], cache_last_channel_len=cache[2], keep_all_outputs=True,
                drop_extra_pre_encoded=int(cfg.drop_extra_pre_encoded))
            synchronize(parameter.device)
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times[1:])


def batching_benchmark(model: Any, stream_counts: list[int], sizes: list[tuple[int, int]], seconds: float,
                       sequential: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """For each chunk size and stream count: batched run, and optionally the sequential baseline."""
    rng = np.random.default_rng(seed)
    results = []
    for size in sizes:
        for count in stream_counts:
            warm_up(model, size, rng, count)
            audios = [tones.random_audio(rng, seconds) for _ in range(count)]
            batched = run_engine(model, audios, size, max_batch=count)
            row: dict[str, Any] = {**asdict(batched), "rtfx": batched.rtfx,
                                   "tokens_per_s": batched.tokens / batched.compute_s,
                                   "tokens_per_audio_s": batched.tokens / batched.audio_s,
                                   "nemo_encoder_ms": nemo_encoder_step_ms(model, size, count)}
            if sequential and count > 1:
                alone = sum(run_engine(model, [a], size, 1).compute_s for a in audios)
                row["sequential_compute_s"] = alone
                row["batching_gain"] = alone / batched.compute_s
            results.append(row)
    return results


def engine_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| chunk ms | streams | RTFx | step p50 ms | step p99 ms | batching gain | tokens/s "
        "| tokens per s of audio | features / encoder / decoder / other ms per step | NeMo encoder step alone ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        gain = f"{row['batching_gain']:.2f}x" if "batching_gain" in row else "-"
        lines.append(
            f"| {row['chunk_ms']} | {row['streams']} | {row['rtfx']:.1f} | {row['step_p50_ms']:.1f} | "
            f"{row['step_p99_ms']:.1f} | {gain} | {row['tokens_per_s']:.0f} | {row['tokens_per_audio_s']:.1f} | "
            f"{row['features_ms']:.1f} / "
            f"{row['encoder_ms']:.1f} / {row['decoder_ms']:.1f} / {row['other_ms']:.1f} | "
            f"{row['nemo_encoder_ms']:.1f} |"
        )
    return "\n".join(lines)
