"""Wire-protocol adapters without sockets: frames in, actions and frames out (sans-I/O).

Each adapter is fed what its clients send and the events a session core would give it; the
assertions are the protocol's documented shapes (docs/protocols.md) and its error forms.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import pytest

from streamd.engine.decoding import Word
from streamd.engine.stream import Utterance
from streamd.server.protocols.deepgram import DeepgramAdapter
from streamd.server.protocols.openai_realtime import OpenAIRealtimeAdapter
from streamd.server.protocols.sherpa import SherpaAdapter
from streamd.server.protocols.vosk import VoskAdapter
from streamd.server.protocols.whisperlive import WhisperLiveAdapter
from streamd.server.wire import (
    Audio,
    Connection,
    End,
    EndStream,
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


def test_openai_commit_ends_the_stream_and_acknowledges_once():
    adapter = OpenAIRealtimeAdapter(connection("/v1/realtime"), MODEL)
    adapter.opening()
    adapter.receive(append(b"\x00\x00" * 100))
    actions = adapter.receive(json.dumps({"type": "input_audio_buffer.commit"}))
    # Acknowledged, then the stream ends: every appended sample is decoded into the item.
    assert isinstance(actions[-1], EndStream)
    assert [f["type"] for f in sent(actions)] == ["input_audio_buffer.committed", "conversation.item.added"]
    frames = [json.loads(f) for f in adapter.event(Final(utterance(0, "a b", "eof"), "eof", 2.0))]
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


# ---------------------------------------------------------------------- WhisperLive
def whisperlive(target: str = "/", **options: Any) -> WhisperLiveAdapter:
    """An adapter that has taken the client's options (uid "u1" unless given)."""
    adapter = WhisperLiveAdapter(connection(target), MODEL)
    adapter.receive(json.dumps({"uid": "u1", "language": "en", "task": "transcribe", "model": "small",
                                "use_vad": True, **options}))
    return adapter


def frames(adapter: Any, event: Any) -> list[dict[str, Any]]:
    return [json.loads(f) for f in adapter.event(event)]


@pytest.mark.parametrize("options, encoding", [({}, "f32le"), ({"audio_format": "int16"}, "pcm_s16le")])
def test_whisperlive_options_start_the_stream_and_ready_names_faster_whisper(options: dict[str, Any], encoding: str):
    adapter = WhisperLiveAdapter(connection("/?chunk_ms=160"), MODEL)
    [start] = adapter.receive(json.dumps({"uid": "u1", "task": "transcribe", "send_last_n_segments": 10, **options}))
    config = start.config
    assert (config.encoding, config.sample_rate, config.chunk_ms) == (encoding, 16000, 160)
    assert config.endpointing.enabled and config.partials  # segments complete at the engine's endpoint
    assert frames(adapter, Started(config)) == [{"uid": "u1", "message": "SERVER_READY", "backend": "faster_whisper"}]


def test_whisperlive_audio_and_end_of_audio():
    adapter = whisperlive()
    assert adapter.receive(b"\x00" * 16) == [Audio(b"\x00" * 16)]
    assert adapter.receive(b"END_OF_AUDIO") == [End()]


def test_whisperlive_segments_keep_the_last_n_completed_and_the_one_being_spoken():
    adapter = whisperlive(send_last_n_segments=2, word_timestamps=True)
    [speaking] = frames(adapter, Partial(0, "a c", [], [], 1.5))
    assert speaking == {"uid": "u1",
                        "segments": [{"start": "0.000", "end": "1.500", "text": "a c", "completed": False}]}
    for index, text in enumerate(["a c", "b", "d e"]):
        [message] = frames(adapter, Final(utterance(index, text, start=float(index)), "endpoint", index + 1.0))
    segments = message["segments"]
    assert [(s["start"], s["end"], s["text"], s["completed"]) for s in segments] == [
        ("1.000", "2.000", "b", True), ("2.000", "3.000", "d e", True)]
    assert segments[-1]["words"] == [{"word": "d", "start": 2.0, "end": 2.08, "probability": 0.9},
                                     {"word": "e", "start": 2.1, "end": 2.18, "probability": 0.9}]
    [message] = frames(adapter, Partial(3, "f", [], [], 3.5))
    assert [s["text"] for s in message["segments"]] == ["b", "d e", "f"]
    assert message["segments"][-1] == {"start": "3.000", "end": "3.500", "text": "f", "completed": False}
    assert frames(adapter, Final(utterance(3, ""), "finalize", 4.0)) == []  # nothing said, no segment


