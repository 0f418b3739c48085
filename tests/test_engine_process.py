"""The engine process's shared audio buffer (both ends in this process) and the updates that cross
its pipe (the server tests run the whole engine process: tests/test_server.py)."""

from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np

from streamd.engine.decoding import Word
from streamd.engine.engine_process import MIN_AUDIO_BUFFER_BYTES, AudioIn, AudioOut
from streamd.engine.stream import StreamUpdate, Utterance
from streamd.engine.worker import StreamCommand


def test_pushed_samples_arrive_intact_across_calls_and_buffer_growth():
    rng = np.random.default_rng(0)
    out, into = AudioOut(), AudioIn()
    big = MIN_AUDIO_BUFFER_BYTES // 4 + 1000  # one frame larger than the first buffer: it must grow
    calls = [[160, 2560, 17920], [big, 3], [2560] * 40, []]
    grew = []
    for lengths in calls:
        frames = [rng.standard_normal(n).astype(np.float32) for n in lengths]
        commands = [(StreamCommand.PUSH_AUDIO, i, (frame,)) for i, frame in enumerate(frames)]
        commands.insert(1, (StreamCommand.END, 99, ()))  # other commands pass through, in order
        packed, new_fd = out.pack(commands)
        grew.append(new_fd is not None)
        if new_fd is not None:
            into.attach(os.dup(new_fd))
            os.close(new_fd)
        assert all(isinstance(arg, int) for command, _, args in packed if command is StreamCommand.PUSH_AUDIO
                   for arg in args)
        received = into.unpack(packed)
        assert [(command, stream_id) for command, stream_id, _ in received] == [(c, s) for c, s, _ in commands]
        for (command, _, args), (_, _, sent) in zip(received, commands, strict=True):
            if command is StreamCommand.PUSH_AUDIO:
                np.testing.assert_array_equal(args[0], sent[0])
            else:
                assert args == sent
    assert grew == [True, True, False, False]


def test_updates_cross_the_pipe_field_for_field():
    """Updates, their finals and words pickle by position (faster than by state dict): a field
    out of order would land in another field, and a field added later would be lost."""
    word = Word("caffe", 0.25, 0.75)
    final = Utterance(3, "caffe", [7, 8], [word], 0.125, 1.5, "endpoint")
    update = StreamUpdate(11, partial="ca", partial_tokens=[5, 6], finals=[final], finished=True,
                          audio_seconds=2.5, failure="RuntimeError: boom")
    copied = pickle.loads(pickle.dumps([update], pickle.HIGHEST_PROTOCOL))[0]
    for original, copy in ((update, copied), (final, copied.finals[0]), (word, copied.finals[0].words[0])):
        for name in (f.name for f in dataclasses.fields(original)):
            assert getattr(copy, name) == getattr(original, name), name
