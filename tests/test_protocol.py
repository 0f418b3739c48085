"""Message parsing and building (streamd.server.protocols.native) against docs/protocol.md; no model, no server."""

from __future__ import annotations

import json

import pytest

from streamd.engine.decoding import Word
from streamd.engine.stream import Utterance
from streamd.server.protocols import native as protocol
from streamd.server.wire import ErrorCode, ModelInfo, ProtocolError

SIZES = [(70, 13), (70, 6), (70, 1), (70, 0)]
MODEL = ModelInfo.describe("tones", 16000, SIZES, frame_s=0.08, default_chunk_ms=1120)


def test_model_chunk_sizes_follow_the_right_context():
    assert MODEL.chunk_sizes == {80: (70, 0), 160: (70, 1), 560: (70, 6), 1120: (70, 13)}
    assert MODEL.to_dict() == {"name": "tones", "sample_rate": 16000, "chunk_ms": [80, 160, 560, 1120]}
    with pytest.raises(ValueError, match="default_chunk_ms=100"):
        ModelInfo.describe("tones", 16000, SIZES, frame_s=0.08, default_chunk_ms=100)


def test_empty_config_fills_every_default():
    config = protocol.parse_config({}, MODEL)
    assert config.to_dict() == {
        "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, "chunk_ms": 1120,
        "att_context_size": [70, 13], "word_timestamps": True, "partials": True,
        "endpointing": {"enabled": False, "silence_ms": 800},
    }


def test_config_fields_are_applied():
    config = protocol.parse_config({
        "sample_rate": 48000, "encoding": "f32le", "channels": 2, "chunk_ms": 560, "word_timestamps": False,
        "partials": False, "endpointing": {"enabled": True},
    }, MODEL)
    assert (config.sample_rate, config.encoding, config.channels) == (48000, "f32le", 2)
    assert (config.chunk_ms, config.att_context_size) == (560, (70, 6))
    assert not config.word_timestamps and not config.partials
    assert config.endpointing.enabled and config.endpointing.silence_ms == 800
    assert config.pcm_format.frame_bytes == 8


def test_att_context_size_selects_the_chunk():
    config = protocol.parse_config({"att_context_size": [70, 1]}, MODEL)
    assert (config.chunk_ms, config.att_context_size) == (160, (70, 1))


@pytest.mark.parametrize("fields, fragment", [
    ({"bogus": 1}, "unknown config field"),
    ({"sample_rate": "16000"}, "sample_rate must be int"),
    ({"sample_rate": 4000}, "sample_rate"),
    ({"sample_rate": True}, "sample_rate must be int"),
    ({"encoding": "mp3"}, "encoding"),
    ({"channels": 9}, "channels"),
    ({"chunk_ms": 100}, "chunk_ms 100 not supported"),
    ({"att_context_size": [70, 2]}, "not supported"),
    ({"att_context_size": "70,13"}, "att_context_size must be"),
    ({"chunk_ms": 80, "att_context_size": [70, 0]}, "not both"),
    ({"partials": 1}, "partials must be bool"),
    ({"endpointing": True}, "endpointing must be dict"),
    ({"endpointing": {"enabled": True, "silence": 5}}, "unknown endpointing field"),
    ({"endpointing": {"silence_ms": 10}}, "silence_ms"),
])
def test_bad_configs_are_refused(fields, fragment):
    with pytest.raises(ProtocolError, match=fragment) as info:
        protocol.parse_config(fields, MODEL)
    assert info.value.code is ErrorCode.BAD_CONFIG


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '"config"', '{"type": "bogus"}', '{"x": 1}', "{}"])
def test_bad_client_messages_are_bad_message(text):
    with pytest.raises(ProtocolError) as info:
        protocol.parse_client_message(text)
    assert info.value.code is ErrorCode.BAD_MESSAGE


def test_client_messages_round_trip():
    parsed = protocol.parse_client_message(protocol.config(sample_rate=8000, chunk_ms=80))
    assert (parsed.type, parsed.fields) == ("config", {"sample_rate": 8000, "chunk_ms": 80})
    assert protocol.parse_client_message(protocol.eof()).type == "eof"
    assert protocol.parse_client_message(protocol.finalize()).type == "finalize"


def test_close_codes_match_the_table():
    table = {"shutting_down": 1001, "bad_message": 4000, "bad_config": 4001, "audio_before_config": 4002,
             "bad_audio": 4003, "message_too_big": 1009, "idle_timeout": 4008, "max_session": 4009,
             "config_timeout": 4010, "slow_reader": 4012, "internal_error": 1011}
    assert {code.value: code.close_code for code in ErrorCode} == table


def test_final_has_the_documented_fields():
    words = [Word("a", 0.16, 0.24), Word("c", 0.64, 0.72)]
    utterance = Utterance(index=2, text="a c", tokens=[5, 9], words=words, start=0.0, end=1.2, reason="eof")
    final = json.loads(protocol.final(utterance, "shutdown", word_timestamps=True))
    assert final == {
        "type": "final", "utterance": 2, "text": "a c", "tokens": [5, 9],
        "words": [{"word": "a", "start": 0.16, "end": 0.24}, {"word": "c", "start": 0.64, "end": 0.72}],
        "start": 0.0, "end": 1.2, "reason": "shutdown",
    }
    assert "words" not in json.loads(protocol.final(utterance, "eof", word_timestamps=False))


def test_other_server_messages_have_the_documented_fields():
    partial = protocol.parse_server_message(protocol.partial(0, "a", [5], 2.23999))
    assert partial == {"type": "partial", "utterance": 0, "text": "a", "tokens": [5], "audio_seconds": 2.24}
    ready = json.loads(protocol.ready("s1", protocol.parse_config({}, MODEL), MODEL))
    assert (ready["type"], ready["session_id"]) == ("ready", "s1")
    assert ready["model"]["chunk_ms"] == [80, 160, 560, 1120]
    done = json.loads(protocol.done("s1", 1.23456, 3))
    assert done == {"type": "done", "session_id": "s1", "audio_seconds": 1.235, "utterances": 3}
    error = json.loads(protocol.error(ErrorCode.BAD_AUDIO, "odd"))
    assert error == {"type": "error", "code": "bad_audio", "message": "odd"}
    with pytest.raises(ValueError):
        protocol.parse_server_message('{"type": "surprise"}')