@pytest.mark.parametrize("first, then, code, uid", [
    (b"\x00\x00\x00\x00", None, ErrorCode.AUDIO_BEFORE_CONFIG, None),
    ("{" * 3000, None, ErrorCode.BAD_MESSAGE, None),
    ('{"language": "en"}', None, ErrorCode.BAD_CONFIG, None),
    ('{"uid": "u1", "audio_format": "uint8"}', None, ErrorCode.BAD_CONFIG, "u1"),
    ('{"uid": "u1", "task": "translate"}', None, ErrorCode.BAD_CONFIG, "u1"),
    ('{"uid": "u1", "send_last_n_segments": 0}', None, ErrorCode.BAD_CONFIG, "u1"),
    ('{"uid": "u1"}', "END_OF_AUDIO", ErrorCode.BAD_MESSAGE, "u1"),  # a text frame, not binary
])
def test_whisperlive_mistakes_get_status_error(first: str | bytes, then: str | None, code: ErrorCode,
                                               uid: str | None):
    adapter = WhisperLiveAdapter(connection("/"), MODEL)
    with pytest.raises(ProtocolError) as raised:
        adapter.receive(first)
        adapter.receive(then)
    assert raised.value.code is code
    closing = adapter.closing(raised.value, Summary("s1", 0.0, 0))
    [error] = [json.loads(f) for f in closing.frames]
    assert error == {"uid": uid, "status": "ERROR", "message": raised.value.message}
    assert closing.code == code.close_code


def test_whisperlive_end_closes_quietly_and_the_length_limit_disconnects():
    assert whisperlive().closing(None, Summary("s1", 1.0, 1)).frames == []
    closing = whisperlive().closing(ProtocolError(ErrorCode.MAX_SESSION, "limit"), Summary("s1", 1.0, 1))
    assert [json.loads(f) for f in closing.frames] == [{"uid": "u1", "message": "DISCONNECT"}]


def test_whisperlive_full_server_answers_wait_with_the_uid():
    adapter = WhisperLiveAdapter(connection("/"), MODEL)
    assert adapter.answers_full and not DeepgramAdapter.answers_full
    closing = adapter.full(json.dumps({"uid": "u9", "task": "transcribe"}), 30.0)
    assert [json.loads(f) for f in closing.frames] == [{"uid": "u9", "status": "WAIT", "message": 0.5}]
    assert json.loads(adapter.full(b"not options", 60.0).frames[0])["uid"] is None


# ---------------------------------------------------------------------- vosk
def test_vosk_config_gets_no_reply_and_sets_the_rate_of_the_stream():
    adapter = VoskAdapter(connection("/?chunk_ms=560"), MODEL)
    assert adapter.receive('{"config": {"sample_rate": 16000.0, "words": 1, "phrase_list": ["a b"]}}') == []
    start, audio, reply = adapter.receive(b"\x01\x00" * 8)
    assert (start.config.sample_rate, start.config.encoding, start.config.chunk_ms) == (16000, "pcm_s16le", 560)
    assert start.config.endpointing.enabled
    assert audio == Audio(b"\x01\x00" * 8) and json.loads(reply.frame) == {"partial": ""}
    default = VoskAdapter(connection("/"), MODEL).receive(b"")[0]
    assert default.config.sample_rate == 8000  # vosk-server's default


