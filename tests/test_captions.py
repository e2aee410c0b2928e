"""The caption stabiliser: hypotheses in, captions whose stable prefix never changes."""

from __future__ import annotations

import random

import pytest

from gateway.conversation.captions import Caption, CaptionStabiliser


def stable(caption: Caption) -> str:
    return caption.text[: caption.stable_chars]


def feed(*hypotheses: str) -> list[Caption]:
    stabiliser = CaptionStabiliser()
    return [stabiliser.update(h) for h in hypotheses]


def test_the_first_hypothesis_is_not_stable_yet() -> None:
    assert feed("what is the") == [Caption("what is the", 0)]


def test_agreement_grows_the_stable_prefix() -> None:
    captions = feed("what is", "what is the", "what is the weather", "what is the weather in")
    assert captions == [
        Caption("what is", 0),
        Caption("what is the", len("what is")),
        Caption("what is the weather", len("what is the")),
        Caption("what is the weather in", len("what is the weather")),
    ]


def test_an_identical_hypothesis_is_all_stable() -> None:
    assert feed("hello there", "hello there")[-1] == Caption("hello there", 11)


def test_disagreement_in_the_tail_stays_unstable() -> None:
    captions = feed("the whether in", "the weather in Paris", "the weather is nice")
    assert captions[1] == Caption("the weather in Paris", len("the"))
    # "weather" agrees now; "in" / "is" does not.
    assert captions[2] == Caption("the weather is nice", len("the weather"))


def test_a_shorter_hypothesis_keeps_the_committed_words() -> None:
    stabiliser = CaptionStabiliser()
    stabiliser.update("set a timer for")
    stabiliser.update("set a timer for ten")
    assert stabiliser.update("set a") == Caption("set a timer for", len("set a timer for"))
    # Nothing new agrees with "set a", so nothing further is committed...
    assert stabiliser.update("set a timer for ten minutes") == Caption(
        "set a timer for ten minutes", len("set a timer for")
    )
    # ...until two hypotheses in a row agree again.
    assert stabiliser.update("set a timer for ten minutes") == Caption(
        "set a timer for ten minutes", len("set a timer for ten minutes")
    )


def test_disagreement_inside_the_committed_words_does_not_change_them() -> None:
    stabiliser = CaptionStabiliser()
    stabiliser.update("turn on the")
    stabiliser.update("turn on the lights")
    caption = stabiliser.update("turn off the lights please")
    assert caption == Caption("turn on the lights please", len("turn on the"))
    # Agreement is counted from the start: "off" vs "off" now agrees to the end.
    caption = stabiliser.update("turn off the lights please now")
    assert caption == Caption("turn on the lights please now", len("turn on the lights please"))


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("What is the capital", "what is the capital of", "what is the capital of"),
        ("in Paris, France", "in paris France.", "in paris France."),
        ("don't stop", "dont stop now", "dont stop now"),
        ("HELLO world", "hello World!", "hello World!"),
    ],
)
def test_case_and_punctuation_do_not_count(first: str, second: str, expected: str) -> None:
    stabiliser = CaptionStabiliser()
    stabiliser.update(first)
    caption = stabiliser.update(second)
    assert caption.text == expected
    assert caption.stable_chars == len(" ".join(expected.split()[: len(first.split())]))


def test_committed_words_keep_their_first_spelling() -> None:
    stabiliser = CaptionStabiliser()
    stabiliser.update("in Paris")
    stabiliser.update("in Paris, France")  # commits "in Paris,"
    caption = stabiliser.update("in paris france.")
    assert caption == Caption("in Paris, france.", len("in Paris, france."))


def test_empty_hypotheses() -> None:
    stabiliser = CaptionStabiliser()
    assert stabiliser.update("") == Caption("", 0)
    assert stabiliser.update("   ") == Caption("", 0)
    stabiliser.update("good morning")
    stabiliser.update("good morning to")
    # An empty hypothesis shows the committed words, and agrees with nothing after.
    assert stabiliser.update("") == Caption("good morning", len("good morning"))
    assert stabiliser.update("good morning to you") == Caption(
        "good morning to you", len("good morning")
    )


def test_whitespace_is_normalised() -> None:
    captions = feed("  what\tis \n the ", "what  is the  weather")
    assert captions == [
        Caption("what is the", 0),
        Caption("what is the weather", len("what is the")),
    ]


def test_reset_starts_a_new_utterance() -> None:
    stabiliser = CaptionStabiliser()
    stabiliser.update("hello there")
    stabiliser.update("hello there")
    stabiliser.reset()
    assert stabiliser.update("goodbye") == Caption("goodbye", 0)
    assert stabiliser.update("goodbye now") == Caption("goodbye now", len("goodbye"))
    stabiliser.reset()
    # The last hypothesis before the reset is not agreed with either.
    assert stabiliser.update("goodbye now") == Caption("goodbye now", 0)


@pytest.mark.parametrize("seed", range(20))
def test_the_stable_prefix_only_grows(seed: int) -> None:
    rng = random.Random(seed)
    vocabulary = ["the", "The", "weather", "weather,", "in", "Paris", "paris.", "is", "nice", ""]
    stabiliser = CaptionStabiliser()
    before = Caption("", 0)
    for _ in range(40):
        words = rng.choices(vocabulary, k=rng.randint(0, 8))
        if rng.random() < 0.5:  # often extend the last hypothesis, as Whisper does
            words = before.text.split()[: rng.randint(0, 8)] + words
        caption = stabiliser.update(rng.choice([" ", "  ", "\t"]).join(words))
        assert 0 <= caption.stable_chars <= len(caption.text)
        assert caption.stable_chars >= before.stable_chars
        assert stable(caption).startswith(stable(before))
        assert caption.stable_chars in (0, len(caption.text)) or (
            caption.text[caption.stable_chars] == " "
        )
        assert caption.text == " ".join(caption.text.split())
        before = caption
