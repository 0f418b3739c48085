"""Server CPU per audio second through each protocol: native, OpenAI Realtime, Deepgram,
WhisperLive, vosk-server and sherpa-onnx, against one server with every port.

Each run sends the same audio (``--sessions`` sessions of ``--seconds`` of tone letters, at
``--speed`` times real time in 80 ms frames) through one protocol, in that protocol's own audio
format: PCM16 for native, Deepgram and vosk (lockstep: one reply read per frame), base64 PCM16 in
JSON for OpenAI, float32 for WhisperLive and sherpa-onnx, all at 16 kHz. The server's CPU time over
the run (its event loop's thread, where the protocols' parsing and encoding run, and its other
threads: the engine) is divided by the audio seconds sent. Protocols take turns within each round,
the order rotating from round to round, so that the machine's drift falls on all of them; the
medians over the rounds are reported, and each session's transcript is checked against the letters
sent (the tone model's). The clients are small raw ``websockets`` clients (docs/protocols.md).

The protocol's own share is small next to the rest of a session's work, so the same frames are also
timed in this process without sockets (:func:`adapter_cost`): the adapter reading the client's
frames (JSON, base64) with the session core's decoding of their audio, and writing one partial a
chunk; the median over the sessions' audio, protocols interleaved.

Usage: python bench/protocol_cost.py --model tones.nemo [--sessions 16] [--seconds 10] [--speed 1]
       [--rounds 3] [--chunk-ms 160] [--out protocol_cost.json] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shlex
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from websockets.asyncio.client import ClientConnection, connect

from clients.common import Pcm
from streamd.bench.machine import machine_description
from streamd.bench.server import serving
from streamd.models import tones
from streamd.models.architectures import ATT_CONTEXT_SIZES
from streamd.server.protocols import native as native_protocol
from streamd.server.protocols.base import Adapter
from streamd.server.protocols.deepgram import DeepgramAdapter
from streamd.server.protocols.native import NativeAdapter
from streamd.server.protocols.openai_realtime import OpenAIRealtimeAdapter
from streamd.server.protocols.sherpa import SherpaAdapter
from streamd.server.protocols.vosk import VoskAdapter
from streamd.server.protocols.whisperlive import WhisperLiveAdapter
from streamd.server.wire import Audio, Connection, ModelInfo, Partial, SessionConfig, Start, Started
from streamd.serverproc import ServerProcess, free_port

FRAME_MS = 80
RATE = tones.SAMPLE_RATE  # every protocol's audio is sent at 16 kHz: no resampling anywhere
PORT_KEYS = ("whisperlive_port", "vosk_port", "sherpa_port")


async def paced(frames: list[bytes], speed: float) -> AsyncIterator[bytes]:
    """The frames, each when its audio would have happened at ``speed`` times real time."""
    started = time.monotonic()
    for index, frame in enumerate(frames):
        await asyncio.sleep(max(0.0, started + index * FRAME_MS / 1000 / speed - time.monotonic()))
        yield frame


async def sending_while_reading(ws: ClientConnection, send: Callable[[], Awaitable[None]]
                                ) -> list[dict[str, Any] | str]:
    """Run ``send`` while reading every message until the server closes: the messages (JSON
    parsed where they are JSON)."""
    sender = asyncio.create_task(send())
    messages: list[dict[str, Any] | str] = []
    async for text in ws:
        try:
            messages.append(json.loads(text))
        except ValueError:
            messages.append(str(text))
    await sender
    return messages


# What each protocol's client sends before its audio, and how it wraps a frame of audio.
NATIVE_CONFIG = native_protocol.config(sample_rate=RATE, encoding="pcm_s16le")
OPENAI_SESSION = json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
    "input": {"format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": None}}}})
WHISPERLIVE_OPTIONS = json.dumps({"uid": "bench", "language": "en", "task": "transcribe", "model": "small",
                                  "use_vad": False})
VOSK_CONFIG = json.dumps({"config": {"sample_rate": RATE}})


def openai_append(frame: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()})


def pcm16(audio: np.ndarray) -> bytes:
    return Pcm.from_array(audio, RATE).data


def f32(audio: np.ndarray) -> bytes:
    return Pcm.from_array(audio, RATE, "f32le").data


def frames(data: bytes, sample_bytes: int) -> list[bytes]:
    step = RATE * FRAME_MS // 1000 * sample_bytes
    return [data[i:i + step] for i in range(0, len(data), step)]


# Each client: one session of ``audio`` (float32 samples at 16 kHz), its transcript returned.
async def native(url: str, audio: np.ndarray, speed: float) -> str:
    async with connect(url, compression=None) as ws:
        await ws.send(NATIVE_CONFIG)

        async def send() -> None:
            async for frame in paced(frames(pcm16(audio), 2), speed):
                await ws.send(frame)
            await ws.send(native_protocol.eof())

        messages = await sending_while_reading(ws, send)
    return joined(m["text"] for m in messages if isinstance(m, dict) and m["type"] == "final")


async def openai(url: str, audio: np.ndarray, speed: float) -> str:
    """Turn detection off: one item, ended by the commit after the last append."""
    async with connect(url, compression=None) as ws:
        async def read() -> str:
            async for text in ws:
                event = json.loads(text)
                if event["type"] == "error":
                    raise RuntimeError(f"openai: {event}")
                if event["type"] == "conversation.item.input_audio_transcription.completed":
                    return str(event["transcript"])
            raise RuntimeError("openai: closed before the transcript")

        reader = asyncio.create_task(read())
        await ws.send(OPENAI_SESSION)
        async for frame in paced(frames(pcm16(audio), 2), speed):
            await ws.send(openai_append(frame))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        return await reader


async def deepgram(url: str, audio: np.ndarray, speed: float) -> str:
    async with connect(url, compression=None) as ws:
        async def send() -> None:
            async for frame in paced(frames(pcm16(audio), 2), speed):
                await ws.send(frame)
            await ws.send(json.dumps({"type": "CloseStream"}))

        messages = await sending_while_reading(ws, send)
    return joined(m["channel"]["alternatives"][0]["transcript"] for m in messages
                  if isinstance(m, dict) and m.get("type") == "Results" and m["is_final"])


async def whisperlive(url: str, audio: np.ndarray, speed: float) -> str:
    async with connect(url, compression=None) as ws:
        await ws.send(WHISPERLIVE_OPTIONS)
        ready = json.loads(await ws.recv())
        if ready.get("message") != "SERVER_READY":
            raise RuntimeError(f"whisperlive: {ready}")

        async def send() -> None:
            async for frame in paced(frames(f32(audio), 4), speed):
                await ws.send(frame)
            await ws.send(b"END_OF_AUDIO")

        messages = await sending_while_reading(ws, send)
    completed: dict[str, str] = {}  # by start: each message repeats the last completed segments
    for message in messages:
        for segment in message.get("segments", []) if isinstance(message, dict) else []:
            if segment["completed"]:
                completed[segment["start"]] = segment["text"]
    return joined(completed[start] for start in sorted(completed, key=float))


async def vosk(url: str, audio: np.ndarray, speed: float) -> str:
    """Lockstep, as vosk's clients are: each frame's reply is read before the next frame."""
    texts = []
    async with connect(url, compression=None) as ws:
        await ws.send(VOSK_CONFIG)
        async for frame in paced(frames(pcm16(audio), 2), speed):
            await ws.send(frame)
            texts.append(json.loads(await ws.recv()).get("text", ""))
        await ws.send('{"eof" : 1}')
        texts.append(json.loads(await ws.recv())["text"])
    return joined(texts)


async def sherpa(url: str, audio: np.ndarray, speed: float) -> str:
    async with connect(url, compression=None) as ws:
        async def send() -> None:
            async for frame in paced(frames(f32(audio), 4), speed):
                await ws.send(frame)
            await ws.send("Done")

        messages = await sending_while_reading(ws, send)
    return joined(m["text"] for m in messages if isinstance(m, dict) and m["is_final"])


def identity(frame: bytes) -> bytes:
    return frame


@dataclass(frozen=True)
class Protocol:
    name: str
    audio: str  # what a frame carries, for the table
    client: Callable[[str, np.ndarray, float], Awaitable[str]]
    adapter: type[Adapter]
    opening: tuple[str, ...] = ()  # what its client sends before audio
    sample_bytes: int = 2  # 2: PCM16, 4: float32
    wrap: Callable[[bytes], str | bytes] = identity  # a frame of audio as its client sends it
    port_key: str | None = None  # its own listener's serve key; None: the main port
    path: str = "/"

    def target(self, chunk_ms: int) -> str:
        """Its request path and query, with the chunk size."""
        return (self.path if "?" in self.path else self.path + "?") + f"chunk_ms={chunk_ms}"


PROTOCOLS = [
    Protocol("native", "PCM16, binary", native, NativeAdapter, (NATIVE_CONFIG,)),
    Protocol("openai", "PCM16, base64 in JSON", openai, OpenAIRealtimeAdapter, (OPENAI_SESSION,), wrap=openai_append,
             path="/v1/realtime?intent=transcription&"),
    Protocol("deepgram", "PCM16, binary", deepgram, DeepgramAdapter,
             path="/v1/listen?encoding=linear16&sample_rate=16000&interim_results=true&"),
    Protocol("whisperlive", "float32, binary", whisperlive, WhisperLiveAdapter, (WHISPERLIVE_OPTIONS,), 4,
             port_key="whisperlive_port"),
    Protocol("vosk", "PCM16, binary, lockstep", vosk, VoskAdapter, (VOSK_CONFIG,), port_key="vosk_port"),
    Protocol("sherpa", "float32, binary", sherpa, SherpaAdapter, (), 4, port_key="sherpa_port"),
]


def adapter_cost(protocol: Protocol, audio: np.ndarray, chunk_ms: int) -> dict[str, Any]:
    """In this process, without sockets: the protocol's own work per audio second — its adapter
    reading the client's frames (JSON, base64) and the session core decoding their audio to
    float32, and its adapter writing one partial per chunk — as the server's event loop does it."""
    model = ModelInfo.describe("tones", RATE, list(ATT_CONTEXT_SIZES), frame_s=0.08, default_chunk_ms=chunk_ms)
    adapter = protocol.adapter(Connection.from_request("bench", protocol.target(chunk_ms), {}), model)
    messages = [protocol.wrap(frame) for frame in frames(pcm16(audio) if protocol.sample_bytes == 2 else f32(audio),
                                                          protocol.sample_bytes)]
    config: SessionConfig | None = None

    def receive(frame: str | bytes) -> None:
        nonlocal config
        for action in adapter.receive(frame):
            if isinstance(action, Start):
                config = action.config
                adapter.event(Started(config))
            elif isinstance(action, Audio):
                assert config is not None
                config.pcm_format.decode(action.data)

    for action in adapter.opening():
        if isinstance(action, Start):
            config = action.config
            adapter.event(Started(config))
    for frame in [*protocol.opening, messages[0]]:
        receive(frame)
    started = time.perf_counter()
    for frame in messages[1:]:
        receive(frame)
    reading = time.perf_counter() - started
    # One utterance that grows by a letter every 0.4 s (the tone letters' pace), one partial a chunk.
    seconds = [(i + 1) * chunk_ms / 1000 for i in range(len(messages) * FRAME_MS // chunk_ms)]
    partials = [Partial(0, " ".join("abcdefgh"[j % 8] for j in range(1 + int(t / 0.4))), list(range(1 + int(t / 0.4))),
                        [0.9] * (1 + int(t / 0.4)), t) for t in seconds]
    started = time.perf_counter()
    for partial in partials:
        adapter.event(partial)
    writing = time.perf_counter() - started
    audio_s = (len(messages) - 1) * FRAME_MS / 1000
    return {"protocol": protocol.name, "read_us_per_audio_s": round(1e6 * reading / audio_s, 1),
            "write_us_per_audio_s": round(1e6 * writing / (len(partials) * chunk_ms / 1000), 1)}


def joined(texts: Any) -> str:
    return " ".join(text for text in texts if text)


def url(server: ServerProcess, protocol: Protocol, ports: dict[str, int], chunk_ms: int) -> str:
    port = ports[protocol.port_key] if protocol.port_key else server.port
    return f"ws://127.0.0.1:{port}{protocol.target(chunk_ms)}"


def one_run(server: ServerProcess, protocol: Protocol, ports: dict[str, int], audios: list[np.ndarray],
            expected: list[str], chunk_ms: int, speed: float) -> dict[str, Any]:
    """Every session of ``audios`` at once through ``protocol``: the server's CPU per audio second."""
    address = url(server, protocol, ports, chunk_ms)

    async def run() -> list[str]:
        return await asyncio.gather(*(protocol.client(address, audio, speed) for audio in audios))

    server.wait_idle()
    (loop_before, other_before), started = server.cpu_seconds(), time.monotonic()
    transcripts = asyncio.run(run())
    wall = time.monotonic() - started
    server.wait_idle()  # the sessions' last work (their close) is in the run
    loop_after, other_after = server.cpu_seconds()
    audio_s = sum(len(a) for a in audios) / RATE
    loop, other = loop_after - loop_before, other_after - other_before
    return {"protocol": protocol.name, "wall_s": round(wall, 2), "audio_s": round(audio_s, 2),
            "loop_cpu_s": round(loop, 3), "other_cpu_s": round(other, 3),
            "loop_ms_per_audio_s": round(1000 * loop / audio_s, 3),
            "other_ms_per_audio_s": round(1000 * other / audio_s, 3),
            "total_ms_per_audio_s": round(1000 * (loop + other) / audio_s, 3),
            "exact": sum(t == e for t, e in zip(transcripts, expected, strict=True)), "sessions": len(audios),
            "mismatches": [(t, e) for t, e in zip(transcripts, expected, strict=True) if t != e][:3]}


def session_audio(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, str]:
    """One tone sequence of about ``seconds`` (0.4 s a letter; no letter next to itself), and its text."""
    sequence = tones.synthesize(tones.letters_without_runs(rng, max(1, round(seconds / 0.4))), rng)
    return sequence.audio, sequence.text


def summary(runs: list[dict[str, Any]], adapters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for protocol in PROTOCOLS:
        mine = [r for r in runs if r["protocol"] == protocol.name]
        row: dict[str, Any] = {"protocol": protocol.name, "audio": protocol.audio, "runs": len(mine)}
        for key in ("loop_ms_per_audio_s", "other_ms_per_audio_s", "total_ms_per_audio_s"):
            row[key] = round(float(np.median([r[key] for r in mine])), 3)
        for key in ("read_us_per_audio_s", "write_us_per_audio_s"):
            row[key] = round(float(np.median([a[key] for a in adapters if a["protocol"] == protocol.name])), 1)
        row["exact"] = f"{sum(r['exact'] for r in mine)}/{sum(r['sessions'] for r in mine)}"
        rows.append(row)
    native = rows[0]
    for row in rows:
        row["loop_vs_native"] = round(row["loop_ms_per_audio_s"] / native["loop_ms_per_audio_s"], 2)
        row["total_vs_native"] = round(row["total_ms_per_audio_s"] / native["total_ms_per_audio_s"], 2)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| protocol | audio frames | event loop ms per audio s (x native) | other threads ms per audio s "
             "| total ms per audio s (x native) | transcripts exact | adapter µs per audio s: reading / writing |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['protocol']} | {r['audio']} | {r['loop_ms_per_audio_s']:.2f} ({r['loop_vs_native']:.2f}) | "
              f"{r['other_ms_per_audio_s']:.2f} | {r['total_ms_per_audio_s']:.2f} ({r['total_vs_native']:.2f}) | "
              f"{r['exact']} | {r['read_us_per_audio_s']:.0f} / {r['write_us_per_audio_s']:.0f} |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=".nemo model to serve (the tone model: transcripts checked)")
    parser.add_argument("--sessions", type=int, default=16, help="sessions at once per run (default 16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="each session's audio (default 10)")
    parser.add_argument("--speed", type=float, default=1.0, help="times real time (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one run per protocol (default 3)")
    parser.add_argument("--chunk-ms", type=int, default=160, help="every session's chunk (default 160)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="append the table, with machine, date and command, here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    sessions = [session_audio(rng, args.seconds) for _ in range(args.sessions)]
    audios, expected = [audio for audio, _ in sessions], [text for _, text in sessions]
    ports = {key: free_port() for key in PORT_KEYS}
    runs = []
    with serving(args.model, None, threads=args.threads, max_batch=args.sessions,
                 max_sessions=args.sessions + 1, **ports) as server:
        for protocol in PROTOCOLS:  # warm-up: each protocol's code paths, untimed
            one_run(server, protocol, ports, [audios[0][: 2 * RATE]], [""], args.chunk_ms, 4.0)
        for index in range(args.rounds):
            turn = index % len(PROTOCOLS)
            for protocol in PROTOCOLS[turn:] + PROTOCOLS[:turn]:
                runs.append(one_run(server, protocol, ports, audios, expected, args.chunk_ms, args.speed))
                print(json.dumps(runs[-1]), flush=True)
    adapters = [adapter_cost(protocol, audio, args.chunk_ms) for audio in audios for protocol in PROTOCOLS]
    rows = summary(runs, adapters)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_description(torch.device("cpu"), args.threads), "model": args.model,
            "sessions": args.sessions, "seconds": args.seconds, "speed": args.speed, "rounds": args.rounds,
            "chunk_ms": args.chunk_ms, "frame_ms": FRAME_MS,
            "command": "python " + shlex.join(["bench/protocol_cost.py", *sys.argv[1:]])}
    text = (f"\n### Server CPU per audio second, by protocol\n\n{meta['date']}, {meta['machine']}; "
            f"`{meta['command']}`\n\n{table(rows)}\n")
    print(text)
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "summary": rows, "runs": runs, "adapters": adapters},
                                       indent=1))
    if args.markdown:
        with args.markdown.open("a") as md:
            md.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
