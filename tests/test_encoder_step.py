"""The encoder step's graph path: batch buckets, and padded static buffers equal to eager steps.

CUDA graphs themselves need a GPU (bench/device_check.py runs the tone model through them); here
the same padded static-buffer path runs without capture on the CPU, on the trained tone model.
"""

from __future__ import annotations

import numpy as np

from streamd.engine.encoder_step import bucket, buckets_up_to, encoder_step
from streamd.engine.engine import StreamingEngine
from streamd.engine.stream import StreamOptions
from streamd.models import tones
from streamd.models.architectures import ATT_CONTEXT_SIZES
from streamd.transcribe import transcribe_streaming


def test_buckets_hold_the_batch_with_at_most_a_third_padding_beyond_16():
    for batch in range(1, 3000):
        rows = bucket(batch)
        assert rows >= batch
        if batch > 16:
            assert (rows - batch) / rows < 1 / 3, batch
        assert bucket(rows) == rows  # a bucket pads to itself
    assert buckets_up_to(2048)[0] == 2048
    assert set(buckets_up_to(2048)) == {bucket(b) for b in range(1, 2049)}
    assert len(buckets_up_to(2048)) <= 20  # graphs to capture per chunk size


def test_padded_static_buffer_path_on_cpu_no_cuda_capture_equals_eager_and_hears_the_letters(tone_model, rng):
    """Streams of several lengths (the batch shrinks as they end: several buckets), first a few
    then more (the buffers grow): the same tokens as eager steps, and the letters played."""
    step = encoder_step(tone_model)
    sequences = [tones.random_sequence(rng, 2, 7) for _ in range(11)]
    try:
        for size in ATT_CONTEXT_SIZES:
            options = StreamOptions(att_context_size=size)
            step.static_buffers = False
            eager = transcribe_streaming(StreamingEngine(tone_model, max_batch=16, max_streams=16),
                                         [s.audio for s in sequences], options)
            step.static_buffers = True
            few = transcribe_streaming(StreamingEngine(tone_model, max_batch=16, max_streams=16),
                                       [s.audio for s in sequences[:3]], options)
            assert step.graphs_captured > 0, "the static-buffer path was not taken"
            many = transcribe_streaming(StreamingEngine(tone_model, max_batch=16, max_streams=16),
                                        [s.audio for s in sequences], options)
            for seq, expected, got in zip(sequences, eager, few + many[3:]):
                assert got.tokens == expected.tokens, f"{size} {seq.letters}: {got.text!r} vs eager {expected.text!r}"
                assert got.text == seq.text
            assert [m.tokens for m in many[:3]] == [e.tokens for e in eager[:3]]
    finally:
        step.static_buffers = False


def test_encoder_cuda_graphs_asked_of_a_cpu_model_stay_off_and_eager(tone_model):
    step = encoder_step(tone_model)
    step.set_cuda_graphs(True)
    assert step.cuda_graphs is False
    engine = StreamingEngine(tone_model, max_batch=4, max_streams=4)
    assert engine.capture_encoder_graphs() == 0
    audio = tones.random_sequence(np.random.default_rng(3), 2, 3)
    assert transcribe_streaming(engine, [audio.audio], StreamOptions())[0].text == audio.text
