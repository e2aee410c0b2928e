"""The end-of-turn policy: transcripts in, verdicts out, and every branch of decide()."""

from __future__ import annotations

import math

import pytest

from gateway.conversation.turn_policy import (
    Judgement,
    TextVerdict,
    TurnDecision,
    decide,
    judge_text,
)

COMPLETE, LIKELY, INCOMPLETE = TextVerdict.COMPLETE, TextVerdict.LIKELY, TextVerdict.INCOMPLETE
END, PREEMPT, WAIT = TurnDecision.END, TurnDecision.PREEMPT, TurnDecision.WAIT


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        # Nothing said
        ("", INCOMPLETE),
        ("   \n\t", INCOMPLETE),
        (".", INCOMPLETE),
        ("?!", INCOMPLETE),
        # Plain sentences
        ("What's the weather in Paris?", COMPLETE),
        ("So what do you think?", COMPLETE),
        ("Thank you.", COMPLETE),
        ("Okay.", COMPLETE),
        ("Yes.", COMPLETE),
        ("No.", COMPLETE),
        ("Stop!", COMPLETE),
        ("I love it.", COMPLETE),
        ("I like this.", COMPLETE),
        ("I like that.", COMPLETE),
        ("I'll take those.", COMPLETE),
        ("Would you like some?", COMPLETE),
        ("It's his.", COMPLETE),
        ("I told her.", COMPLETE),
        ("Let me show you.", COMPLETE),
        ("Let me know.", COMPLETE),
        ("I don't know.", COMPLETE),
        ("Turn on the lights in the kitchen.", COMPLETE),
        ('He said "yes."', COMPLETE),
        ("He said \u201cyes.\u201d", COMPLETE),
        ("(Laughs.)", COMPLETE),
        # No terminal punctuation, no marker
        ("Hello there", LIKELY),
        ("Okay", LIKELY),
        ("Set a timer for ten minutes", LIKELY),
        ("Thank you", LIKELY),
        # Trailing off
        ("I would like to know...", INCOMPLETE),
        ("Well\u2026", INCOMPLETE),
        ("The thing is..", INCOMPLETE),
        ("So, well -", INCOMPLETE),
        ("I was thinking \u2014", INCOMPLETE),
        ("First,", INCOMPLETE),
        ("Here's the list:", INCOMPLETE),
        ("It was late;", INCOMPLETE),
        ("Hmm... okay...", INCOMPLETE),
        ('She said "wait..."', INCOMPLETE),
        # Fillers
        ("Um", INCOMPLETE),
        ("Uh.", INCOMPLETE),
        ("Umm", INCOMPLETE),
        ("So the answer is, uhm.", INCOMPLETE),
        ("Erm", INCOMPLETE),
        ("Hmm.", INCOMPLETE),
        ("Mm", INCOMPLETE),
        ("Hmm?", COMPLETE),  # "pardon?"
        ("Mm-hmm.", COMPLETE),  # agreeing
        ("Mhm.", COMPLETE),
        ("Uh-huh.", COMPLETE),
        # Conjunctions
        ("and then", INCOMPLETE),
        ("And then.", INCOMPLETE),
        ("I went to the shop and", INCOMPLETE),
        ("Yeah, but.", INCOMPLETE),
        ("Coffee or", INCOMPLETE),
        ("I'm asking because.", INCOMPLETE),
        ("Tell me if.", INCOMPLETE),
        ("Wake me up when", INCOMPLETE),
        ("It's bigger than.", INCOMPLETE),
        ("The one which", INCOMPLETE),
        ("I wonder whether", INCOMPLETE),
        ("Although", INCOMPLETE),
        ("It's fine, though.", COMPLETE),
        ("See you then.", COMPLETE),
        ("Okay then.", COMPLETE),
        ("So", INCOMPLETE),
        ("And so.", INCOMPLETE),
        ("I think so.", COMPLETE),
        ("I told you so.", COMPLETE),
        ("Is that so?", COMPLETE),
        ("So that.", INCOMPLETE),
        ("Given that", INCOMPLETE),
        ("It's been a while.", COMPLETE),
        ("Wait a while.", COMPLETE),
        ("I'll read while.", INCOMPLETE),
        ("What if?", COMPLETE),
        ("As if.", COMPLETE),
        ("I haven't been well ever since.", COMPLETE),
        ("Just because.", COMPLETE),
        ("When?", COMPLETE),
        ("Since when?", COMPLETE),
        ("Who?", COMPLETE),
        ("Which?", COMPLETE),
        ("Such as", INCOMPLETE),
        # Prepositions
        ("Tell me about", INCOMPLETE),
        ("I'm going to", INCOMPLETE),
        ("I'm going to.", INCOMPLETE),
        ("What is the capital of.", INCOMPLETE),
        ("I'd like", INCOMPLETE),
        ("Things like", INCOMPLETE),
        ("It was, like.", INCOMPLETE),
        ("Send it to Bob with", INCOMPLETE),
        ("A flight from London to", INCOMPLETE),
        ("I need it for.", INCOMPLETE),
        ("I kind of", INCOMPLETE),
        ("Kind of.", COMPLETE),
        ("Yeah, sort of.", COMPLETE),
        ("What are you talking about?", COMPLETE),
        ("Where are you from?", COMPLETE),
        ("Who is it for?", COMPLETE),
        ("What is it made of?", COMPLETE),
        ("What's the weather like?", COMPLETE),
        # A noun before it: a question cut short (or tiny.en's guess at the rest).
        ("What is the capital city of?", INCOMPLETE),
        ("Which is the best route to?", INCOMPLETE),
        ("What's it like?", COMPLETE),
        ("What's the weather like", INCOMPLETE),
        ("Can you tell me about?", INCOMPLETE),  # no question word to strand it
        # Particles: in / on / by / near …
        ("Find a cheap hotel near.", INCOMPLETE),
        ("Is there a pharmacy near", INCOMPLETE),
        ("It's near.", COMPLETE),
        ("Come inside.", COMPLETE),
        ("Park the car behind.", INCOMPLETE),
        ("What's the weather in", INCOMPLETE),
        ("What's the weather in.", INCOMPLETE),
        ("Put the book on", INCOMPLETE),
        ("A song by", INCOMPLETE),
        ("Come in.", COMPLETE),
        ("Turn it on.", COMPLETE),
        ("Hold on.", COMPLETE),
        ("Come on!", COMPLETE),
        ("I'm in.", COMPLETE),
        ("Count me in.", COMPLETE),
        ("Stand by.", COMPLETE),
        ("What are you working on?", COMPLETE),
        ("It's over.", COMPLETE),
        ("I've seen it before.", COMPLETE),
        # Determiners
        ("Tell me about the", INCOMPLETE),
        ("Tell me about the.", INCOMPLETE),
        ("Play a", INCOMPLETE),
        ("I'd like an.", INCOMPLETE),
        ("What's your", INCOMPLETE),
        ("Turn off my.", INCOMPLETE),
        ("Every", INCOMPLETE),
        # A capital mid-sentence is a name, not a function word
        ("I got an A.", COMPLETE),
        ("I was born in May.", COMPLETE),
        ("We watched The Who.", COMPLETE),
        ("Hello. And", INCOMPLETE),
        ("Okay! The", INCOMPLETE),
        # Subject pronouns
        ("And then I", INCOMPLETE),
        ("Yesterday we.", INCOMPLETE),
        ("So they", INCOMPLETE),
        ("So do I.", COMPLETE),
        ("Neither can we.", COMPLETE),
        ("Can I?", COMPLETE),
        ("It's cold, isn't it?", COMPLETE),
        ("He's tall, isn't he?", COMPLETE),
        # Subject + auxiliary contractions
        ("I'm", INCOMPLETE),
        ("Yes, I'm.", INCOMPLETE),
        ("I think it's.", INCOMPLETE),
        ("I\u2019ll.", INCOMPLETE),
        ("And there's", INCOMPLETE),
        ("Let's.", INCOMPLETE),
        ("I'm gonna", INCOMPLETE),
        ("I wanna.", INCOMPLETE),
        # Auxiliaries and modals
        ("Yes, I do.", COMPLETE),
        ("I can.", COMPLETE),
        ("It is.", COMPLETE),
        ("You should.", COMPLETE),
        ("No, I don't.", COMPLETE),
        ("I really do.", COMPLETE),
        ("I never did.", COMPLETE),
        ("I could have been.", COMPLETE),
        ("I'll be.", COMPLETE),
        ("It may or may not be.", COMPLETE),
        ("How do you do?", COMPLETE),
        ("The capital of France is", INCOMPLETE),
        ("The capital of France is.", INCOMPLETE),
        ("My name is", INCOMPLETE),
        ("What did", INCOMPLETE),
        ("Why don't", INCOMPLETE),
        ("The answer could be.", INCOMPLETE),
        ("Where is?", INCOMPLETE),
        # Object gaps: "to" + verb, inverted questions, ditransitive commands
        ("I would like to know.", INCOMPLETE),
        ("I would like to know", INCOMPLETE),
        ("I want to know.", INCOMPLETE),
        ("I'd like to ask.", INCOMPLETE),
        ("I need to find.", INCOMPLETE),
        ("I wanna get.", INCOMPLETE),
        ("I want to see.", COMPLETE),
        ("I'd love to help.", COMPLETE),
        ("Good to know.", COMPLETE),
        ("It's hard to say.", COMPLETE),
        ("What would you like to know?", COMPLETE),
        ("Why do you want to know?", COMPLETE),
        ("Can you tell", INCOMPLETE),
        ("Can you tell.", INCOMPLETE),
        ("Could you please explain.", INCOMPLETE),
        ("Do you know", INCOMPLETE),
        ("Do you know?", COMPLETE),
        ("Can you tell?", COMPLETE),
        ("I can tell.", COMPLETE),
        ("I can explain.", COMPLETE),
        ("Can you help?", COMPLETE),
        ("Can you tell me.", INCOMPLETE),
        ("Can you tell me?", INCOMPLETE),
        ("Show me.", INCOMPLETE),
        ("Remind us", INCOMPLETE),
        ("Give me.", INCOMPLETE),
        ("What did you tell me?", COMPLETE),
        ("Excuse me.", COMPLETE),
        ("Help me.", COMPLETE),
        ("I'll ask her.", COMPLETE),
        # Trailing filler phrases
        ("You know.", INCOMPLETE),
        ("It's hard, you know.", INCOMPLETE),
        ("And you know", INCOMPLETE),
        ("It's hard, you know?", COMPLETE),  # a tag question
        ("As you know.", COMPLETE),
        ("I mean.", INCOMPLETE),
        ("It's fine, I mean.", INCOMPLETE),
        ("That's what I mean.", COMPLETE),
    ],
)
def test_judge_text(text: str, verdict: TextVerdict) -> None:
    assert judge_text(text) is verdict


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Wie ist das Wetter in Paris?", COMPLETE),
        ("Ich will.", COMPLETE),  # "will" is German for "want": no English rules
        ("Ich möchte wissen, ob", LIKELY),
        ("Ich weiß nicht...", INCOMPLETE),
        ("Je pense que,", INCOMPLETE),
        ("今日の天気は\uff1f", COMPLETE),
        ("今日の天気は。", COMPLETE),
        ("我想知道\uff0c", INCOMPLETE),
        ("我想知道。。。", INCOMPLETE),
        ("我想知道", LIKELY),
        ("आज मौसम कैसा है।", COMPLETE),
        ("الطقس اليوم؟", COMPLETE),
        ("", INCOMPLETE),
    ],
)
def test_other_languages_use_punctuation_only(text: str, verdict: TextVerdict) -> None:
    assert judge_text(text, language="de") is verdict


