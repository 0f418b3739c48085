"""Streaming engine on the trained tone model: streaming == offline == the letters played."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from streamd.engine.engine import StreamingEngine
from streamd.engine.offline import encode_offline, transcribe_offline
from streamd.engine.stream import StreamOptions
from streamd.models import tones
from streamd.models.architectures import ATT_CONTEXT_SIZES
from streamd.transcribe import transcribe_streaming

CHUNK_SAMPLES = {size: (size[1] + 1) * 1280 for size in ATT_CONTEXT_SIZES}  # (R+1) x 80 ms at 16 kHz


def fresh_sequences(rng: np.random.Generator, size: tuple[int, int], count: int) -> list[tones.ToneSequence]:
    """Random 1-6 letter sequences; lengths never a whole number of chunks; one shorter than a chunk."""
    sequences = [tones.synthesize(tones.random_letters(rng, 1, 1), rng, tone_s=(0.15, 0.2), gap_s=(0.05, 0.1))]
    while len(sequences) < count:
        seq = tones.random_sequence(rng)
        if len(seq.audio) % CHUNK_SAMPLES[size]:
            sequences.append(seq)
    return sequences


@pytest.mark.parametrize("size", ATT_CONTEXT_SIZES, ids=lambda s: f"att{s[0]}-{s[1]}")
def test_streaming_equals_offline_and_the_played_letters(tone_model, rng, size):
    sequences = fresh_sequences(rng, size, 10)
    if size == (70, 13):
        assert len(sequences[0].audio) < CHUNK_SAMPLES[size]
    offline = transcribe_offline(tone_model, [s.audio for s in sequences], size)
    engine = StreamingEngine(tone_model, max_batch=16, max_streams=16)
    streaming = transcribe_streaming(engine, [s.audio for s in sequences], StreamOptions(att_context_size=size))
    for seq, off, stream in zip(sequences, offline, streaming):
        assert stream.tokens == off.tokens, f"{seq.letters}: streaming {stream.text!r} offline {off.text!r}"
        assert stream.text == seq.text
    assert not engine.streams, "finished streams must leave the engine"


def test_staggered_batched_streams_equal_each_stream_alone(tone_model, rng):
    """8 streams joining at different steps, mixed chunk sizes, uneven feeding: same tokens as alone."""
    sequences = [tones.random_sequence(rng, 3, 6) for _ in range(8)]
    sizes = [ATT_CONTEXT_SIZES[i % 4] for i in range(8)]
    alone = []
    for seq, size in zip(sequences, sizes):
        engine = StreamingEngine(tone_model, max_streams=1)
        alone.append(transcribe_streaming(engine, [seq.audio], StreamOptions(att_context_size=size))[0])

    engine = StreamingEngine(tone_model, max_batch=8, max_streams=8)
    ids: dict[int, int] = {}
    cursor = [0] * 8
    finals: dict[int, list[int]] = {}
    step = 0
    while len(finals) < 8:
        for k in range(8):
            if k not in ids and step >= 2 * k:  # stream k joins at step 2k
                ids[k] = engine.open_stream(StreamOptions(att_context_size=sizes[k]))
            if k in ids and cursor[k] <= len(sequences[k].audio) and k not in finals:
                piece = int(rng.integers(400, 6000))
                engine.push_audio(ids[k], sequences[k].audio[cursor[k] : cursor[k] + piece])
                cursor[k] += piece
                if cursor[k] >= len(sequences[k].audio) and ids[k] in engine.streams and not engine.streams[ids[k]].eof:
                    engine.end_stream(ids[k])
        for update in engine.step():
            if update.finished:
                k = next(k for k, i in ids.items() if i == update.stream_id)
                finals[k] = update.finals[-1].tokens
        step += 1
        assert step < 2000
    for k in range(8):
        assert finals[k] == alone[k].tokens, f"stream {k} ({sizes[k]}) differs when batched"
        assert alone[k].text == sequences[k].text


@pytest.mark.parametrize("size", [(70, 1), (70, 13)], ids=lambda s: f"att{s[0]}-{s[1]}")
def test_audio_sent_in_bulk_is_featurized_a_chunk_per_step(tone_model, rng, size):
    """A client that uploads a recording at once must not have all of it featurized in one step
    (a stall for every stream batched with it, and memory growing with the upload): each step
    featurizes at most what the stream's next chunk takes, and the transcript is still the
    offline one."""
    seq = tones.random_sequence(rng, 6, 6)
    offline = transcribe_offline(tone_model, [seq.audio], size)[0]
    engine = StreamingEngine(tone_model, max_streams=1)
    stream_id = engine.open_stream(StreamOptions(att_context_size=size, word_timestamps=False))
    engine.push_audio(stream_id, seq.audio)
    engine.end_stream(stream_id)
    chunk_frames = CHUNK_SAMPLES[size] // 160  # mel frames of a steady chunk (10 ms hop)
    tokens, steps = [], 0
    while stream_id in engine.streams:
        before = engine.streams[stream_id].features.frames_done
        updates = engine.step()
        if stream_id in engine.streams:
            assert engine.streams[stream_id].features.frames_done - before <= chunk_frames
        tokens += [t for u in updates for final in u.finals for t in final.tokens]
        steps += 1
    assert steps >= len(seq.audio) // CHUNK_SAMPLES[size], "one chunk per step"
    assert tokens == offline.tokens and offline.text == seq.text


def test_a_reused_slot_starts_each_stream_from_scratch(tone_model, rng):
    """Streams that follow one another through an engine's only slot (decoder state and frame
    count live in slot rows): each hears its own letters, its word times lie inside its own audio,
    and both equal the same stream's in a fresh engine."""
    options = StreamOptions(att_context_size=(70, 1))
    shared = StreamingEngine(tone_model, max_streams=1)
    for seq in [tones.random_sequence(rng, 3, 6) for _ in range(3)]:
        reused = transcribe_streaming(shared, [seq.audio], options)[0]
        alone = transcribe_streaming(StreamingEngine(tone_model, max_streams=1), [seq.audio], options)[0]
        assert reused.text == seq.text
        assert len(reused.words) == len(seq.letters)
        assert all(0 <= w.start < w.end <= len(seq.audio) / tones.SAMPLE_RATE + 0.08 for w in reused.words)
        assert (reused.tokens, reused.words) == (alone.tokens, alone.words)


