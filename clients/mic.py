"""``python -m clients.mic URL``: live transcription of the microphone.

Captures 16-bit mono audio with ``sounddevice`` at the device's rate (the server resamples)
and prints partials in place. Ctrl-C ends the audio with ``eof`` and waits for the final; a
second Ctrl-C quits at once. Without a usable input device it says so and exits with 2.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

from clients.common import ClientError, LiveView, fail, run_session

EXIT_NO_DEVICE = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients.mic", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws://HOST:PORT/")
    parser.add_argument("--device", type=_device, default=None,
                        help="input device name or index (default: the system's)")
    parser.add_argument("--chunk-ms", type=int, default=None,
                        help="model chunk: 80, 160, 560 or 1120 ms (default: the server's)")
    parser.add_argument("--frame-ms", type=float, default=80.0, help="audio per WebSocket frame (default 80)")
    return parser.parse_args(argv)


def _device(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def open_input(device: int | str | None) -> tuple[Any, int]:
    """The ``sounddevice`` module and the input's native rate; raises ``OSError`` or
    ``ValueError`` when there is no usable input (no PortAudio, no device)."""
    import sounddevice  # raises OSError when the PortAudio library is missing

    try:
        info = sounddevice.query_devices(device, kind="input")
    except sounddevice.PortAudioError as exc:
        raise OSError(str(exc)) from None
    return sounddevice, int(info["default_samplerate"])


async def capture(sounddevice: Any, device: int | str | None, rate: int, frame_ms: float,
                  stop: asyncio.Event) -> AsyncIterator[tuple[bytes, float]]:
    """Microphone frames until ``stop``, then whatever was captured before it."""
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[bytes] = asyncio.Queue()

    def on_audio(data: Any, count: int, _time: Any, _status: Any) -> None:
        loop.call_soon_threadsafe(frames.put_nowait, bytes(data))

    blocksize = round(rate * frame_ms / 1000)
    stopped = asyncio.ensure_future(stop.wait())
    with sounddevice.RawInputStream(samplerate=rate, blocksize=blocksize, device=device, channels=1,
                                    dtype="int16", callback=on_audio):
        while True:
            next_frame = asyncio.ensure_future(frames.get())
            await asyncio.wait({next_frame, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not next_frame.done():
                next_frame.cancel()
                break
            frame = next_frame.result()
            yield frame, len(frame) / 2 / rate
    # The stream is closed: no callback runs any more, but the blocks its last callbacks handed
    # over may still wait in the loop's queue (call_soon_threadsafe); one pass of the loop
    # delivers them. (Seen on a slow CI machine: the last blocks were lost without it.)
    await asyncio.sleep(0)
    while not frames.empty():
        frame = frames.get_nowait()
        yield frame, len(frame) / 2 / rate


async def transcribe_microphone(args: argparse.Namespace, sounddevice: Any, rate: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_interrupt() -> None:
        print("\n(ending: waiting for the final; Ctrl-C again to quit)", file=sys.stderr)
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C raises KeyboardInterrupt

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    config = {"sample_rate": rate, "encoding": "pcm_s16le", "channels": 1}
    if args.chunk_ms:
        config["chunk_ms"] = args.chunk_ms
    print(f"listening at {rate} Hz; Ctrl-C to stop", file=sys.stderr)
    frames = capture(sounddevice, args.device, rate, args.frame_ms, stop)
    await run_session(args.url, config, frames, LiveView())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sounddevice, rate = open_input(args.device)
    except (OSError, ValueError) as exc:
        return fail(f"no audio input device available ({exc})", EXIT_NO_DEVICE)
    try:
        asyncio.run(transcribe_microphone(args, sounddevice, rate))
    except ClientError as exc:
        return fail(exc, exc.exit_code)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