def test_vosk_each_audio_message_gets_one_reply_the_oldest_result_first():
    adapter = VoskAdapter(connection("/"), MODEL)
    adapter.receive(b"")
    adapter.event(Partial(0, "a c", [], [], 1.0))
    assert sent(adapter.receive(b"\x00\x00")) == [{"partial": "a c"}]
    for index, text in enumerate(["a c", "b"]):
        assert adapter.event(Final(utterance(index, text, start=float(index)), "endpoint", 2.0)) == []
    assert sent(adapter.receive(b"\x00\x00")) == [{"result": [
        {"conf": 0.9, "start": 0.0, "end": 0.08, "word": "a"}, {"conf": 0.9, "start": 0.1, "end": 0.18, "word": "c"}],
        "text": "a c"}]
    assert sent(adapter.receive(b"\x00\x00"))[0]["text"] == "b"
    assert sent(adapter.receive(b"\x00\x00")) == [{"partial": ""}]


@pytest.mark.parametrize("eof", ['{"eof" : 1}', '{"eof":1}', '{ "eof": 1 }'])
def test_vosk_eof_is_answered_once_with_every_result_not_yet_replied(eof: str):
    adapter = VoskAdapter(connection("/"), MODEL)
    adapter.receive('{"config": {"words": 0}}')
    adapter.receive(b"\x00\x00")
    assert adapter.receive(eof) == [End()]  # the reply waits for the last final
    adapter.event(Final(utterance(0, "a c"), "endpoint", 1.0))
    adapter.event(Final(utterance(1, "b", start=1.0), "eof", 2.0))
    closing = adapter.closing(None, Summary("s1", 2.0, 2))
    assert [json.loads(f) for f in closing.frames] == [{"text": "a c b"}] and closing.code == 1000


def test_vosk_eof_without_speech_is_an_empty_text():
    adapter = VoskAdapter(connection("/"), MODEL)
    assert isinstance(adapter.receive('{"eof" : 1}')[0], Start)  # eof before audio opens and ends a stream
    adapter.event(Final(utterance(0, ""), "eof", 0.0))
    assert [json.loads(f) for f in adapter.closing(None, Summary("s1", 0.0, 1)).frames] == [{"text": ""}]


def test_vosk_reset_is_answered_when_its_final_comes_and_the_session_goes_on():
    adapter = VoskAdapter(connection("/"), MODEL)
    adapter.receive(b"\x00\x00")
    assert adapter.receive('{"reset" : 1}') == [Finalize()]
    assert adapter.event(Final(utterance(0, "a"), "endpoint", 1.0)) == []
    [reply] = adapter.event(Final(utterance(1, "c b", start=1.0), "finalize", 2.0))
    assert json.loads(reply)["text"] == "a c b"  # the utterance the reset ended, with what was pending
    assert sent(adapter.receive(b"\x00\x00")) == [{"partial": ""}]


@pytest.mark.parametrize("first, then, code", [
    (b"\x00\x00\x00", None, ErrorCode.BAD_AUDIO),  # half a sample
    ("[" * 3000, None, ErrorCode.BAD_MESSAGE),
    ('{"eof" : 2}', None, ErrorCode.BAD_MESSAGE),
    ("hello", None, ErrorCode.BAD_MESSAGE),
    ('{"config": {"sample_rate": "16k"}}', None, ErrorCode.BAD_CONFIG),
    ('{"config": {"sample_rate": 16000.5}}', None, ErrorCode.BAD_CONFIG),
    ('{"config": {"sample_rate": NaN}}', None, ErrorCode.BAD_CONFIG),  # Python's json reads NaN
    ('{"config": {"sample_rate": 1%s}}' % ("0" * 400), None, ErrorCode.BAD_CONFIG),
    ('{"config": {"sample_rate": 100}}', None, ErrorCode.BAD_CONFIG),
    ('{"config": {"max_alternatives": 3}}', None, ErrorCode.BAD_CONFIG),
    (b"\x00\x00", '{"config": {"sample_rate": 16000}}', ErrorCode.BAD_CONFIG),  # config after audio
])
def test_vosk_mistakes_close_with_a_code_and_reason(first: str | bytes, then: str | None, code: ErrorCode):
    adapter = VoskAdapter(connection("/"), MODEL)
    with pytest.raises(ProtocolError) as raised:
        adapter.receive(first)
        adapter.receive(then)
    assert raised.value.code is code
    closing = adapter.closing(raised.value, Summary("s1", 0.0, 0))
    assert closing.frames == [] and closing.code == code.close_code
    assert closing.reason.startswith(code.value) and len(closing.reason.encode()) <= 123


