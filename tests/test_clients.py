"""The clients without a server: audio encoding agrees with the server's decoder, latency
arithmetic, and failures that must end with a clear message instead of a traceback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT

from clients.common import Pcm, SessionResult, percentiles
from clients.mic import capture
from streamd.audio import PcmFormat


@pytest.mark.parametrize("subtype, encoding, tolerance", [
    ("PCM_16", "pcm_s16le", 1 / 32768),
    ("PCM_24", "f32le", 1e-6),
    ("FLOAT", "f32le", 0.0),
])
def test_files_are_sent_in_a_format_the_server_decodes(tmp_path: Path, rng: np.random.Generator, subtype: str,
                                                       encoding: str, tolerance: float):
    stereo = (0.5 * rng.uniform(-1, 1, (4410, 2))).astype(np.float32)
    path = tmp_path / "audio.wav"
    sf.write(path, stereo, 44100, subtype=subtype)
    pcm = Pcm.read(str(path))
    assert (pcm.sample_rate, pcm.channels, pcm.encoding) == (44100, 2, encoding)
    assert pcm.seconds == pytest.approx(0.1)
    server_format = PcmFormat(**pcm.config())  # what the server builds from the config message
    chunks = pcm.chunks(20)
    assert all(len(c) % server_format.frame_bytes == 0 for c in chunks)
    decoded = np.concatenate([server_format.decode(c) for c in chunks])
    np.testing.assert_allclose(decoded, stereo.mean(axis=1), atol=tolerance + 1e-7)


def test_float_audio_is_quantized_for_pcm16():
    pcm = Pcm.from_array(np.array([0.0, 0.5, -1.0, 1.5], np.float32), 8000)
    assert np.frombuffer(pcm.data, "<i2").tolist() == [0, 16384, -32767, 32767]


def test_latency_figures_follow_their_definitions():
    result = SessionResult(
        sends=[(0.10, 0.08), (0.18, 0.16), (0.26, 0.24), (0.34, 0.32)],  # 80 ms frames in real time
        partials=[{"received_s": 0.25, "audio_seconds": 0.16}, {"received_s": 0.40, "audio_seconds": 0.32},
                  {"received_s": 0.55, "audio_seconds": 0.32}],  # the last one after eof
        finals=[{"received_s": 0.70, "text": "a", "tokens": [1]}],
        eof_sent_s=0.50,
    )
    assert result.sent_at(0.16) == 0.18 and result.sent_at(0.2395) == 0.26 and result.sent_at(9.0) == 0.34
    latency = result.latency()
    assert latency["first_partial_s"] == pytest.approx(0.25 - 0.10) and latency["first_partial_audio_s"] == 0.16
    assert latency["final_s"] == pytest.approx(0.70 - 0.50)
    assert latency["updates"] == 2 and latency["update_samples_s"] == pytest.approx([0.07, 0.06])


def test_percentiles_are_ordered():
    values = list(np.random.default_rng(3).exponential(0.2, 101))
    p = percentiles(values)
    assert p["p50"] == pytest.approx(np.median(values), abs=1e-4)
    assert 0 <= p["p50"] <= p["p90"] <= p["p99"] <= max(values)
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}


class FakeSoundDevice:
    """Calls the input callback from another thread with consecutive int16 blocks, like PortAudio;
    the last ``flushed`` blocks arrive while the stream closes (PortAudio delivers its last
    buffers then), after the reader has stopped waiting for more."""

    def __init__(self, blocks: int, flushed: int = 2) -> None:
        self.blocks, self.flushed = blocks, flushed

    def RawInputStream(self, samplerate: int, blocksize: int, callback, **_: object):
        device = self

        def produce(first: int, end: int) -> None:
            for i in range(first, end):
                callback(np.full(blocksize, i, "<i2").tobytes(), blocksize, None, None)

        class Stream:
            def __enter__(self) -> Stream:
                self.thread = threading.Thread(target=produce, args=(0, device.blocks - device.flushed))
                self.thread.start()
                return self

            def __exit__(self, *_: object) -> None:
                self.thread.join()
                closing = threading.Thread(target=produce, args=(device.blocks - device.flushed, device.blocks))
                closing.start()
                closing.join()

        return Stream()


def test_mic_capture_with_a_fake_sounddevice_yields_every_block_then_stops():
    async def capture_until_stopped() -> list[tuple[bytes, float]]:
        stop = asyncio.Event()
        frames = []
        async for frame in capture(FakeSoundDevice(blocks=5), None, 8000, 20.0, stop):
            frames.append(frame)
            if len(frames) == 3:
                stop.set()
        return frames

    frames = asyncio.run(capture_until_stopped())
    assert len(frames) == 5  # blocks captured before the stop are still sent
    for i, (data, seconds) in enumerate(frames):
        assert data == np.full(160, i, "<i2").tobytes() and seconds == pytest.approx(0.02)


def _has_input_device() -> bool:
    try:
        import sounddevice

        sounddevice.query_devices(kind="input")
    except Exception:  # no PortAudio library, or no device
        return False
    return True


@pytest.mark.skipif(_has_input_device(), reason="this machine has a microphone")
def test_mic_without_input_device_exits_cleanly():
    proc = subprocess.run([sys.executable, "-m", "clients.mic", "ws://127.0.0.1:9/"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "no default audio input device" in proc.stderr and "--list-devices" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("module, args", [
    ("clients.replay", ["missing.wav", "--fast"]),
    ("clients.latency", ["missing.wav", "--out", "unused"]),
])
def test_unreadable_file_exits_cleanly(module: str, args: list[str]):
    proc = subprocess.run([sys.executable, "-m", module, "ws://127.0.0.1:9/", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "cannot read missing.wav" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_server_exits_cleanly(tmp_path: Path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(1600, np.float32), 16000)
    proc = subprocess.run([sys.executable, "-m", "clients.replay", "ws://127.0.0.1:9/", str(path), "--fast"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert "connection refused" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("url, args, message", [
    ("http://127.0.0.1:9/", [], "not a WebSocket URL: http://127.0.0.1:9/"),
    ("wss://127.0.0.1:9/", ["--cafile", "missing-ca.pem"], "cannot use --cafile missing-ca.pem"),
])
def test_unusable_url_or_cafile_exits_cleanly(tmp_path: Path, url: str, args: list[str], message: str):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(1600, np.float32), 16000)
    proc = subprocess.run([sys.executable, "-m", "clients.replay", url, str(path), "--fast", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
