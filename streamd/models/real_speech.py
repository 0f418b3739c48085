"""Real human speech to score the digits model on: the Asterisk PBX prompts (Debian packages
``asterisk-core-sounds-en-g722``, ``-en-wav`` and ``asterisk-core-sounds-en`` for the transcripts;
one professional speaker, CC-BY-SA-3.0). No training voice comes from them.

The prompts whose transcript is nothing but digit words are the digits 0-9 and "oh". The test
set (:func:`digits_test_set`) holds each of them as recorded (16 kHz G.722), the same prompts
through a phone line (the 8 kHz WAV release), and digit strings spoken the way Asterisk speaks
a number (its SayDigits plays the single-digit prompts one after another).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from streamd.audio import AudioError, load_audio
from streamd.models import digits

SAMPLE_RATE = 16000
SOUNDS_DIR = Path(os.environ.get("STREAMD_ASTERISK_SOUNDS", "/usr/share/asterisk/sounds/en_US_f_Allison"))
TRANSCRIPTS = Path(os.environ.get("STREAMD_ASTERISK_TRANSCRIPTS",
                                  "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"))
INSTALL_HINT = ("apt-get install asterisk-core-sounds-en asterisk-core-sounds-en-g722 asterisk-core-sounds-en-wav "
                "(Debian; .ci/run installs them)")
# Asterisk's own codecs: G.722 is wideband (16 kHz), the WAV release is telephone band (8 kHz).
CODECS = ("g722", "wav")
STRING_COUNT = 40


class RealSpeechMissing(FileNotFoundError):
    """The Asterisk prompts or their transcripts are not installed."""


@dataclass(frozen=True)
class Clip:
    """One real recording (float32 mono, 16 kHz) and what is said in it."""

    name: str
    audio: np.ndarray
    transcript: str  # words, e.g. "four oh two"

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def transcripts(path: Path = TRANSCRIPTS) -> dict[str, str]:
    """Prompt name -> transcript, from the package's ``core-sounds-en.txt.gz``."""
    if not path.exists():
        raise RealSpeechMissing(f"{path} not found: {INSTALL_HINT}")
    found = {}
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            name, colon, text = line.partition(":")
            if colon and not line.startswith(";"):
                found[name.strip()] = text.strip()
    return found


def digit_prompts() -> dict[str, str]:
    """The prompts that say only digits: name -> transcript in the model's words."""
    vocabulary = set(digits.VOCABULARY)
    return {name: text.lower().rstrip(".") for name, text in transcripts().items()
            if text and all(word in vocabulary for word in text.lower().rstrip(".").split())}


def decode(path: Path) -> np.ndarray:
    """Any Asterisk prompt file -> float32 mono at 16 kHz (G.722 through PyAV; soundfile cannot)."""
    if not path.exists():
        raise RealSpeechMissing(f"{path} not found: {INSTALL_HINT}")
    if path.suffix != ".g722":
        return load_audio(str(path), SAMPLE_RATE)[0]
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            frames = [frame.to_ndarray() for frame in container.decode(stream)]
            rate = stream.rate
    except av.FFmpegError as exc:
        raise AudioError(f"{path}: cannot decode G.722 ({exc})") from exc
    audio = np.concatenate(frames, axis=1).mean(axis=0).astype(np.float32) / 32768.0
    return audio if rate == SAMPLE_RATE else soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def prompt_clips(codec: str = "g722") -> list[Clip]:
    """Every digits-only prompt in one codec's release."""
    return [Clip(f"{name}.{codec}", decode(SOUNDS_DIR / f"{name}.{codec}"), text)
            for name, text in sorted(digit_prompts().items())]


def spoken_strings(clips: list[Clip], rng: np.random.Generator, count: int = STRING_COUNT) -> list[Clip]:
    """Digit strings of 1-12 digits said as Asterisk's SayDigits says them: the single-digit
    prompts played back to back (each keeps its own recorded pauses)."""
    by_digit = {digits.normalize(clip.transcript)[0]: [] for clip in clips}
    for clip in clips:
        by_digit[digits.normalize(clip.transcript)[0]].append(clip)
    strings = []
    for k in range(count):
        chosen = [by_digit[d][int(rng.integers(len(by_digit[d])))] for d in digits.random_digits(rng)]
        strings.append(Clip(f"string-{k}", np.concatenate([c.audio for c in chosen]),
                            " ".join(c.transcript for c in chosen)))
    return strings


def digits_test_set(seed: int = 0) -> dict[str, list[Clip]]:
    """The real-speech test set: ``prompts`` (16 kHz), ``telephone`` (8 kHz release) and
    ``strings`` (digit strings from the 16 kHz prompts)."""
    wideband = prompt_clips("g722")
    return {"prompts": wideband, "telephone": prompt_clips("wav"),
            "strings": spoken_strings(wideband, np.random.default_rng(seed))}
