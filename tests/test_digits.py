"""The spoken-digits model's making: text normalisation and scoring, the synthetic voices, the
augmentation, the real-speech test set, and a short run of the training loop (CI does not
retrain the shipped model; docs/models.md says how it was made)."""

from __future__ import annotations

import numpy as np
import pytest

from streamd.models import augment, digits, real_speech, voices
from streamd.models.digits_training import DigitExamples, digits_task, grouped_words
from streamd.models.training import train

SAMPLE_RATE = 16000
pytest_plugins = ["conftest_offline"]


@pytest.mark.parametrize(("text", "expected"), [
    ("four one five oh two", ["4", "1", "5", "0", "2"]),
    ("415-02", ["4", "1", "5", "0", "2"]),
    ("Four, one, five, O, two.", ["4", "1", "5", "0", "2"]),
    ("Zero.", ["0"]),
    ("Call 911 now", ["call", "9", "1", "1", "now"]),
    ("", []),
])
def test_normalize_turns_any_transcript_into_digits(text: str, expected: list[str]):
    assert digits.normalize(text) == expected


def test_word_error_rate_counts_substitutions_deletions_and_insertions():
    assert digits.word_errors(["4", "1", "5"], ["4", "1", "5"]) == 0
    assert digits.word_errors(["4", "1", "5"], ["4", "7", "5"]) == 1
    assert digits.word_errors(["4", "1", "5"], ["4", "5"]) == 1
    assert digits.word_errors(["4", "1", "5"], ["4", "1", "1", "5", "9"]) == 2
    # 1 error in "one two" and none in "3": 1 of 3 reference words.
    assert digits.word_error_rate(["one two", "three"], ["one", "3"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="empty reference"):
        digits.word_error_rate([""], ["one"])


def test_spoken_words_and_groups_say_every_digit_once(rng: np.random.Generator):
    assert digits.spoken_words("1050", zero_as_oh=True) == ["one", "oh", "five", "oh"]
    assert digits.spoken_words("1050", zero_as_oh=False) == ["one", "zero", "five", "zero"]
    for _ in range(50):
        string = digits.random_digits(rng)
        assert digits.MIN_DIGITS <= len(string) <= digits.MAX_DIGITS
        words = grouped_words(string, rng)
        assert "".join(digits.normalize(" ".join(w for w in words if w != ","))) == string


def test_the_tokenizer_spells_every_word(tmp_path):
    import sentencepiece

    from streamd.models.architectures import ARCHITECTURES, build_tokenizer
    from streamd.models.digits_training import ARCH

    folder = build_tokenizer(digits.transcript_corpus(), ARCHITECTURES[ARCH].vocab_size, str(tmp_path))
    tokenizer = sentencepiece.SentencePieceProcessor(model_file=f"{folder}/tokenizer.model")
    for word in digits.VOCABULARY:
        ids = tokenizer.encode(word)
        assert tokenizer.unk_id() not in ids and tokenizer.decode(ids) == word


# ---------------------------------------------------------------------- voices and augmentation
def test_every_synthesizer_speaks_at_16_khz():
    """.ci/run installs espeak-ng, flite, festival (and pip installs piper with its voice): each
    must give speech, not silence, at the training rate. Kokoro too where installed (docs/models.md)."""
    engines = {}
    for voice in voices.available_voices():
        engines.setdefault(voice.engine, voice)
    assert set(engines) - {"kokoro"} == {"espeak-ng", "flite", "festival", "piper"}
    spoken = voices.synthesize([(voice, ["four", ",", "two"], voices.Prosody(rate=1.1, pitch=0.9))
                                for voice in engines.values()])
    for utterance in spoken:
        assert utterance.words == ["four", "two"]
        assert 0.4 < len(utterance.audio) / SAMPLE_RATE < 4.0, str(utterance.voice)
        assert np.abs(utterance.audio).max() > 0.05, str(utterance.voice)


def band_energy(audio: np.ndarray, low_hz: float, high_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    hz = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    return float(spectrum[(hz >= low_hz) & (hz < high_hz)].sum())


def test_augmentations_do_what_they_say(rng: np.random.Generator):
    noise = rng.normal(0, 0.1, SAMPLE_RATE).astype(np.float32)
    assert len(augment.change_speed(noise, 1.25)) == pytest.approx(SAMPLE_RATE / 1.25, abs=2)
    phone = augment.telephone(noise, rng)
    assert len(phone) == len(noise)
    assert band_energy(phone, 4200, 8000) < 1e-3 * band_energy(phone, 500, 3500)
    assert np.abs(augment.set_peak(noise, -20.0)).max() == pytest.approx(0.1, rel=1e-4)
    response = augment.room_impulse_response(rng, 0.5)
    assert len(response) == SAMPLE_RATE // 2 and response[0] == 1.0
    tail, head = np.abs(response[-800:]).max(), np.abs(response[1:801]).max()
    assert tail < head * 10 ** (-45 / 20)  # ~-60 dB at RT60: well down by the end
    noisy = augment.add_noise(noise, rng, snr_db=10.0)
    assert np.mean((noisy - noise) ** 2) == pytest.approx(np.mean(noise**2) / 10, rel=0.05)


def test_examples_hold_their_transcripts_and_a_seed_repeats_them():
    bank = [voices.Utterance(np.full(8000, 0.1, np.float16), ["four", "two"], voices.Voice("test", "a")),
            voices.Utterance(np.full(4000, 0.1, np.float16), ["oh"], voices.Voice("test", "b"))]
    draw = DigitExamples(bank)
    first, again = draw(np.random.default_rng(5), 40), draw(np.random.default_rng(5), 40)
    for (audio, text), (audio2, text2) in zip(first, again):
        assert text == text2 and np.array_equal(audio, audio2)
        assert audio.dtype == np.float32 and np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
        words = text.split()
        assert text == "" or (words.count("four") == words.count("two") and len(words) <= 16)
    assert {text for _, text in first} - {""}, "speech examples"


def test_a_short_training_run_learns_and_saves(tmp_path):
    """The whole loop on a bank of a few utterances (the real run: docs/models.md)."""
    task = digits_task(seed=3, bank_sizes={"espeak-ng": 8, "flite": 2, "festival": 2, "piper": 1})
    model = train(task, seed=3, steps=3, batch_size=4, lr=1e-3, eval_every=3, eval_count=1)
    assert dict(model.cfg.streamd.trained)["task"] == "digits"
    assert [list(s) for s in model.encoder.att_context_size_all] == [[70, 13], [70, 6], [70, 1], [70, 0]]
    model.save_to(str(tmp_path / "digits.nemo"))
    from streamd.engine.loading import load_model

    assert load_model(str(tmp_path / "digits.nemo")).tokenizer.vocab_size == model.tokenizer.vocab_size


# ---------------------------------------------------------------------- the real-speech test set
def test_the_asterisk_digit_prompts_are_the_ten_digits_and_oh():
    prompts = real_speech.digit_prompts()
    assert prompts == {f"digits/{i}": word for i, word in enumerate(digits.DIGIT_WORDS)} | {"digits/oh": "oh"}


@pytest.mark.parametrize("codec", real_speech.CODECS)
def test_prompts_decode_to_speech_at_16_khz(codec: str):
    clips = real_speech.prompt_clips(codec)
    assert len(clips) == 11
    for clip in clips:
        assert 0.3 < clip.seconds < 2.0, clip.name
        assert np.abs(clip.audio).max() > 0.1, clip.name


def test_the_8_khz_release_holds_nothing_above_4_khz_and_g722_does():
    wideband, narrow = real_speech.prompt_clips("g722")[7], real_speech.prompt_clips("wav")[7]
    assert wideband.transcript == narrow.transcript == "seven"
    assert band_energy(narrow.audio, 4200, 8000) < 1e-4 * band_energy(narrow.audio, 300, 3400)
    assert band_energy(wideband.audio, 4200, 8000) > 1e-3 * band_energy(wideband.audio, 300, 3400)


def test_spoken_strings_are_the_prompts_back_to_back(rng: np.random.Generator):
    clips = real_speech.prompt_clips("g722")
    by_text = {c.transcript: c for c in clips}
    for string in real_speech.spoken_strings(clips, rng, count=5):
        words = string.transcript.split()
        assert 1 <= len(words) <= 12
        assert np.array_equal(string.audio, np.concatenate([by_text[w].audio for w in words]))


def test_a_missing_package_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(real_speech.RealSpeechMissing, match="apt-get install asterisk-core-sounds-en"):
        real_speech.transcripts(tmp_path / "none.txt.gz")
    monkeypatch.setattr(real_speech, "SOUNDS_DIR", tmp_path / "nowhere")
    with pytest.raises(real_speech.RealSpeechMissing, match="not found"):
        real_speech.prompt_clips("g722")


def test_whisper_tiny_en_is_scored_through_the_same_normalisation(tiny_en_dir):
    """The reference recognizer writes numerals ("7.", "Oh.") where the transcripts say words;
    after normalisation it gets every digit prompt right (measured: docs/models.md)."""
    from streamd.models.digits_score import score_whisper

    score = score_whisper(str(tiny_en_dir), real_speech.prompt_clips("g722"), batch_size=11)
    assert (score.words, score.errors) == (11, 0), score.mistakes()
    assert score.rtfx > 0
