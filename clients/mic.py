"""``python -m clients.mic URL``: live transcription of the microphone.

Captures 16-bit mono audio with ``sounddevice`` (PortAudio) from the system's default input or
``--device`` (a name, or an index from ``--list-devices``), at the device's own rate unless
``--rate`` asks for another (the server resamples). The server ends an utterance after
``--endpoint-ms`` of silence. On a terminal the current partial is rewritten in place and each
final stays on its own line above it (elsewhere only the finals are printed); ``--json`` prints
every server message as one JSON line instead. Ctrl-C ends the audio with ``eof`` and waits for
the last final; a second Ctrl-C quits at once.

Exit codes: 0 after the server's ``done``, 1 the server refused or failed the session, 2 no
usable input device or a usage error, 130 a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from clients.common import (
    ClientError,
    JsonLines,
    LiveView,
    ServerAccess,
    UsageError,
    add_access_arguments,
    fail,
    run_session,
)


class InputDeviceError(UsageError):
    """No usable input device: no PortAudio, no device, or one that does not open as asked."""


@dataclass(frozen=True)
class InputDevice:
    """The input that will be captured: its PortAudio index and name, and the capture rate."""

    index: int
    name: str
    rate: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clients.mic", description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="ws://HOST:PORT/ or wss://HOST:PORT/")
    parser.add_argument("--list-devices", action="store_true", help="list the input devices and exit")
    parser.add_argument("--device", type=_device, default=None,
                        help="input device name (or part of it) or index (default: the system's)")
    parser.add_argument("--rate", type=int, default=None, help="capture rate in Hz (default: the device's own)")
    parser.add_argument("--chunk-ms", type=int, default=None,
                        help="model chunk: 80, 160, 560 or 1120 ms (default: the server's)")
    parser.add_argument("--frame-ms", type=float, default=80.0, help="audio per WebSocket frame (default 80)")
    parser.add_argument("--endpoint-ms", type=int, default=800,
                        help="silence after speech that ends an utterance (default 800; 0: one utterance)")
    parser.add_argument("--json", action="store_true", help="print every server message as one JSON line")
    add_access_arguments(parser)
    args = parser.parse_args(argv)
    if args.url is None and not args.list_devices:
        parser.error("the URL is required (or --list-devices)")
    return args


def _device(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def load_sounddevice() -> Any:
    """The ``sounddevice`` module; :class:`InputDeviceError` without the PortAudio library."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when the PortAudio library is missing
        raise InputDeviceError(f"no audio input: {exc} (install PortAudio, e.g. libportaudio2)") from None
    return sounddevice


def list_devices(sounddevice: Any) -> list[str]:
    """One line per input device: index, name, channels and default rate; ``*`` marks the default."""
    default_input = sounddevice.default.device[0]
    return [f"{'*' if info['index'] == default_input else ' '} {info['index']:>3}  {info['name']}  "
            f"({info['max_input_channels']} ch, {info['default_samplerate']:g} Hz)"
            for info in sounddevice.query_devices() if info["max_input_channels"] > 0]


def open_input(sounddevice: Any, device: int | str | None, rate: int | None) -> InputDevice:
    """The input ``device`` names (the system's default for ``None``), captured at ``rate`` or its
    own default rate; :class:`InputDeviceError` when there is none or it cannot capture so."""
    try:
        info = sounddevice.query_devices(device, kind="input")
    except (sounddevice.PortAudioError, ValueError) as exc:
        what = "no default audio input device" if device is None else f"no input device {device!r}"
        raise InputDeviceError(f"{what} ({exc}); --list-devices shows the inputs PortAudio sees") from None
    chosen = InputDevice(int(info["index"]), str(info["name"]), rate or int(info["default_samplerate"]))
    try:
        sounddevice.check_input_settings(device=chosen.index, samplerate=chosen.rate, channels=1, dtype="int16")
    except (sounddevice.PortAudioError, ValueError) as exc:
        raise InputDeviceError(f"input device {chosen.name!r} cannot capture mono 16-bit audio at "
                               f"{chosen.rate} Hz ({exc})") from None
    return chosen


async def capture(sounddevice: Any, device: int | str | None, rate: int, frame_ms: float,
                  stop: asyncio.Event) -> AsyncIterator[tuple[bytes, float]]:
    """Microphone frames until ``stop``, then whatever was captured before it;
    :class:`InputDeviceError` when the device does not open (unplugged, or taken since it was checked)."""
    loop = asyncio.get_running_loop()
    frames: asyncio.Queue[bytes] = asyncio.Queue()

    def on_audio(data: Any, count: int, _time: Any, _status: Any) -> None:
        loop.call_soon_threadsafe(frames.put_nowait, bytes(data))

    blocksize = round(rate * frame_ms / 1000)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        stream = sounddevice.RawInputStream(samplerate=rate, blocksize=blocksize, device=device, channels=1,
                                            dtype="int16", callback=on_audio)
    except sounddevice.PortAudioError as exc:
        raise InputDeviceError(f"cannot open input device {device!r} at {rate} Hz: {exc}") from None
    with stream:
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


async def transcribe_microphone(args: argparse.Namespace, sounddevice: Any, device: InputDevice) -> None:
    stop = asyncio.Event()
    session = asyncio.current_task()
    assert session is not None

    def on_interrupt() -> None:
        if stop.is_set():  # the second Ctrl-C
            session.cancel()
            return
        print("\n(ending: waiting for the last final; Ctrl-C again to quit)", file=sys.stderr)
        stop.set()

    # Handled by the loop, between callbacks: a KeyboardInterrupt could strike inside PortAudio's
    # calls on the capture's way out, and end a task with it.
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_interrupt)
    config: dict[str, Any] = {"sample_rate": device.rate, "encoding": "pcm_s16le", "channels": 1}
    if args.chunk_ms:
        config["chunk_ms"] = args.chunk_ms
    if args.endpoint_ms:
        config["endpointing"] = {"enabled": True, "silence_ms": args.endpoint_ms}
    view = JsonLines() if args.json else LiveView()

    def show(message: dict[str, Any]) -> None:
        if message["type"] == "ready":
            print(f"listening to {device.name} (device {device.index}) at {device.rate} Hz, "
                  f"{message['config']['chunk_ms']} ms chunks; Ctrl-C to stop", file=sys.stderr)
        view(message)

    frames = capture(sounddevice, device.index, device.rate, args.frame_ms, stop)
    await run_session(args.url, config, frames, show, ServerAccess.from_args(args))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        sounddevice = load_sounddevice()
        if args.list_devices:
            print("\n".join(list_devices(sounddevice)) or "no input devices")
            return 0
        device = open_input(sounddevice, args.device, args.rate)
        asyncio.run(transcribe_microphone(args, sounddevice, device))
    except ClientError as exc:
        return fail(exc, exc.exit_code)
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C before the session, or a second one in it
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
