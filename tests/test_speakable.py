"""The reply splitter for speech: early first piece, then sentences; no markup read aloud."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.tts.speakable import SpeechSplitter, speakable


def split(deltas: list[str], **options: int) -> list[str]:
    splitter = SpeechSplitter(**options)
    pieces = [piece for delta in deltas for piece in splitter.push(delta)]
    return pieces + splitter.flush()


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def test_the_first_piece_comes_at_a_clause_once_it_has_a_few_words() -> None:
    splitter = SpeechSplitter(first_min_words=4, first_max_words=8)
    assert splitter.push("Well, ") == []  # a clause, but one word is too short to sound natural
    assert splitter.push("the weather in Paris is mild, ") == [
        "Well, the weather in Paris is mild,"
    ]
    # After the first piece, only sentence ends cut.
    assert splitter.push("around fifteen degrees, with ") == []
    assert splitter.push("light rain. Bring a coat") == ["around fifteen degrees, with light rain."]
    assert splitter.flush() == ["Bring a coat"]


def test_without_a_clause_the_first_piece_is_cut_after_a_few_words() -> None:
    splitter = SpeechSplitter(first_min_words=2, first_max_words=4)
    assert splitter.push("The Louvre is the") == []  # the 4th word may still be growing
    assert splitter.push(" largest museum in Paris. ") == [
        "The Louvre is the",
        "largest museum in Paris.",
    ]
    assert SpeechSplitter().push("Yes. ") == ["Yes."]  # a sentence is never held back


def test_a_sentence_is_not_cut_before_its_trailing_space_arrives() -> None:
    splitter = SpeechSplitter()
    assert splitter.push("It costs 3.5 euros.") == []  # "3.5" is no sentence end either
    assert splitter.push(" Cheap!") == ["It costs 3.5 euros."]
    assert splitter.flush() == ["Cheap!"]


def test_word_by_word_deltas_give_the_same_pieces_as_one_delta() -> None:
    text = "Sure, here is the plan for today. First we walk. Then we eat lunch!"
    one = split([text])
    by_word = split([w + " " for w in text.split()])
    by_char = split(list(text))
    assert one == by_word == by_char
    # The first piece after at most 4 words (no clause of 2 came first), then sentences.
    assert one == ["Sure, here is the", "plan for today.", "First we walk.", "Then we eat lunch!"]


def test_markdown_is_not_read_aloud() -> None:
    reply = (
        "## Options\n"
        "1. **Walk** to the [old town](https://example.com/town).\n"
        "- Take `bus 42` instead 🚌\n"
        "> See https://transit.example.org for times.\n"
    )
    assert split([reply]) == ["Options", "Walk to the old town.", "Take instead", "See for times."]


def test_fenced_code_is_skipped_whole_even_when_split_across_deltas() -> None:
    deltas = ["Run this: ", "``", "`python\nprint('hi')\n", "x = 1\n``", "`\nThat is all. "]
    assert split(deltas, first_min_words=2) == ["Run this:", "That is all."]


def test_unfinished_code_at_the_end_is_not_spoken() -> None:
    assert split(["Here: ```sh\nrm -rf /tmp/x"], first_min_words=1) == ["Here:"]


def test_a_long_run_without_punctuation_is_cut_at_a_space() -> None:
    pieces = split(["word " * 200], max_chars=50)
    assert all(len(p) <= 50 for p in pieces)
    assert " ".join(pieces).split() == ["word"] * 200


def test_nothing_speakable_gives_no_piece() -> None:
    assert split(["🚀✨ ", "--- ", "```\ncode\n```"]) == []
    assert speakable("| --- | --- |") == ""


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="first_min_words"):
        SpeechSplitter(first_min_words=0)


@given(st.lists(st.text(alphabet="ab .,!?\n", max_size=12), max_size=30))
def test_plain_prose_loses_no_words_however_it_is_streamed(deltas: list[str]) -> None:
    assert words(" ".join(split(deltas))) == words("".join(deltas))
