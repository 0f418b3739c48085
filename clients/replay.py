"""``python -m clients.replay URL FILE``: stream an audio file to a streamd server.

The file is sent at its own rate and channel count (16-bit PCM as ``pcm_s16le``, anything
else as ``f32le``); the server resamples. ``--realtime`` (default) paces frames like a live
source, ``--fast`` sends as fast as the connection takes them. Prints partials in place on a
TTY and each final; ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from clients.common import ClientError, LiveView, Pcm, ServerAccess, add_access_arguments, fail, run_session


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients.replay", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws://HOST:PORT/ or wss://HOST:PORT/")
    parser.add_argument("file", help="audio file (WAV, FLAC, ... anything soundfile reads)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--realtime", dest="realtime", action="store_true", default=True,
                      help="send audio at its natural pace (default)")
    pace.add_argument("--fast", dest="realtime", action="store_false", help="send as fast as possible")
    parser.add_argument("--chunk-ms", type=int, default=None,
                        help="model chunk: 80, 160, 560 or 1120 ms (default: the server's)")
    parser.add_argument("--frame-ms", type=float, default=80.0, help="audio per WebSocket frame (default 80)")
    parser.add_argument("--json", action="store_true", help="print one JSON object with finals and latencies")
    add_access_arguments(parser)
    return parser.parse_args(argv)


async def replay(url: str, pcm: Pcm, chunk_ms: int | None, frame_ms: float, realtime: bool,
                 live: LiveView | None = None, access: ServerAccess | None = None) -> dict[str, Any]:
    """Stream ``pcm`` once; return the summary that ``--json`` prints."""
    config = pcm.config() | ({"chunk_ms": chunk_ms} if chunk_ms else {})
    result = await run_session(url, config, pcm.replay(frame_ms, realtime), live, access)
    return {
        "session_id": result.ready["session_id"],
        "config": result.ready["config"],
        "audio_seconds": round(pcm.seconds, 3),
        "realtime": realtime,
        "text": result.text,
        "tokens": result.tokens,
        "finals": result.finals,
        "partials": len(result.partials),
        "latency": result.latency(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pcm = Pcm.read(args.file)
        summary = asyncio.run(replay(args.url, pcm, args.chunk_ms, args.frame_ms, args.realtime,
                                     None if args.json else LiveView(), ServerAccess.from_args(args)))
    except ClientError as exc:
        return fail(exc, exc.exit_code)
    if args.json:
        print(json.dumps({"file": args.file, "url": args.url, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
