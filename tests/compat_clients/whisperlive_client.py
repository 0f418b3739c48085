"""WhisperLive's own client class (``whisper-live``'s ``Client``, which its ``TranscriptionClient``
wraps) transcribing a WAV file through streamd's WhisperLive port.

Runs in the compat venv (tests/conftest.py: compat_python). Waits for ``SERVER_READY``, sends the
file's 16-bit PCM (16 kHz mono) as float32 packets of 4096 samples, as the package's file player
converts them but without its real-time pacing, then ``END_OF_AUDIO``, and waits for the server to
close. Prints one JSON object: what the client kept (``transcript``: its completed segments,
``backend``), every ``segments`` list it was sent, and the status messages (``WAIT``, ``ERROR``)
it got; a refused client (server full) sends nothing. Usage: whisperlive_client.py PORT WAV
[--word-timestamps]
"""

from __future__ import annotations

import argparse
import json
import time
import wave
from typing import Any

import numpy as np
from whisper_live.client import Client

PACKET_SAMPLES = 4096  # what TranscriptionTeeClient sends per packet


class RecordingClient(Client):
    """The package's client, also recording what it was sent (its own callbacks only print)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.segment_lists: list[list[dict[str, Any]]] = []
        super().__init__(*args, transcription_callback=lambda _text, segments: self.segment_lists.append(segments),
                         **kwargs)

    def handle_status_messages(self, message_data: dict[str, Any]) -> None:
        self.statuses.append(message_data)
        super().handle_status_messages(message_data)


def wait_until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("wav")
    parser.add_argument("--word-timestamps", action="store_true")
    args = parser.parse_args()

    with wave.open(args.wav) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
    client = RecordingClient("127.0.0.1", args.port, lang="en", model="small", log_transcription=False,
                             word_timestamps=args.word_timestamps)
    wait_until(lambda: client.recording or client.waiting or client.server_error, 30)
    ready = client.recording
    if ready:
        for start in range(0, len(pcm), PACKET_SAMPLES):
            client.send_packet_to_server((pcm[start:start + PACKET_SAMPLES] / 32768.0).astype(np.float32).tobytes())
        client.send_packet_to_server(Client.END_OF_AUDIO.encode())
        wait_until(lambda: not client.recording, 60)  # the server sends the last segments, then closes
    client.close_websocket()
    print(json.dumps({"ready": ready, "backend": getattr(client, "server_backend", None),
                      "transcript": client.transcript, "segment_lists": client.segment_lists,
                      "statuses": client.statuses}))


if __name__ == "__main__":
    main()
