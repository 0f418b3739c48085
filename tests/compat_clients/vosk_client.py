"""A lockstep vosk-server client (vosk has no client package; its clients are a few lines of
``websockets``, like the repository's ``websocket/test.py``) transcribing a WAV file through
streamd's vosk port.

Runs in the compat venv (tests/conftest.py: compat_python). Sends a config with the file's rate
(unless --no-config: the server's 8000 Hz then), the file's 16-bit PCM in messages of
--bytes-per-message (--speed times faster than real time; 0: as fast as the replies come), a
``{"reset" : 1}`` after --reset-after messages if given, and ``{"eof" : 1}``; after every message
but the config it reads exactly one reply, and after the eof reply it checks that the server
closes with nothing more: a reply too many or too few fails it. Prints one JSON object: each
message sent (``audio``, ``reset``, ``eof``) with its reply, and the close code. Usage:
vosk_client.py PORT WAV [--no-config] [--words 0|1] [--reset-after N] [--speed X] [--chunk-ms MS]
"""

from __future__ import annotations

import argparse
import json
import time
import wave
from typing import Any

from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

REPLY_TIMEOUT_S = 30


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("wav")
    parser.add_argument("--no-config", action="store_true")
    parser.add_argument("--words", type=int, default=1)
    parser.add_argument("--reset-after", type=int, default=None)
    parser.add_argument("--bytes-per-message", type=int, default=8000)
    parser.add_argument("--speed", type=float, default=0.0)
    parser.add_argument("--chunk-ms", type=int, default=None, help="streamd's chunk, as a query parameter")
    args = parser.parse_args()

    with wave.open(args.wav) as wav:
        rate, pcm = wav.getframerate(), wav.readframes(wav.getnframes())
    step = args.bytes_per_message
    exchanges: list[dict[str, Any]] = []
    query = f"?chunk_ms={args.chunk_ms}" if args.chunk_ms else ""
    started = time.monotonic()
    with connect(f"ws://127.0.0.1:{args.port}/{query}") as socket:
        def exchange(kind: str, message: str | bytes) -> None:
            socket.send(message)
            exchanges.append({"sent": kind, "reply": json.loads(socket.recv(timeout=REPLY_TIMEOUT_S))})

        if not args.no_config:
            socket.send(json.dumps({"config": {"sample_rate": rate, "words": args.words}}))  # no reply
        for index, start in enumerate(range(0, len(pcm), step), 1):
            if args.speed:
                time.sleep(max(0.0, started + start / (2 * rate) / args.speed - time.monotonic()))
            exchange("audio", pcm[start:start + step])
            if index == args.reset_after:
                exchange("reset", '{"reset" : 1}')
        exchange("eof", '{"eof" : 1}')
        try:
            extra = socket.recv(timeout=REPLY_TIMEOUT_S)
        except ConnectionClosedOK:
            pass
        else:
            raise SystemExit(f"a reply more than the messages sent: {extra!r}")
        code = socket.close_code
    print(json.dumps({"exchanges": exchanges, "close_code": code}))


if __name__ == "__main__":
    main()