def test_a_caller_may_refill_its_audio_buffer_after_each_push(tone_model, rng):
    """Pushed audio waits in the engine until the next feature extraction: a caller that refills
    one buffer for every frame (as audio callbacks do) must still be heard as sent."""
    seq = tones.random_sequence(rng, 3, 6)
    engine = StreamingEngine(tone_model, max_streams=1)
    stream_id = engine.open_stream(StreamOptions(att_context_size=(70, 1)))
    frame = np.empty(320, np.float32)  # 20 ms, reused
    for start in range(0, len(seq.audio), len(frame)):
        piece = seq.audio[start : start + len(frame)]
        frame[: len(piece)] = piece
        engine.push_audio(stream_id, frame[: len(piece)])
    engine.end_stream(stream_id)
    finals = []
    while stream_id in engine.streams:
        finals += [u for update in engine.step() for u in update.finals]
    assert " ".join(u.text for u in finals if u.text) == seq.text


def test_streaming_encoder_frames_match_offline_and_report(tone_model, rng, tmp_path):
    """Report how close streaming encoder frames are to offline ones (the docs quote it)."""
    sequences = [tones.random_sequence(rng, 4, 6) for _ in range(4)]
    report = {}
    for size in ATT_CONTEXT_SIZES:
        engine = StreamingEngine(tone_model, max_streams=4, record_encoder_output=True)
        transcribe_streaming(engine, [s.audio for s in sequences], StreamOptions(att_context_size=size))
        _, _, encoded, encoded_len = encode_offline(tone_model, [s.audio for s in sequences], size)
        worst, first_chunk = 0.0, 0.0
        for k, stream_id in enumerate(sorted(engine.encoder_outputs)):
            chunks = engine.encoder_outputs[stream_id]
            streamed = torch.cat(chunks, dim=1)
            reference = encoded[k, :, : int(encoded_len[k])].float()
            assert streamed.shape == reference.shape
            worst = max(worst, (streamed - reference).abs().max().item())
            n = chunks[0].shape[1]
            first_chunk = max(first_chunk, (streamed[:, :n] - reference[:, :n]).abs().max().item())
        report[f"{size[0]},{size[1]}"] = {"max_abs_diff": worst, "first_chunk_max_abs_diff": first_chunk}
        # Exact up to float rounding (a different batch shape changes summation order only).
        assert worst < 1e-4, report
    (tmp_path / "encoder_closeness.json").write_text(json.dumps(report, indent=1))
    print("streaming vs offline encoder frames:", json.dumps(report))


