"""OpenAI's own Python client (``openai`` package) transcribing a WAV file through streamd.

Runs in the compat venv (tests/conftest.py: compat_python), not the daemon's. Prints one JSON
object: every server event's type, the completed transcripts in order, and the deltas joined
per item. Usage: openai_realtime.py PORT WAV --shape ga|beta --turn manual|server_vad
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import wave

from openai import AsyncOpenAI


def pcm16_frames(path: str, frame_ms: int) -> tuple[list[bytes], int]:
    with wave.open(path) as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1, "16-bit mono WAV expected"
        rate = wav.getframerate()
        data = wav.readframes(wav.getnframes())
    step = 2 * rate * frame_ms // 1000
    return [data[i:i + step] for i in range(0, len(data), step)], rate


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("wav")
    parser.add_argument("--shape", choices=("ga", "beta"), default="ga")
    parser.add_argument("--turn", choices=("manual", "server_vad"), default="manual")
    parser.add_argument("--silence-ms", type=int, default=500)
    parser.add_argument("--items", type=int, default=1, help="completed transcripts to wait for")
    parser.add_argument("--chunk-ms", default="560")
    parser.add_argument("--logprobs", action="store_true")
    args = parser.parse_args()

    frames, rate = pcm16_frames(args.wav, 100)
    client = AsyncOpenAI(api_key="x", base_url=f"http://127.0.0.1:{args.port}/v1",
                         websocket_base_url=f"ws://127.0.0.1:{args.port}/v1")
    turn = None if args.turn == "manual" else {"type": "server_vad", "silence_duration_ms": args.silence_ms}
    include = ["item.input_audio_transcription.logprobs"] if args.logprobs else []
    query = {"intent": "transcription", "chunk_ms": args.chunk_ms}
    events: list[dict] = []
    completed: list[dict] = []
    deltas: dict[str, str] = {}
    if args.shape == "beta":
        manager = client.beta.realtime.connect(model="gpt-4o-transcribe", extra_query=query)
    else:
        manager = client.realtime.connect(extra_query=query)
    async with manager as connection:
        if args.shape == "beta":
            await connection.transcription_session.update(session={
                "input_audio_format": "pcm16", "input_audio_transcription": {"model": "gpt-4o-transcribe"},
                "turn_detection": turn, "include": include})
        else:
            await connection.session.update(session={
                "type": "transcription", "include": include,
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate},
                                    "transcription": {"model": "gpt-4o-transcribe"}, "turn_detection": turn}}})

        async def send() -> None:
            for frame in frames:
                await connection.input_audio_buffer.append(audio=base64.b64encode(frame).decode())
                await asyncio.sleep(0.02)
            if args.turn == "manual":
                await connection.input_audio_buffer.commit()

        sender = asyncio.create_task(send())
        async for event in connection:
            events.append({"type": event.type, **({"code": event.error.code} if event.type == "error" else {})})
            if event.type == "conversation.item.input_audio_transcription.delta":
                deltas[event.item_id] = deltas.get(event.item_id, "") + (event.delta or "")
            if event.type == "conversation.item.input_audio_transcription.completed":
                logprobs = [p.model_dump() for p in event.logprobs] if event.logprobs else None
                completed.append({"item_id": event.item_id, "transcript": event.transcript,
                                  "usage_seconds": event.usage.seconds, "logprobs": logprobs})
            items_done = sum(e["type"] == "conversation.item.done" for e in events)
            if len(completed) >= args.items and (args.shape == "beta" or items_done >= args.items):
                break  # a GA item ends with conversation.item.done, after its completed
        await sender
    print(json.dumps({"events": events, "completed": completed, "deltas": deltas}))


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(), 120))
