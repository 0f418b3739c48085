"""Deepgram's own Python SDK (``deepgram-sdk``) transcribing a WAV file through streamd's /v1/listen.

Runs in the compat venv (tests/conftest.py: compat_python). Sends the file's 16-bit PCM in 100 ms
frames (a Finalize after --finalize-after frames, if given), then CloseStream, and prints one JSON
object with every message the SDK parsed. Usage: deepgram_listen.py PORT WAV [--finalize-after N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import wave

from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("wav")
    parser.add_argument("--finalize-after", type=int, default=None, help="send Finalize after this many frames")
    parser.add_argument("--chunk-ms", default="560")
    parser.add_argument("--endpointing", default="false")
    args = parser.parse_args()

    with wave.open(args.wav) as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        data = wav.readframes(wav.getnframes())
    step = 2 * channels * rate // 10
    frames = [data[i:i + step] for i in range(0, len(data), step)]
    http, ws = f"http://127.0.0.1:{args.port}", f"ws://127.0.0.1:{args.port}"
    client = AsyncDeepgramClient(api_key="x", environment=DeepgramClientEnvironment(
        base=http, production=ws, agent=ws, agent_rest=http))
    messages: list[dict] = []
    async with client.listen.v1.connect(
            model="nova-3", encoding="linear16", sample_rate=rate, channels=channels, interim_results=True,
            endpointing=args.endpointing, request_options={"additional_query_parameters": {"chunk_ms": args.chunk_ms}},
    ) as socket:
        async def send() -> None:
            for i, frame in enumerate(frames, 1):
                await socket.send_media(frame)
                if i == args.finalize_after:
                    await socket.send_finalize()
                await asyncio.sleep(0.02)
            await socket.send_keep_alive()
            await socket.send_close_stream()

        sender = asyncio.create_task(send())
        async for message in socket:
            messages.append(message.model_dump() if hasattr(message, "model_dump") else {"raw": repr(message)})
        await sender
    print(json.dumps({"messages": messages}))


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 120))