def test_nan_audio_is_refused_and_other_streams_are_unaffected(tone_model, rng):
    seq = tones.random_sequence(rng, 2, 4)
    engine = StreamingEngine(tone_model, max_streams=2)
    good = engine.open_stream(StreamOptions())
    bad = engine.open_stream(StreamOptions())
    engine.push_audio(good, seq.audio)
    poisoned = seq.audio.copy()
    poisoned[100] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        engine.push_audio(bad, poisoned)
    engine.close_stream(bad)
    engine.end_stream(good)
    finals = []
    while good in engine.streams:
        finals += [u for u in engine.step() if u.stream_id == good and u.finished]
    assert finals[0].finals[-1].text == seq.text


def run_to_the_end(engine: StreamingEngine, ids: list[int], sequences: list[tones.ToneSequence]
                   ) -> tuple[dict[int, str], dict[int, str]]:
    """Push each sequence whole, end the streams, step until none is left: finals, failures."""
    for stream_id, seq in zip(ids, sequences):
        engine.push_audio(stream_id, seq.audio)
        engine.end_stream(stream_id)
    updates = []
    while engine.streams:
        updates += engine.step()
    finals = {u.stream_id: u.finals[-1].text for u in updates if u.finished}
    return finals, {u.stream_id: u.failure for u in updates if u.failure is not None}


def test_a_failing_batch_drops_its_streams_and_the_other_chunk_sizes_go_on(tone_model, rng, monkeypatch):
    # A fault injected into one chunk size's batch stands in for a bug no input is known to cause.
    faulty, good = ATT_CONTEXT_SIZES[1], ATT_CONTEXT_SIZES[3]
    engine = StreamingEngine(tone_model, max_streams=4)
    run_group = engine._run_group

    def run_group_or_fail(size, *args):
        if size == faulty:
            raise RuntimeError("injected batch fault")
        run_group(size, *args)

    monkeypatch.setattr(engine, "_run_group", run_group_or_fail)
    sequences = [tones.random_sequence(rng, 2, 4) for _ in range(4)]
    ids = [engine.open_stream(StreamOptions(att_context_size=size)) for size in (faulty, faulty, good, good)]
    finals, failures = run_to_the_end(engine, ids, sequences)
    assert set(failures) == set(ids[:2]) and all("injected batch fault" in f for f in failures.values())
    assert finals == {ids[2]: sequences[2].text, ids[3]: sequences[3].text}
    # Their slots are free again: with the fault gone, four new streams fit and the faulty size works.
    monkeypatch.undo()
    again = tones.random_sequence(rng, 2, 4)
    assert transcribe_streaming(engine, [again.audio] * 4, StreamOptions(att_context_size=faulty))[0].text == again.text


