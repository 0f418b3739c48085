"""Wire-protocol adapters without sockets: frames in, actions and frames out (sans-I/O).

Each adapter is fed what its clients send and the events a session core would give it; the
assertions are the protocol's documented shapes (docs/protocols.md) and its error forms.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from streamd.engine.decoding import Word
from streamd.engine.stream import Utterance
from streamd.server.protocols.deepgram import DeepgramAdapter
from streamd.server.protocols.openai_realtime import OpenAIRealtimeAdapter
from streamd.server.wire import (
    Audio,
    Connection,
    End,
    ErrorCode,
    Final,
    Finalize,
    ModelInfo,
    Partial,
    ProtocolError,
    Send,
    Start,
    Started,
    Summary,
)

MODEL = ModelInfo.describe("tones", 16000, [(70, 13), (70, 6), (70, 1), (70, 0)], frame_s=0.08,
                           default_chunk_ms=1120)


def connection(target: str, **headers: str) -> Connection:
    return Connection.from_request("s1", target, headers)


def sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.frame) for a in actions if isinstance(a, Send)]


def utterance(index: int, text: str, reason: str = "endpoint", start: float = 0.0) -> Utterance:
    words = [Word(w, start + 0.1 * i, start + 0.1 * i + 0.08, 0.9) for i, w in enumerate(text.split())]
    return Utterance(index, text, list(range(len(words))), words, start, start + 1.0, reason, [0.9] * len(words))


def append(audio: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(audio).decode()})


# ---------------------------------------------------------------------- OpenAI Realtime
def test_openai_session_created_then_first_audio_starts_the_stream_at_the_session_rate():
    adapter = OpenAIRealtimeAdapter(connection("/v1/realtime?intent=transcription&chunk_ms=160"), MODEL)
    [created] = sent(adapter.opening())
    assert created["type"] == "session.created" and created["session"]["type"] == "transcription"
    [updated] = sent(adapter.receive(json.dumps({"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 48000},
                                                     "turn_detection": None}}}})))
    assert updated["type"] == "session.updated"
    assert updated["session"]["audio"]["input"]["format"]["rate"] == 48000
    start, audio = adapter.receive(append(b"\x01\x00" * 10))
    assert isinstance(start, Start) and isinstance(audio, Audio) and audio.data == b"\x01\x00" * 10
    config = start.config
    assert (config.sample_rate, config.encoding, config.chunk_ms) == (48000, "pcm_s16le", 160)
    assert not config.endpointing.enabled  # turn_detection null: items end at commit


def test_openai_beta_header_gets_beta_shapes():
    adapter = OpenAIRealtimeAdapter(connection("/v1/realtime?intent=transcription", **{"OpenAI-Beta": "realtime=v1"}),
                                    MODEL)
    [created] = sent(adapter.opening())
    assert created["type"] == "transcription_session.created"
    assert created["session"]["input_audio_format"] == "pcm16"


def test_openai_deltas_concatenate_to_the_completed_transcript():
    adapter = OpenAIRealtimeAdapter(connection("/v1/realtime"), MODEL)
    adapter.opening()
    adapter.receive(append(b"\x00\x00" * 100))
    frames = [json.loads(f) for f in adapter.event(Started(adapter._config()))]
    for text in ("a", "a c", "a c f"):
        frames += [json.loads(f) for f in adapter.event(Partial(0, text, [], [], 1.0))]
    frames += [json.loads(f) for f in adapter.event(Final(utterance(0, "a c f b"), "endpoint", 2.0))]
    types = [f["type"] for f in frames]
    assert types[0] == "input_audio_buffer.speech_started"  # server_vad is the default
    deltas = "".join(f["delta"] for f in frames if f["type"].endswith("transcription.delta"))
    [completed] = [f for f in frames if f["type"].endswith("transcription.completed")]
    assert deltas == completed["transcript"] == "a c f b"
    assert types.index("input_audio_buffer.speech_stopped") < types.index("input_audio_buffer.committed") \
        < types.index("conversation.item.input_audio_transcription.completed")
    assert len({f["item_id"] for f in frames if "item_id" in f}) == 1


def test_openai_commit_finalizes_and_acknowledges_once():
    adapter = OpenAIRealtimeAdapter(connection("/v1/realtime"), MODEL)
    adapter.opening()
    adapter.receive(append(b"\x00\x00" * 100))
    actions = adapter.receive(json.dumps({"type": "input_audio_buffer.commit"}))
    assert isinstance(actions[0], Finalize)
    assert [f["type"] for f in sent(actions)] == ["input_audio_buffer.committed", "conversation.item.added"]
    frames = [json.loads(f) for f in adapter.event(Final(utterance(0, "a b", "finalize"), "finalize", 2.0))]
    assert "input_audio_buffer.committed" not in [f["type"] for f in frames]  # acknowledged at the commit
    assert next(f for f in frames if f["type"].endswith("completed"))["transcript"] == "a b"


@pytest.mark.parametrize("frame, code", [
    (b"\x00\x01", "binary_frame"),
    ("[" * 5000, "invalid_json"),
    ('{"type": "response.create"}', "unknown_event"),
    ('{"type": "input_audio_buffer.append", "audio": "not base64!"}', "invalid_value"),
    ('{"type": "input_audio_buffer.append", "audio": "AA=="}', "invalid_value"),  # one byte: half a sample
    ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty"),
    ('{"type": "session.update", "session": {"type": "realtime"}}', "invalid_value"),
    ('{"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}',
     "invalid_value"),
])
def test_openai_client_mistakes_get_an_error_event_and_the_session_goes_on(frame: str | bytes, code: str):
    adapter = OpenAIRealtimeAdapter(connection("/v1/realtime"), MODEL)
    adapter.opening()
    [error] = sent(adapter.receive(frame))
    assert error["type"] == "error" and error["error"]["code"] == code
    assert error["error"]["type"] == "invalid_request_error" and error["error"]["message"]


def test_openai_turn_detection_is_fixed_once_audio_flows():
    adapter = OpenAIRealtimeAdapter(connection("/v1/realtime"), MODEL)
    adapter.opening()
    adapter.receive(append(b"\x00\x00"))
    [error] = sent(adapter.receive(json.dumps({"type": "session.update", "session": {
        "type": "transcription", "audio": {"input": {"turn_detection": None}}}})))
    assert error["error"]["code"] == "session_already_streaming"


def test_openai_shutdown_closes_with_an_error_event_and_1001():
    adapter = OpenAIRealtimeAdapter(connection("/v1/realtime"), MODEL)
    closing = adapter.closing(ProtocolError(ErrorCode.SHUTTING_DOWN, "bye"), Summary("s1", 1.0, 1))
    assert closing.code == 1001
    assert json.loads(closing.frames[0])["error"]["code"] == "shutting_down"


# ---------------------------------------------------------------------- Deepgram
def test_deepgram_query_is_the_config_and_starts_the_stream():
    adapter = DeepgramAdapter(connection("/v1/listen?model=nova-3&encoding=linear16&sample_rate=8000&channels=2"
                                         "&interim_results=True&endpointing=300&chunk_ms=80"), MODEL)
    [start] = adapter.opening()
    config = start.config
    assert (config.sample_rate, config.channels, config.encoding, config.chunk_ms) == (8000, 2, "pcm_s16le", 80)
    assert config.partials and config.endpointing.enabled and config.endpointing.silence_ms == 300
    assert DeepgramAdapter(connection("/v1/listen?endpointing=false"), MODEL).opening()[0].config.endpointing \
        .enabled is False


def test_deepgram_messages_map_to_the_stream():
    adapter = DeepgramAdapter(connection("/v1/listen?encoding=linear16&sample_rate=16000"), MODEL)
    adapter.opening()
    assert adapter.receive(b"\x00\x00") == [Audio(b"\x00\x00")]
    assert adapter.receive('{"type": "KeepAlive"}') == []
    assert adapter.receive('{"type": "Finalize"}') == [Finalize()]
    assert adapter.receive('{"type": "CloseStream"}') == [End()]
    assert adapter.receive(b"") == [End()]  # Deepgram's original close signal


def test_deepgram_results_interim_final_and_metadata():
    adapter = DeepgramAdapter(connection("/v1/listen?interim_results=true&utterance_end_ms=1000"), MODEL)
    adapter.opening()
    adapter.receive('{"type": "Finalize"}')
    [interim] = [json.loads(f) for f in adapter.event(Partial(0, "a c", [1, 2], [0.5, 1.0], 1.2))]
    assert interim["type"] == "Results" and interim["is_final"] is False
    assert interim["channel"]["alternatives"][0] == {"transcript": "a c", "confidence": 0.75, "words": []}
    [final] = [json.loads(f) for f in adapter.event(Final(utterance(0, "a c b", "finalize"), "finalize", 2.0))]
    assert final["is_final"] and final["from_finalize"] and not final["speech_final"]
    alternative = final["channel"]["alternatives"][0]
    assert [w["word"] for w in alternative["words"]] == ["a", "c", "b"]
    assert alternative["confidence"] == pytest.approx(0.9)
    frames = [json.loads(f) for f in adapter.event(Final(utterance(1, "d", start=1.0), "endpoint", 3.0))]
    assert frames[0]["speech_final"] and not frames[0]["from_finalize"]
    assert frames[1] == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.08}
    metadata = json.loads(adapter.closing(None, Summary("s1", 3.0, 2)).frames[0])
    assert metadata["type"] == "Metadata" and metadata["duration"] == 3.0 and metadata["channels"] == 1


@pytest.mark.parametrize("target, frame, fragment", [
    ("/v1/listen?encoding=opus", None, "encoding 'opus' is not supported"),
    ("/v1/listen?sample_rate=abc", None, "sample_rate='abc' is not an integer"),
    ("/v1/listen?multichannel=true", None, "multichannel"),
    ("/v1/listen?chunk_ms=100", None, "chunk_ms 100 not supported"),
    ("/v1/listen", '{"type": "Flush"}', "unknown message type"),
    ("/v1/listen", "{" * 3000, "not valid JSON"),
])
def test_deepgram_mistakes_close_with_1008_and_a_reason(target: str, frame: str | None, fragment: str):
    adapter = DeepgramAdapter(connection(target), MODEL)
    with pytest.raises(ProtocolError) as raised:
        adapter.opening()
        adapter.receive(frame)
    assert fragment in raised.value.message
    closing = adapter.closing(raised.value, Summary("s1", 0.0, 0))
    assert closing.code == 1008 and closing.reason.startswith("DATA-0000: ")
    assert len(closing.reason.encode()) <= 123
    assert json.loads(closing.frames[-1])["type"] == "Error"