def test_vosk_audio_received_before_a_mistake_gets_its_final_result():
    adapter = VoskAdapter(connection("/"), MODEL)
    adapter.receive(b"\x00\x00")
    with pytest.raises(ProtocolError) as raised:
        adapter.receive("not json")
    adapter.event(Final(utterance(0, "a c"), "error", 1.0))  # the core ends the stream first
    closing = adapter.closing(raised.value, Summary("s1", 1.0, 1))
    assert json.loads(closing.frames[0])["text"] == "a c" and closing.code == ErrorCode.BAD_MESSAGE.close_code


# ---------------------------------------------------------------------- sherpa-onnx
def test_sherpa_stream_starts_on_connect_float32_16k():
    adapter = SherpaAdapter(connection("/?chunk_ms=80"), MODEL)
    [start] = adapter.opening()
    config = start.config
    assert (config.encoding, config.sample_rate, config.chunk_ms) == ("f32le", 16000, 80)
    assert config.endpointing.enabled and config.partials
    assert adapter.receive(b"\x00" * 8) == [Audio(b"\x00" * 8)]
    assert adapter.receive("Done") == [End()]


def test_sherpa_results_per_step_final_at_endpoint_and_eof_then_done():
    adapter = SherpaAdapter(connection("/"), MODEL)
    adapter.opening()
    [interim] = frames(adapter, Partial(0, "a c", [], [], 1.0))
    assert (interim["text"], interim["segment"], interim["is_final"], interim["is_eof"]) == ("a c", 0, False, False)
    assert interim["tokens"] == interim["timestamps"] == interim["ys_probs"] == []
    [final] = frames(adapter, Final(utterance(0, "a c"), "endpoint", 1.0))
    assert (final["text"], final["segment"], final["is_final"], final["is_eof"]) == ("a c", 0, True, False)
    assert final["tokens"] == ["a", "c"] and final["timestamps"] == [0.0, 0.1]
    assert final["ys_probs"] == [pytest.approx(math.log(0.9), abs=1e-6)] * 2
    [interim] = frames(adapter, Partial(1, "b", [], [], 1.5))
    assert (interim["segment"], interim["start_time"]) == (1, 1.0)
    [last] = frames(adapter, Final(utterance(1, "b d", start=1.0), "eof", 2.0))
    assert (last["segment"], last["start_time"], last["is_final"], last["is_eof"]) == (1, 1.0, True, True)
    assert last["timestamps"] == [0.0, 0.1]  # from the segment's start_time
    assert set(last) == {"text", "tokens", "timestamps", "ys_probs", "lm_probs", "context_scores", "segment",
                         "words", "start_time", "is_final", "is_eof"}
    assert adapter.closing(None, Summary("s1", 2.0, 2)).frames == ["Done!"]


@pytest.mark.parametrize("ending, frames_sent, code", [
    (ProtocolError(ErrorCode.SHUTTING_DOWN, "bye"), ["Done!"], 1001),
    (ProtocolError(ErrorCode.BAD_MESSAGE, "expected float32 audio"), [], ErrorCode.BAD_MESSAGE.close_code),
])
def test_sherpa_endings(ending: ProtocolError, frames_sent: list[str], code: int):
    closing = SherpaAdapter(connection("/"), MODEL).closing(ending, Summary("s1", 1.0, 1))
    assert closing.frames == frames_sent and closing.code == code
    assert closing.reason == f"{ending.code.value}: {ending.message}"


def test_sherpa_text_other_than_done_is_refused():
    with pytest.raises(ProtocolError) as raised:
        SherpaAdapter(connection("/"), MODEL).receive("done")
    assert raised.value.code is ErrorCode.BAD_MESSAGE