@pytest.mark.parametrize("fault", ["one stream", "batches of several"])
def test_a_failed_model_call_is_retried_in_halves_and_drops_only_a_stream_that_fails_alone(
        tone_model, rng, monkeypatch, fault):
    # The fault is injected after both model calls ran, just before the new caches are stored:
    # the retried halves must start from unchanged streams (frames, caches, decoder states), or
    # the letters would come out wrong. "batches of several" stands for a batch too large for the
    # device's memory; "one stream" for a bug one stream's data causes.
    engine = StreamingEngine(tone_model, max_batch=8, max_streams=6)
    sequences = [tones.random_sequence(rng, 2, 4) for _ in range(6)]
    ids = [engine.open_stream(StreamOptions(att_context_size=size)) for size in [(70, 1)] * 3 + [(70, 6)] * 3]
    decode = engine.decoder_states.decode

    def decode_or_fail(encoded, lengths, slots, first):
        decoded = decode(encoded, lengths, slots, first)
        holds_faulty = engine.contexts.streamidx2slotidx.get(ids[1]) in slots.tolist()
        if holds_faulty if fault == "one stream" else len(slots) > 1:
            raise RuntimeError("injected model fault")
        return decoded

    monkeypatch.setattr(engine.decoder_states, "decode", decode_or_fail)
    finals, failures = run_to_the_end(engine, ids, sequences)
    dropped = [ids[1]] if fault == "one stream" else []
    assert set(failures) == set(dropped) and all("injected model fault" in f for f in failures.values())
    assert finals == {i: seq.text for i, seq in zip(ids, sequences) if i not in dropped}
    assert not engine.contexts.streamidx2slotidx, "every cache slot is free again, the dropped stream's too"


def test_a_fault_while_writing_a_groups_states_drops_the_whole_group(tone_model, rng, monkeypatch):
    # The fault is injected after the group's new caches were stored, before its decoder states
    # are: its streams hold half a step, and running their chunk again (as a retry in halves
    # would) decodes from the wrong context. The group ends; another chunk size's group goes on.
    engine = StreamingEngine(tone_model, max_batch=8, max_streams=6)
    sequences = [tones.random_sequence(rng, 2, 4) for _ in range(6)]
    ids = [engine.open_stream(StreamOptions(att_context_size=size)) for size in [(70, 1)] * 3 + [(70, 6)] * 3]
    commit = engine.decoder_states.commit

    def commit_or_fail(slots, decoded):
        if engine.contexts.streamidx2slotidx.get(ids[1]) in slots.tolist():
            raise RuntimeError("injected write fault")
        commit(slots, decoded)

    monkeypatch.setattr(engine.decoder_states, "commit", commit_or_fail)
    finals, failures = run_to_the_end(engine, ids, sequences)
    assert set(failures) == set(ids[:3]) and all("injected write fault" in f for f in failures.values())
    assert finals == {i: seq.text for i, seq in zip(ids[3:], sequences[3:])}
    assert not engine.contexts.streamidx2slotidx, "every cache slot is free again"


@pytest.mark.parametrize("fault", ["one stream", "batches of several"])
def test_a_feature_fault_drops_only_the_stream_it_belongs_to(tone_model, rng, monkeypatch, fault):
    # Injected faults stand in for bugs no input is known to cause. "batches of several" fails
    # the batched featurizer call alone (as running out of device memory would), inside the
    # extraction: every stream must get through one by one, without losing audio.
    engine = StreamingEngine(tone_model, max_streams=4)
    sequences = [tones.random_sequence(rng, 2, 4) for _ in range(4)]
    ids = [engine.open_stream(StreamOptions(att_context_size=size)) for size in ATT_CONTEXT_SIZES]
    if fault == "one stream":
        faulty_state, extract = engine.streams[ids[1]].features, engine.features.extract

        def extract_or_fail(states, finals, limits):
            if any(state is faulty_state for state in states):
                raise RuntimeError("injected feature fault")
            return extract(states, finals, limits)

        monkeypatch.setattr(engine.features, "extract", extract_or_fail)
    else:
        assert engine.features.uses_own_log_mel
        log_mel = engine.features.log_mel

        def log_mel_or_fail(audio, lengths):
            if audio.shape[0] > 1:
                raise RuntimeError("injected feature fault")
            return log_mel(audio, lengths)

        monkeypatch.setattr(engine.features, "log_mel", log_mel_or_fail)
    finals, failures = run_to_the_end(engine, ids, sequences)
    dropped = [ids[1]] if fault == "one stream" else []
    assert set(failures) == set(dropped) and all("injected feature fault" in f for f in failures.values())
    assert finals == {i: seq.text for i, seq in zip(ids, sequences) if i not in dropped}