@pytest.mark.parametrize("language", ["en", "EN", "en-GB", "en_US", "english"])
def test_english_by_any_spelling(language: str) -> None:
    assert judge_text("Tell me about the.", language=language) is INCOMPLETE


def test_english_rules_only_for_english() -> None:
    assert judge_text("Tell me about the.", language="fr") is COMPLETE


def test_whitespace_and_typographic_apostrophes_do_not_matter() -> None:
    assert judge_text("  I\u2019m  \n") is INCOMPLETE
    assert judge_text("  Thank you.  ") is COMPLETE


@pytest.mark.parametrize(
    ("verdict", "decision"),
    [(COMPLETE, END), (LIKELY, PREEMPT), (INCOMPLETE, WAIT)],
)
def test_the_text_alone_decides_without_a_model(
    verdict: TextVerdict, decision: TurnDecision
) -> None:
    assert decide(verdict, None) == Judgement(decision, "text")


@pytest.mark.parametrize(
    ("verdict", "probability", "expected"),
    [
        # A lexical marker vetoes the audio, however final the voice sounds.
        (INCOMPLETE, 0.99, Judgement(WAIT, "text")),
        (INCOMPLETE, 0.0, Judgement(WAIT, "text")),
        # Above the threshold the model ends the turn.
        (COMPLETE, 0.51, Judgement(END, "model")),
        (LIKELY, 0.9, Judgement(END, "model")),
        (LIKELY, 1.0, Judgement(END, "model")),
        # At or below it: early answer when the text reads complete ...
        (COMPLETE, 0.5, Judgement(PREEMPT, "model")),
        (COMPLETE, 0.0, Judgement(PREEMPT, "model")),
        # ... or when the model thinks it likely enough.
        (LIKELY, 0.5, Judgement(PREEMPT, "model")),
        (LIKELY, 0.2, Judgement(PREEMPT, "model")),
        # Otherwise keep listening.
        (LIKELY, 0.19, Judgement(WAIT, "model")),
        (LIKELY, 0.0, Judgement(WAIT, "model")),
    ],
)
def test_with_a_model(verdict: TextVerdict, probability: float, expected: Judgement) -> None:
    assert decide(verdict, probability) == expected


