"""Audio in: decoding PCM bytes, down-mixing, and resampling (offline and streaming).

Resampling uses libsoxr (``soxr``), a real band-limited resampler; the streaming form keeps
filter state between chunks, so chunked resampling matches a one-shot resample of the whole
signal up to the filter's float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

ENCODINGS = {"pcm_s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
F32_PEAK = 1.5  # the largest f32le sample magnitude accepted (audio is ±1; resampling overshoots a little)
MIN_RATE, MAX_RATE = 8000, 192000


class AudioError(ValueError):
    """Audio that cannot be used; the message says why."""


def downmix(samples: np.ndarray) -> np.ndarray:
    """``[n]`` or ``[n, channels]`` -> float32 mono by averaging channels."""
    if samples.ndim == 2:
        # One channel is a view, not a mean: the server decodes every frame of every client.
        samples = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1)
    return samples.astype(np.float32, copy=False)


def load_audio(path: str, target_rate: int) -> tuple[np.ndarray, float]:
    """Read any file soundfile reads; return float32 mono at ``target_rate`` and its duration (s).

    Raises :class:`AudioError` for unreadable files or NaN/Inf samples. Empty audio is allowed
    (an empty transcript, not an error).
    """
    try:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for bad files
        raise AudioError(f"{path}: cannot read audio ({exc})") from exc
    mono = downmix(samples)
    if not np.isfinite(mono).all():
        raise AudioError(f"{path}: audio contains NaN or infinite samples")
    duration = len(mono) / rate if rate else 0.0
    if rate != target_rate and len(mono):
        mono = soxr.resample(mono, rate, target_rate, quality="HQ").astype(np.float32)
    return mono, duration


@dataclass(frozen=True)
class PcmFormat:
    """How a client's binary frames are laid out."""

    encoding: str = "pcm_s16le"
    sample_rate: int = 16000
    channels: int = 1

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise AudioError(f"encoding must be one of {sorted(ENCODINGS)}, not {self.encoding!r}")
        if not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise AudioError(f"sample_rate must be between {MIN_RATE} and {MAX_RATE} Hz")
        if not 1 <= self.channels <= 8:
            raise AudioError("channels must be between 1 and 8")

    @property
    def frame_bytes(self) -> int:
        """Bytes per sample frame (one sample of every channel)."""
        return ENCODINGS[self.encoding].itemsize * self.channels

    def decode(self, data: bytes) -> np.ndarray:
        """Bytes -> float32 mono at ``sample_rate``; raises :class:`AudioError` on bad frames."""
        if len(data) % self.frame_bytes:
            raise AudioError(
                f"{len(data)} bytes is not a whole number of {self.encoding} x {self.channels}-channel "
                f"samples ({self.frame_bytes} bytes each)"
            )
        samples = np.frombuffer(data, dtype=ENCODINGS[self.encoding])
        if self.encoding == "pcm_s16le":
            mono = downmix(samples.reshape(-1, self.channels).astype(np.float32) / 32768.0)
        else:
            # NaN, Inf or values far outside the ±1 range are not audio; the little overshoot that
            # resampling (a browser's, a client's) gives full-scale audio is.
            peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
            if not peak <= F32_PEAK:  # also catches NaN
                raise AudioError(f"f32le samples must lie within ±1 (found {peak:.3g}; at most ±{F32_PEAK:g} "
                                 "is accepted), and be finite")
            mono = downmix(samples.reshape(-1, self.channels).astype(np.float32))
        return mono


class StreamResampler:
    """Chunk-by-chunk resampling to a fixed rate with state carried across chunks."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.passthrough = in_rate == out_rate
        self._stream = None if self.passthrough else soxr.ResampleStream(
            in_rate, out_rate, 1, dtype="float32", quality="HQ"
        )

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next chunk; ``last=True`` flushes the filter's delay line."""
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(np.ascontiguousarray(samples, np.float32), last=last)
