"""Make synthesized speech sound like what a microphone or a phone line delivers: speed, room
reverberation, telephone band, background noise and loudness, each drawn at random per example.

Every function takes and returns float32 mono at 16 kHz and draws only from the generator it is
given, so a seeded run makes the same examples.
"""

from __future__ import annotations

import numpy as np
import soxr
from scipy.signal import fftconvolve, lfilter

SAMPLE_RATE = 16000
SPEED = (0.9, 1.15)
REVERB_SHARE = 0.3
RT60_S = (0.15, 0.6)
TELEPHONE_SHARE = 0.25
NOISE_SHARE = 0.6
SNR_DB = (12.0, 40.0)
PEAK_DBFS = (-35.0, -1.0)


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Faster (factor > 1) and higher, or slower and lower, as a tape played at another speed."""
    return soxr.resample(audio, SAMPLE_RATE * factor, SAMPLE_RATE).astype(np.float32)


def room_impulse_response(rng: np.random.Generator, rt60_s: float) -> np.ndarray:
    """A synthetic room: a direct path, then exponentially decaying noise reaching -60 dB at
    ``rt60_s`` (Schroeder's statistical model of late reverberation)."""
    n = int(rt60_s * SAMPLE_RATE)
    decay = np.exp(-6.9 * np.arange(n) / n)  # ln(1000) = 6.9: -60 dB at the end
    response = rng.normal(0.0, 1.0, n) * decay
    response[0] = 0.0
    response *= rng.uniform(0.1, 0.6) / np.sqrt(np.sum(response**2))  # reverberant energy vs direct
    response[0] = 1.0
    return response.astype(np.float32)


def reverberate(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    response = room_impulse_response(rng, float(rng.uniform(*RT60_S)))
    return fftconvolve(audio, response)[: len(audio)].astype(np.float32)


def telephone(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Through an 8 kHz line and back: nothing above 4 kHz, the low end cut, and sometimes
    mu-law (G.711) quantisation."""
    narrow = soxr.resample(audio, SAMPLE_RATE, 8000)
    narrow = lfilter([1.0, -1.0], [1.0, -0.95], narrow)  # first-order high-pass near 300 Hz
    if rng.random() < 0.5:
        mu = 255.0
        peak = max(float(np.abs(narrow).max()), 1e-6)
        companded = np.sign(narrow) * np.log1p(mu * np.abs(narrow / peak)) / np.log1p(mu)
        quantized = np.round(companded * 127) / 127
        narrow = peak * np.sign(quantized) * np.expm1(np.abs(quantized) * np.log1p(mu)) / mu
    return soxr.resample(narrow, 8000, SAMPLE_RATE).astype(np.float32)[: len(audio)]


def coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """White, pink or brown noise (power falling as f^0, f^-1 or f^-2), unit RMS."""
    exponent = rng.choice([0.0, 1.0, 2.0])
    spectrum = rng.normal(size=n // 2 + 1) + 1j * rng.normal(size=n // 2 + 1)
    frequencies = np.maximum(np.fft.rfftfreq(n), 1.0 / max(n, 1))
    noise = np.fft.irfft(spectrum / frequencies ** (exponent / 2), n)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def add_noise(audio: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    speech_rms = np.sqrt(np.mean(audio**2)) + 1e-9
    return audio + coloured_noise(rng, len(audio)) * speech_rms / 10 ** (snr_db / 20)


def set_peak(audio: np.ndarray, dbfs: float) -> np.ndarray:
    peak = float(np.abs(audio).max())
    return audio if peak == 0.0 else (audio * (10 ** (dbfs / 20) / peak)).astype(np.float32)


def augment(audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random rendering of ``audio``: speed, then room, line, noise and level."""
    audio = change_speed(audio, float(rng.uniform(*SPEED)))
    if rng.random() < REVERB_SHARE:
        audio = reverberate(audio, rng)
    if rng.random() < TELEPHONE_SHARE:
        audio = telephone(audio, rng)
    if rng.random() < NOISE_SHARE:
        audio = add_noise(audio, rng, float(rng.uniform(*SNR_DB)))
    else:
        audio = audio + rng.normal(0.0, 1e-4, len(audio)).astype(np.float32)  # no recording is silent
    return np.clip(set_peak(audio, float(rng.uniform(*PEAK_DBFS))), -1.0, 1.0).astype(np.float32)
