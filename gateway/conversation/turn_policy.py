"""Whether a person has finished their turn, judged at a short pause (~200 ms of silence)
from the Whisper transcript of the speech so far and, optionally, the probability an audio
end-of-turn model gives. Pure: strings and numbers in, verdicts out.

:func:`judge_text` reads the transcript (English rules; other languages only punctuation);
:func:`decide` combines that verdict with the model's probability into a
:class:`TurnDecision`.

The two errors do not cost the same. A wrongly INCOMPLETE verdict only costs waiting for the
long silence limit, which is what every turn costs without this policy. A wrongly COMPLETE
verdict answers over someone who was still speaking. So the verdict COMPLETE needs precision
more than recall, and a lexical marker (a trailing "and", "the", "to", "um", ...) overrides
terminal punctuation: Whisper puts a period after a fragment ("I would like to know.") as
readily as after a sentence. The word lists still leave out words that end everyday complete
replies ("Thank you.", "I love it.", "I like this.", "No.", "I think so."): flagging those
would make the commonest turns wait the long silence and throw the gain away. Where a word
is both, a small rule looks at its neighbours (see the constants below).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Literal


class TextVerdict(enum.Enum):
    COMPLETE = "complete"  # terminal punctuation and no marker of an unfinished sentence
    LIKELY = "likely"  # no terminal punctuation, no marker either
    INCOMPLETE = "incomplete"  # nothing said, a trailing-off mark, or a lexical marker


class TurnDecision(enum.Enum):
    END = "end"  # the turn is over: end it now
    PREEMPT = "preempt"  # probably over: start the answer, end after a little more silence
    WAIT = "wait"  # not over: keep listening up to the long silence limit


@dataclass(frozen=True)
class Judgement:
    decision: TurnDecision
    by: Literal["text", "model"]


# --- punctuation (every language) -------------------------------------------------------

# Closing quotes and brackets after the last mark: 'He said "yes."' ends with the period.
# (Non-ASCII marks are written as escapes throughout: typographic quotes U+201D U+2019,
# guillemet, CJK corner brackets.)
_CLOSERS = "\"')]}\u201d\u2019\u00bb\u300d\u300f"
# Trailing off: an ellipsis (Whisper writes "..." for a voice that trails off), a dash, a
# comma, a colon or a semicolon, in ASCII, typographic (U+2026 ellipsis, en, em and
# horizontal-bar dashes) or CJK form (ideographic full stops, ideographic and full-width
# comma, full-width colon and semicolon).
_DASHES = "-\u2013\u2014\u2015"
_TRAILING_OFF = re.compile(
    "(?:\\.\\.|\u2026|\u3002\u3002|[" + _DASHES + ",:;\u3001\uff0c\uff1a\uff1b])$"
)
# A sentence ends: . ? ! and their CJK forms (ideographic full stop, full-width ? ! .),
# plus the Arabic question mark and the Devanagari danda that Whisper writes.
_QUESTION = frozenset("?\uff1f\u061f")
_TERMINAL = _QUESTION | frozenset(".!\u3002\uff01\uff0e\u0964")
_WORD = re.compile(r"\w+(?:'\w+)*")
# Typographic and modifier-letter apostrophes (U+2019, U+2018, U+02BC) read as "'".
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})

# --- word lists (English) ---------------------------------------------------------------

# Fillers: a hesitation, the person is still thinking ("Um", "Uh,", "Hmm..."). Spelled with
# any number of repeated letters ("umm", "hmmm"). "mhm", "uh-huh" and "mm-hmm" are answers.
_FILLER = re.compile(r"u+m+|u+h+m*|e+r+m*|h+m+|m{2,}")

# Subject + auxiliary contractions: never the end of a sentence ("Yes, I'm." is not said).
_CONTRACTED = frozenset(
    {"i", "you", "we", "they", "he", "she", "it", "that", "there", "here", "what", "who"}
)
_SUBJECT_CONTRACTIONS = frozenset(
    f"{pronoun}'{suffix}" for pronoun in _CONTRACTED for suffix in ("m", "re", "ll", "d", "ve", "s")
) | {"let's"}
# "going to" / "want to" / "got to" in one word: the "to" is still waiting for its verb.
_FUSED_TO = frozenset({"gonna", "wanna", "gotta", "hafta", "oughta"})

# Subject pronouns: as the last word they wait for a verb ("... and then I"), except after
# an auxiliary, where the order is inverted ("So do I.", "Can I?", "isn't he?").
_SUBJECT_PRONOUNS = frozenset({"i", "we", "they", "he", "she"})
# The subjects that let an auxiliary end a sentence ("Yes, I do.", "It is.", "You can.").
# Only personal pronouns: "this", "that" and "there" open as many fragments ("There is")
# as they close replies ("Yes, there is."), and COMPLETE must be precise.
_AUX_SUBJECTS = _SUBJECT_PRONOUNS | {"you", "it"}

# Auxiliaries and modals: they wait for their verb ("The capital of France is", "What did")
# unless their subject comes right before them ("I can.", "It is.", "I could have been.").
_AUXILIARIES = frozenset(
    {
        "is", "are", "was", "were", "am", "be", "been", "being",
        "will", "would", "can", "could", "should", "shall", "may", "might", "must",
        "do", "does", "did", "have", "has", "had",
        "isn't", "aren't", "wasn't", "weren't", "won't", "wouldn't", "can't", "cannot",
        "couldn't", "shouldn't", "mustn't", "don't", "doesn't", "didn't", "haven't",
        "hasn't", "hadn't",
    }
)  # fmt: skip
# Words that may stand between a subject and its auxiliary: "I really do.", "I never did."
_AUX_ADVERBS = frozenset(
    {
        "really", "certainly", "definitely", "probably", "surely", "sure", "actually",
        "still", "already", "always", "never", "also", "just", "only", "truly", "indeed",
        "usually", "often", "sometimes", "rarely", "hardly", "ever",
    }
)  # fmt: skip

# Conjunctions: a clause is coming ("... and", "because", "if"). Left out: "though", which
# ends many sentences as an adverb ("It's good, though."), and "that", which is a
# demonstrative far more often than not at the end ("I like that."). Several have guards:
_CONJUNCTIONS = frozenset(
    {
        "and", "but", "or", "nor", "so", "because", "if", "when", "while", "although",
        "unless", "until", "till", "since", "than", "as", "which", "who", "whom", "whose",
        "where", "whether", "whereas", "then",
    }
)  # fmt: skip
# "so" ends opinions and echoes: "I think so.", "I told you so.", "Is that so?", "Why so?"
_SO_COMPLETERS = frozenset(
    {
        "think", "thought", "hope", "guess", "believe", "suppose", "expect", "imagine",
        "afraid", "say", "said", "says", "told", "tell", "you", "do", "did", "is", "was", "so",
        "that", "not", "why", "very",
    }
)  # fmt: skip
# "that" is a conjunction only after these ("so that", "given that"); else a pronoun.
_THAT_OPENERS = frozenset({"so", "such", "except", "given", "assuming", "provided", "providing"})
# "while" is a noun after these: "for a while", "It's been a while."
_WHILE_NOUN = frozenset({"a", "the", "whole", "little", "short", "long", "good", "great"})
# "What if?", "As if.", "ever since", "long since", "Just because."
_IF_COMPLETERS = frozenset({"what", "as"})
_SINCE_COMPLETERS = frozenset({"ever", "long"})
_BECAUSE_COMPLETERS = frozenset({"just"})
# "then" waits only after a conjunction ("and then"); else it ends ("See you then.").
_THEN_OPENERS = frozenset({"and", "but", "or", "so"})

# Question words: a conjunction that is the asked word is a whole question ("When?",
# "Since when?"), and a wh-question may end with a stranded preposition or an object gap
# ("What are you talking about?", "What would you like to know?").
_WH_WORDS = frozenset({"what", "who", "whom", "whose", "which", "where", "when", "why", "how"})

# Prepositions: their object is coming ("Tell me about", "the capital of"). "like" too:
# "I'd like", "things like", "It was, like". Left out because they end sentences as
# particles or adverbs far more often: over, through, before, after, up, off, out, down.
_PREPOSITIONS = frozenset(
    {
        "to", "of", "at", "for", "with", "about", "from", "into", "onto", "like",
        "between", "under", "during", "without", "within", "towards", "toward", "against",
        "per", "via", "among", "amongst", "upon", "despite", "regarding", "including",
        "unlike", "versus", "except",
    }
)  # fmt: skip
# Prepositions that are also particles: a marker after a noun ("the weather in"), not after
# a verb, a pronoun or a form of "be" ("Come in.", "Turn it on.", "I'm in.", "Stand by.").
_PARTICLES = frozenset(
    {"in", "on", "by", "near", "behind", "inside", "outside", "around", "across", "beside"}
)
_PARTICLE_HOSTS = _SUBJECT_CONTRACTIONS | {
    "it", "me", "him", "her", "us", "them", "you", "this", "that", "everyone",
    "am", "is", "are", "was", "were", "be", "been",
    "come", "comes", "came", "go", "goes", "went", "get", "got", "log", "logged", "sign",
    "signed", "check", "checked", "hold", "move", "moved", "carry", "keep", "stand",
    "sit", "drop", "plug", "fill", "hang", "turn", "turned", "switch", "switched", "let",
    "pass", "walk", "stop", "drive", "stay", "hop", "jump", "tune", "zoom", "play",
    "dropped", "stopped", "passed", "going", "coming", "getting", "moving",
}  # fmt: skip
# "Kind of." / "Sort of." as the whole answer (after "yeah," or "well," at most).
_HEDGES = frozenset({"kind", "sort"})
_HEDGE_LEADS = frozenset({"yeah", "yes", "well", "oh", "um", "uh"})

# Determiners and possessives: a noun is coming ("Tell me about the", "What's your").
# Left out because they are pronouns as often ("I like this.", "I'll take those.", "No.",
# "It's his.", "I told her.", "I want some.", "Have another."): this, that, these, those,
# some, any, each, no, another, his, her. ("I got an A.": a capital mid-sentence is a name.)
_DETERMINERS = frozenset({"the", "a", "an", "my", "your", "its", "our", "their", "every"})

# Verbs that need an object or a clause, read as a gap after "want to", "need to", ...
# ("I would like to know.") or in an inverted question ("Can you tell", "Do you know").
# Left out because their intransitive use is a whole sentence: see, go, try, help, learn,
# talk, hear, understand, check, do ("I'd like to see.", "Can you help?").
_GAP_VERBS = frozenset(
    {
        "know", "tell", "ask", "explain", "say", "give", "show", "get", "make", "find",
        "describe", "mention", "send", "bring", "buy", "put", "use", "discuss", "recommend",
        "suggest",
    }
)  # fmt: skip
# What makes "to <verb>" a request still to be completed. Not adjectives: "Good to know.",
# "Hard to say." and "Easy to find." are complete.
_TO_CONTROLLERS = frozenset(
    {
        "like", "love", "want", "wants", "wanted", "need", "needs", "needed", "going",
        "trying", "try", "tried", "have", "has", "had", "got", "able", "supposed", "wish",
        "hoping", "hope", "plan", "planning", "meant", "mean", "used", "ought", "wanting",
    }
)  # fmt: skip
# Words after which a wh-question's preposition is stranded, not left hanging: object
# pronouns and the common verbs that take one ("Who is it for?", "What is it made of?").
_STRANDING_HOSTS = frozenset(
    [
        "me",
        "us",
        "him",
        "her",
        "it",
        "them",
        "this",
        "that",
        "one",
        "be",
        "is",
        "are",
        "was",
        "were",
        "been",
        "go",
        "come",
        "look",
        "live",
        "work",
        "talk",
        "think",
        "wait",
        "belong",
        "made",
        "done",
        "say",
        "said",
        "do",
        "did",
        "get",
        "got",
        "put",
    ]
)
# Softeners that may stand inside the inverted question: "Could you please explain".
_SOFTENERS = frozenset({"please", "just", "also", "maybe", "perhaps", "kindly"})
# A command to the assistant whose object is still coming: "Can you tell me." ("Tell me
# about ..."). Only "me" and "us": "I'll ask her." and "Let me show you." are complete.
_DITRANSITIVE = frozenset({"tell", "show", "give", "ask", "send", "remind", "teach", "bring"})
_FIRST_PERSON_OBJECTS = frozenset({"me", "us"})
# Trailing filler phrases ("It's hard, you know", "and I mean"): only where they follow a
# pause mark or a connective, so "As you know." and "That's what I mean." stay complete.
_FILLER_PHRASES = frozenset({("you", "know"), ("i", "mean")})
_FILLER_LEADS = frozenset({"and", "but", "so", "or", "like", "well", "because", "um", "uh"})


def judge_text(text: str, *, language: str = "en") -> TextVerdict:
    """Whether the transcript so far reads as a finished turn.

    The lexical rules are English; for any other ``language`` (a Whisper code such as
    ``"de"``) only punctuation counts.
    """
    body = text.translate(_APOSTROPHES).rstrip().rstrip(_CLOSERS).rstrip()
    if _WORD.search(body) is None:  # nothing said: empty, or punctuation alone
        return TextVerdict.INCOMPLETE
    if _TRAILING_OFF.search(body):
        return TextVerdict.INCOMPLETE
    if _is_english(language) and _unfinished(body, question=body[-1] in _QUESTION):
        return TextVerdict.INCOMPLETE
    return TextVerdict.COMPLETE if body[-1] in _TERMINAL else TextVerdict.LIKELY


def decide(
    verdict: TextVerdict,
    model_probability: float | None,
    *,
    model_threshold: float = 0.5,
    model_likely: float = 0.2,
) -> Judgement:
    """The decision at a pause, from the text verdict and the audio model's probability
    that the turn is complete (None: no model, the text alone decides).

    With a model, a lexical marker still vetoes the audio (a trailing "and" means more is
    coming however final the voice sounded); otherwise the model ends the turn above
    ``model_threshold``, and starts the answer early at or above ``model_likely`` or when
    the text reads complete.
    """
    if not 0.0 <= model_likely <= model_threshold <= 1.0:
        raise ValueError(
            f"thresholds must satisfy 0 <= model_likely <= model_threshold <= 1, "
            f"not model_likely={model_likely!r}, model_threshold={model_threshold!r}"
        )
    if model_probability is None:
        return Judgement(_TEXT_DECISIONS[verdict], "text")
    if not (math.isfinite(model_probability) and 0.0 <= model_probability <= 1.0):
        raise ValueError(f"model probability must be in [0, 1], not {model_probability!r}")
    if verdict is TextVerdict.INCOMPLETE:
        return Judgement(TurnDecision.WAIT, "text")
    if model_probability > model_threshold:
        return Judgement(TurnDecision.END, "model")
    if verdict is TextVerdict.COMPLETE or model_probability >= model_likely:
        return Judgement(TurnDecision.PREEMPT, "model")
    return Judgement(TurnDecision.WAIT, "model")


_TEXT_DECISIONS = {
    TextVerdict.COMPLETE: TurnDecision.END,
    TextVerdict.LIKELY: TurnDecision.PREEMPT,
    TextVerdict.INCOMPLETE: TurnDecision.WAIT,
}


def _is_english(language: str) -> bool:
    code = language.casefold()
    return code in ("en", "english") or code.startswith(("en-", "en_"))


def _unfinished(body: str, *, question: bool) -> bool:
    """Whether the last words of ``body`` (trailing marks already checked) leave the
    sentence open."""
    matches = list(_WORD.finditer(body))
    if _is_name(body, matches):
        return False  # "in May", "an A", "The Who": a capital mid-sentence is a name
    words = [m.group().casefold() for m in matches]
    word = words[-1]
    before = words[-2] if len(words) > 1 else ""
    wh_question = question and any(w.split("'")[0] in _WH_WORDS for w in words[:-1])

    if _FILLER.fullmatch(word):
        # "Hmm?" asks what was said; "Mm-hmm." agrees.
        return not question and not (word.startswith("h") and before in ("mm", "m", "uh"))
    if word in _SUBJECT_CONTRACTIONS or word in _FUSED_TO:
        return True
    if word in _SUBJECT_PRONOUNS:
        return before not in _AUXILIARIES
    if word in _AUXILIARIES:
        return not _has_subject(words[:-1])
    if word in _WH_WORDS and question:
        return False  # "When?", "Since when?", "Who?"
    if word in _CONJUNCTIONS:
        return _conjunction_open(word, before, question=question)
    if word == "that":
        return before in _THAT_OPENERS
    if word in _PREPOSITIONS:
        if wh_question and (word == "like" or _strands(before)):
            return False  # "What are you talking about?", "Where are you from?"
        if word == "of" and before in _HEDGES:
            return not all(w in _HEDGE_LEADS for w in words[:-2])  # "Sort of." answers
        return True
    if word in _PARTICLES:
        return not wh_question and before not in _PARTICLE_HOSTS
    if word in _DETERMINERS:
        return True
    if word in _GAP_VERBS and not wh_question:
        if before == "to" and len(words) > 2 and words[-3] in _TO_CONTROLLERS:
            return True  # "I would like to know."
        if before in _FUSED_TO:
            return True  # "I wanna know"
        if not question and _inverted(words[:-1]):
            return True  # "Can you tell", "Do you know." ("Do you know?" asks)
    if word in _FIRST_PERSON_OBJECTS and before in _DITRANSITIVE:
        return not wh_question  # "Can you tell me." / "What did you tell me?"
    if (before, word) in _FILLER_PHRASES and not question:
        lead = body[: matches[-2].start()].rstrip()
        return len(words) == 2 or lead[-1:] in "," + _DASHES or words[-3] in _FILLER_LEADS
    return False


def _strands(before: str) -> bool:
    """Whether a wh-question's last preposition can be stranded after ``before``: after a
    verb or a pronoun ("talking about?", "you from?", "give it to?"), not after a noun
    ("What is the capital city of?" is a question cut short, or a recogniser's guess)."""
    return before in _STRANDING_HOSTS or before in _AUX_SUBJECTS or before.endswith(("ing", "ed"))


def _is_name(body: str, matches: list[re.Match[str]]) -> bool:
    """A capitalised last word that does not open a sentence: a name, not a function word.
    "I" and its contractions are always capitalised."""
    last = matches[-1].group()
    if not last[0].isupper() or last == "I" or last.startswith("I'") or len(matches) == 1:
        return False
    gap = body[matches[-2].end() : matches[-1].start()]
    return not any(c in _TERMINAL for c in gap)


def _has_subject(words: list[str]) -> bool:
    """Whether the auxiliary after ``words`` has its subject (or "not") just before it,
    past adverbs and other auxiliaries: "I do", "It is", "I could have", "may not"."""
    for word in reversed(words):
        if word in _AUX_SUBJECTS or word in _SUBJECT_CONTRACTIONS or word == "not":
            return True
        if word not in _AUX_ADVERBS and word not in _AUXILIARIES:
            return False
    return False


def _conjunction_open(word: str, before: str, *, question: bool) -> bool:
    if word == "so":
        return not question and before not in _SO_COMPLETERS
    if word == "while":
        return before not in _WHILE_NOUN
    if word == "if":
        return before not in _IF_COMPLETERS
    if word == "since":
        return before not in _SINCE_COMPLETERS
    if word == "because":
        return before not in _BECAUSE_COMPLETERS
    if word == "then":
        return before in _THEN_OPENERS
    return True


def _inverted(words: list[str]) -> bool:
    """Whether ``words`` end with an inverted auxiliary and subject: "Can you",
    "Could you please", "Do they"."""
    i = len(words) - 1
    while i >= 0 and words[i] in _SOFTENERS:
        i -= 1
    return i >= 1 and words[i] in _AUX_SUBJECTS and words[i - 1] in _AUXILIARIES
