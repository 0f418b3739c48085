"""Read an audio file as mono float32 at a target rate (soundfile + soxr) for the offline tools."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import soxr


def load_audio(path: str, target_rate: int = 16000) -> tuple[np.ndarray, float]:
    """Decode ``path``, average the channels and resample; return ``(samples, duration_seconds)``.

    Raises ``ValueError`` naming the file when it is missing, undecodable or empty, so a batch
    run reports which input was bad instead of a bare libsndfile message.
    """
    try:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, OSError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot read audio: {exc}") from exc
    if samples.shape[0] == 0:
        raise ValueError(f"{path}: audio file holds no samples")
    mono = samples.mean(axis=1)
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate)
    return np.ascontiguousarray(mono, dtype=np.float32), samples.shape[0] / rate