def test_thresholds_are_parameters() -> None:
    assert decide(LIKELY, 0.6, model_threshold=0.7) == Judgement(PREEMPT, "model")
    assert decide(LIKELY, 0.75, model_threshold=0.7) == Judgement(END, "model")
    assert decide(LIKELY, 0.3, model_likely=0.4) == Judgement(WAIT, "model")
    assert decide(LIKELY, 0.0, model_likely=0.0) == Judgement(PREEMPT, "model")
    assert decide(LIKELY, 1.0, model_threshold=1.0) == Judgement(PREEMPT, "model")
    assert decide(COMPLETE, 0.3, model_threshold=0.3, model_likely=0.3) == Judgement(
        PREEMPT, "model"
    )


@pytest.mark.parametrize(
    ("threshold", "likely"),
    [
        (0.5, 0.6),  # likely above the threshold
        (1.5, 0.2),
        (0.5, -0.1),
        (-0.1, -0.2),
        (math.nan, 0.2),
        (0.5, math.nan),
        (math.inf, 0.2),
    ],
)
def test_nonsense_thresholds_are_refused(threshold: float, likely: float) -> None:
    with pytest.raises(ValueError, match="model_likely"):
        decide(COMPLETE, 0.5, model_threshold=threshold, model_likely=likely)
    with pytest.raises(ValueError, match="model_likely"):  # even without a model
        decide(COMPLETE, None, model_threshold=threshold, model_likely=likely)


@pytest.mark.parametrize("probability", [-0.01, 1.01, math.nan, math.inf, -math.inf])
def test_nonsense_probabilities_are_refused(probability: float) -> None:
    with pytest.raises(ValueError, match="model probability"):
        decide(LIKELY, probability)