def test_a_transcript_fault_drops_only_its_stream(tone_model, rng, monkeypatch):
    engine = StreamingEngine(tone_model, max_streams=3)
    sequences = [tones.random_sequence(rng, 2, 4) for _ in range(3)]
    ids = [engine.open_stream(StreamOptions(att_context_size=(70, 1))) for _ in sequences]
    set_partial = engine._set_partial

    def set_partial_or_fail(stream, update):
        if stream.stream_id == ids[0]:
            raise RuntimeError("injected transcript fault")
        set_partial(stream, update)

    monkeypatch.setattr(engine, "_set_partial", set_partial_or_fail)
    finals, failures = run_to_the_end(engine, ids, sequences)
    assert set(failures) == {ids[0]} and "injected transcript fault" in failures[ids[0]]
    assert finals == {ids[1]: sequences[1].text, ids[2]: sequences[2].text}
    assert not engine.contexts.streamidx2slotidx, "every cache slot is free again, the dropped stream's too"


@pytest.mark.parametrize("finalize", [False, True], ids=["end", "finalize-then-end"])
def test_empty_and_tiny_audio_give_one_empty_final(tone_model, finalize):
    engine = StreamingEngine(tone_model, max_streams=2)
    empty = engine.open_stream(StreamOptions(att_context_size=(70, 0)))
    tiny = engine.open_stream(StreamOptions(att_context_size=(70, 0)))
    engine.push_audio(tiny, np.zeros(100, np.float32))  # less than one feature frame
    for stream_id in (empty, tiny):
        if finalize:  # a finalize and the end in one step: the end's final is the only one
            engine.finalize(stream_id)
        engine.end_stream(stream_id)
    updates = {u.stream_id: u for u in engine.step()}
    for stream_id in (empty, tiny):
        assert updates[stream_id].finished
        assert [(f.text, f.reason) for f in updates[stream_id].finals] == [("", "eof")]
    assert not engine.has_work() and not engine.streams


def test_unsupported_att_context_size_is_a_clear_error(tone_model):
    engine = StreamingEngine(tone_model, max_streams=1)
    with pytest.raises(ValueError, match="not supported"):
        engine.open_stream(StreamOptions(att_context_size=(70, 3)))


def test_endpointing_splits_utterances_at_silence(tone_model, rng):
    first = tones.synthesize("abc", rng, gap_s=(0.05, 0.1))
    second = tones.synthesize("hg", rng, gap_s=(0.05, 0.1))
    audio = np.concatenate([first.audio, np.zeros(16000 * 2, np.float32), second.audio])
    from streamd.engine.endpointing import EndpointingOptions

    options = StreamOptions(att_context_size=(70, 1), endpointing=EndpointingOptions(True, 800))
    engine = StreamingEngine(tone_model, max_streams=1)
    stream_id = engine.open_stream(options)
    engine.push_audio(stream_id, audio)
    engine.end_stream(stream_id)
    finals = []
    while stream_id in engine.streams:
        for update in engine.step():
            finals += update.finals
    texts = [f.text for f in finals if f.text]
    assert texts == [first.text, second.text]
    assert finals[0].reason == "endpoint"
    assert finals[0].end <= finals[1].start + 1e-6


