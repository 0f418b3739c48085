"""``streamd transcribe`` on real files: any rate, channels and format; bad files; JSON shape."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf
import soxr

from streamd.models import tones
from tests.conftest import streamd_cli


def test_transcribe_json_any_format_and_bad_files(tone_model_path, rng, tmp_path):
    seq_a = tones.random_sequence(rng, 2, 5)
    seq_b = tones.random_sequence(rng, 2, 5)
    plain = tmp_path / "plain.wav"
    sf.write(plain, seq_a.audio, 16000, subtype="PCM_16")
    # 44.1 kHz stereo float FLAC-like content in a WAV: resampled and down-mixed by streamd
    stereo = soxr.resample(seq_b.audio, 16000, 44100)
    stereo = np.stack([stereo, stereo * 0.5], axis=1)
    converted = tmp_path / "stereo44k.wav"
    sf.write(converted, stereo, 44100, subtype="FLOAT")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....not audio")
    for mode in ("streaming", "offline"):
        proc = streamd_cli("transcribe", str(plain), str(converted), str(empty), str(broken),
                           "--model", str(tone_model_path), "--mode", mode, "--att-context-size", "560",
                           "--json", check=False)
        assert proc.returncode == 1, proc.stderr[-2000:]
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        by_file = {row["file"]: row for row in rows}
        assert by_file[str(plain)]["text"] == seq_a.text
        assert by_file[str(converted)]["text"] == seq_b.text
        assert by_file[str(empty)]["text"] == "" and by_file[str(empty)]["tokens"] == []
        assert "cannot read audio" in by_file[str(broken)]["error"]
        row = by_file[str(plain)]
        assert row["mode"] == mode and row["att_context_size"] == [70, 6]
        assert abs(row["audio_seconds"] - len(seq_a.audio) / 16000) < 1e-3
        assert row["compute_seconds"] > 0 and len(row["tokens"]) == len(seq_a.letters)
        assert [w["word"] for w in row["words"]] == list(seq_a.letters)


def test_quick_start_tones_command_and_transcribe(tmp_path):
    """The README's quick start: `streamd tones caffe` spells c a f f e, and the model shipped with
    streamd (no --model) hears it."""
    wav = tmp_path / "caffe.wav"
    streamd_cli("tones", "caffe", "--out", str(wav), "--seed", "3")
    audio, rate = sf.read(wav)
    assert rate == 16000 and audio.ndim == 1
    proc = streamd_cli("transcribe", str(wav), "--json")
    assert json.loads(proc.stdout)["text"] == "c a f f e"
    refused = streamd_cli("tones", "xyz", "--out", str(tmp_path / "x.wav"), check=False)
    assert refused.returncode == 2 and "letters must be among" in refused.stderr