def test_decoder_cuda_graphs_switch_reaches_nemo_and_decoding_still_hears_the_letters(tone_model_path, rng):
    from streamd.engine.loading import prepare_model

    model = prepare_model(str(tone_model_path), "cpu", decoder_cuda_graphs=False)
    assert model.cfg.decoding.greedy.use_cuda_graph_decoder is False
    sequences = fresh_sequences(rng, (70, 6), 4)
    engine = StreamingEngine(model, max_batch=4, max_streams=4)
    streaming = transcribe_streaming(engine, [s.audio for s in sequences], StreamOptions(att_context_size=(70, 6)))
    assert [s.text for s in streaming] == [seq.text for seq in sequences]


def test_the_cuda_graph_decoders_own_code_path_hears_the_letters(tone_model_path, rng, monkeypatch):
    """On CUDA NeMo's label-looping decoder runs ``cuda_graphs_impl``: static buffers as large as the
    largest batch seen, so a smaller group gets a padded state back (the engine keeps its own
    rows). Its graph-less mode runs that code on the CPU; streams of different lengths make the
    groups shrink step by step."""
    from streamd.engine.loading import load_model

    model = load_model(str(tone_model_path))
    engine = StreamingEngine(model, max_batch=8, max_streams=8)  # sets the decoding it streams with
    computer = model.decoding.decoding.decoding_computer
    computer.force_cuda_graphs_mode("no_graphs")

    def cuda_path(self, x, out_len, prev_batched_state=None, multi_biasing_ids=None):  # what a CUDA tensor takes
        return self.cuda_graphs_impl(x, out_len, prev_batched_state, multi_biasing_ids)

    monkeypatch.setattr(type(computer), "__call__", cuda_path)
    sequences = [tones.random_sequence(rng, 1, 7) for _ in range(6)]
    streaming = transcribe_streaming(engine, [s.audio for s in sequences], StreamOptions(att_context_size=(70, 1)))
    assert [s.text for s in streaming] == [seq.text for seq in sequences]
    assert computer.state.batch_size == len(sequences)  # the padded path ran


def test_a_model_set_to_per_utterance_greedy_decoding_is_switched_to_label_looping(tone_model_path, rng):
    from omegaconf import open_dict

    from streamd.engine.loading import load_model

    model = load_model(str(tone_model_path))
    decoding = model.cfg.decoding.copy()
    with open_dict(decoding):
        decoding.strategy = "greedy"  # NeMo's one-utterance-at-a-time loop, which streams cannot share
    model.change_decoding_strategy(decoding, verbose=False)
    engine = StreamingEngine(model, max_batch=4, max_streams=4)
    assert model.cfg.decoding.strategy == "greedy_batch" and model.cfg.decoding.greedy.loop_labels
    sequences = fresh_sequences(rng, (70, 1), 4)
    streaming = transcribe_streaming(engine, [s.audio for s in sequences], StreamOptions(att_context_size=(70, 1)))
    assert [s.text for s in streaming] == [seq.text for seq in sequences]


def test_own_log_mel_equals_nemo_featurizer_bit_for_bit(tone_model, rng):
    from streamd.engine.features import FeatureExtractor

    extractor = FeatureExtractor(tone_model.preprocessor, torch.device("cpu"))
    assert extractor.uses_own_log_mel
    lengths = [16000, 9731, 161]  # the shorter rows are zero-padded, as in a step's batch
    audio = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        audio[i, :n] = torch.from_numpy(tones.random_sequence(rng).audio[:n])
    with torch.inference_mode():
        theirs, frames = tone_model.preprocessor.featurizer(audio, torch.tensor(lengths))
        ours = extractor.log_mel(audio, torch.tensor(lengths))
    for i, n in enumerate(frames.tolist()):
        assert n > 0 and torch.equal(ours[i, :, :n], theirs[i, :, :n])
    tone_model.preprocessor.featurizer.train()  # training adds dither: NeMo's own forward then
    try:
        assert not extractor.uses_own_log_mel
    finally:
        tone_model.preprocessor.featurizer.eval()
