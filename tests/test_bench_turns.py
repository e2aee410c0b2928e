"""The turn-detection benchmark's counting, statistics and tables, on made-up results (no
models, no network)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bench.transcript import SENTENCES
from bench.turns import (
    BASELINE,
    DEFAULT,
    FALSE_END_SETUPS,
    FIXED_FALSE_END_CLIENTS,
    LATENCY_SETUPS,
    PARTIALS_OFF,
    PARTIALS_ON,
    PAUSED_SENTENCES,
    SPEAKERS,
    TEXT,
    Clip,
    ClipKind,
    Partial,
    PassResult,
    Played,
    caption_faults,
    false_end_summary,
    false_end_table,
    latency_summary,
    latency_table,
    on_off_table,
    partials_table,
    pause_point,
    plan_passes,
    summarise,
    targets,
    versus,
    wilson,
)


def normalise(text: str) -> str:
    return " ".join(text.lower().replace(",", "").replace(".", "").replace("?", "").split())


def played(
    setup: str = BASELINE.name,
    *,
    kind: ClipKind = "complete",
    reference: str = "set a timer",
    finals: tuple[str, ...] = ("Set a timer.",),
    turns: int | None = None,
    final_ms: float | None = 900.0,
    delta_ms: float | None = 1100.0,
    pause_ms: int | None = None,
    speakers: int = 1,
    end_of_turn: tuple[str, ...] | None = None,
    partials: tuple[Partial, ...] = (),
) -> Played:
    count = len(finals) if turns is None else turns
    return Played(
        setup,
        kind,
        0,
        0,
        speakers,
        reference,
        pause_ms,
        utterances=count,
        turns=count,
        end_of_turn=list(end_of_turn or ("silence",) * count),
        finals=list(finals),
        eos_to_final_ms=final_ms if finals else None,
        eos_to_first_delta_ms=delta_ms if finals else None,
        partials=list(partials),
    )


def test_pause_point_counts_the_words_before_the_bar() -> None:
    marked = "Set an alarm for | half past six."
    assert pause_point(marked) == ("Set an alarm for half past six.", 4)
    for bad in ("no bar here", "| at the start", "at the end |", "two | bars | here"):
        with pytest.raises(ValueError, match=re.escape("one '|'")):
            pause_point(bad)


def test_every_paused_sentence_is_new_and_breaks_off_unfinished() -> None:
    texts = [pause_point(marked)[0] for marked in PAUSED_SENTENCES]
    assert len(set(texts)) == len(texts) >= 12
    assert not set(texts) & set(SENTENCES)
    endings = {"for", "the", "my", "know", "to", "with", "of", "near", "me", "between"}
    for marked in PAUSED_SENTENCES:
        assert marked.partition("|")[0].split()[-1].lower() in endings, marked


def test_wilson_interval() -> None:
    assert wilson(0, 0) is None
    expected = {(0, 10): (0.0, 0.2775), (5, 10): (0.2366, 0.7634), (10, 10): (0.7225, 1.0)}
    for (k, n), (low, high) in expected.items():
        interval = wilson(k, n)
        assert interval is not None
        assert interval[0] == pytest.approx(low, abs=1e-3)
        assert interval[1] == pytest.approx(high, abs=1e-3)


def test_a_split_is_two_or_more_turns_and_is_counted_per_pause() -> None:
    runs = [
        played(kind="paused", pause_ms=400, finals=("Set a timer.",)),
        played(kind="paused", pause_ms=400, finals=("Set a", "timer.")),
        played(kind="paused", pause_ms=800, finals=("Set", "a", "timer")),
        # Two turns, the second one empty to ASR: still a split, and nothing missed.
        played(kind="paused", pause_ms=800, finals=("Set a timer.",), turns=2),
        played(kind="paused", pause_ms=800, finals=()),
    ]
    s = false_end_summary(runs, normalise)
    assert (s["n"], s["split"], s["missed"]) == (5, 3, 1)
    assert s["rate"] == pytest.approx(0.6)
    assert s["by_pause_ms"] == {"400": {"n": 2, "split": 1}, "800": {"n": 3, "split": 2}}
    assert s["end_of_turn"] == {"silence": 8}
    # Joined finals are whole; the missed clip's three words are all errors.
    assert s["wer_joined"] == pytest.approx(3 / 15)


def test_latency_summary_percentiles_and_misses() -> None:
    runs = [played(final_ms=float(ms), delta_ms=float(ms) + 200) for ms in range(100, 1100, 100)]
    runs.append(played(finals=()))
    runs.append(played(finals=("Set a", "timer"), end_of_turn=("text", "model")))
    s = latency_summary(runs, normalise)
    assert (s["n"], s["missed"], s["split"]) == (12, 1, 1)
    final = s["eos_to_final_ms"]
    assert final["n"] == 11
    assert final["p50"] == pytest.approx(600.0)
    assert s["eos_to_first_delta_ms"]["p50"] == pytest.approx(800.0)
    assert s["end_of_turn"] == {"silence": 10, "text": 1, "model": 1}
    assert s["wer"] == pytest.approx(3 / 36)


def test_caption_faults_per_utterance() -> None:
    def p(utterance: str, text: str, stable: int) -> Partial:
        return Partial(1000.0, utterance, text, stable)

    good = [p("u1", "Set a", 0), p("u1", "Set a timer", 6), p("u2", "Hello", 0)]
    assert caption_faults(good) == (0, 0)
    shrank = [p("u1", "Set a timer", 6), p("u1", "Set a timer for", 4)]
    assert caption_faults(shrank) == (1, 0)
    rewritten = [p("u1", "Set a timer", 6), p("u1", "Sit a timer for", 8)]
    assert caption_faults(rewritten) == (0, 1)
    # Another utterance starting again from nothing is not a shrink.
    assert caption_faults([p("u1", "Set a timer", 6), p("u2", "Hi", 0)]) == (0, 0)


def test_versus_shows_the_difference_from_the_baseline() -> None:
    assert versus(480.0, 950.0, suffix=" ms") == "480 ms (-470)"
    assert versus(3.25, 3.0, 1, "%") == "3.2% (+0.2)"
    assert versus(950.0, None, suffix=" ms") == "950 ms"
    assert versus(None, 950.0) == "-"


def test_latency_table_puts_the_baseline_first_and_others_against_it() -> None:
    summaries = {
        BASELINE.name: latency_summary([played(final_ms=950.0)], normalise),
        DEFAULT.name: latency_summary([played(DEFAULT.name, final_ms=480.0)], normalise),
    }
    lines = latency_table(summaries, BASELINE.name).splitlines()
    assert len(lines) == 4
    assert lines[2].startswith(f"| {BASELINE.name} | 1 | 0 | 0 | 950 ms | 950 ms |")
    assert f"| {DEFAULT.name} | 1 | 0 | 0 | 480 ms (-470) |" in lines[3]


def clip(kind: ClipKind, text: str, pause_ms: int | None = None) -> Clip:
    return Clip(kind, text, np.zeros(1600, dtype=np.float32), pause_ms)


def test_plan_passes() -> None:
    complete = [clip("complete", f"c{i}") for i in range(5)]
    paused = [clip("paused", f"p{i}", 400) for i in range(7)]
    passes = plan_passes(complete, paused, rounds=3)
    one = [p for p in passes if len(p.plans) == 1]
    assert [p.setup for p in one] == list(LATENCY_SETUPS)
    for p in one:
        # Turn detection hears the paused clips in the same session; fixed does not.
        wants_paused = p.setup in FALSE_END_SETUPS and p.setup.turn_detection != "fixed"
        assert len(p.plans[0]) == len(complete) + (len(paused) if wants_paused else 0)
    fixed = [p for p in passes if len(p.plans) == FIXED_FALSE_END_CLIENTS]
    assert {p.setup.name for p in fixed} == {"fixed 200", "fixed 500"}
    for p in fixed:
        assert sorted(c.text for plan in p.plans for c in plan) == sorted(c.text for c in paused)
    crowd = [p for p in passes if len(p.plans) == SPEAKERS]
    assert [p.setup for p in crowd] == [PARTIALS_ON, PARTIALS_OFF]
    for p in crowd:
        assert all(len(plan) == 3 for plan in p.plans)
        # Each round the speakers say different sentences.
        for k in range(3):
            assert len({plan[k].text for plan in p.plans}) == SPEAKERS


def test_summary_targets_and_tables_from_made_up_passes() -> None:
    partial = (Partial(1100.0, "u1", "Set a", 0), Partial(1900.0, "u1", "Set a timer", 6))
    one = PassResult(BASELINE.name, 1, [played(final_ms=950.0, delta_ms=1150.0)])
    default = PassResult(
        DEFAULT.name,
        1,
        [
            played(DEFAULT.name, final_ms=450.0, delta_ms=560.0, partials=partial),
            played(DEFAULT.name, kind="paused", pause_ms=600, finals=("Set a", "timer")),
            played(DEFAULT.name, kind="paused", pause_ms=600),
        ],
    )
    off = PassResult(PARTIALS_OFF.name, 1, [played(PARTIALS_OFF.name, final_ms=460.0)])
    on = PassResult(
        PARTIALS_ON.name, 1, [played(PARTIALS_ON.name, final_ms=450.0, partials=partial)]
    )
    crowd_on = PassResult(
        PARTIALS_ON.name, 4, [played(PARTIALS_ON.name, speakers=4, final_ms=800.0)]
    )
    crowd_off = PassResult(
        PARTIALS_OFF.name, 4, [played(PARTIALS_OFF.name, speakers=4, final_ms=700.0)]
    )
    text = PassResult(TEXT.name, 1, [])  # a pass that heard nothing
    summary = summarise([one, default, off, on, crowd_on, crowd_off, text], normalise)

    assert summary["latency"][TEXT.name]["n"] == 0
    assert summary["false_ends"][DEFAULT.name]["split"] == 1
    assert summary["partials"]["1"]["with_partial"] == 1
    assert summary["partials"]["1"]["start_to_first_partial_ms"]["p50"] == 1100.0
    verdicts = {label.split(":")[0]: met for label, met, _ in targets(summary)}
    assert verdicts == {
        "EoS→final p50 ≤ 500 ms": True,
        "EoS→final p95 ≤ 700 ms": True,
        "EoS→first reply.delta p50 ≤ 600 ms": True,
        "false ends (default) ≤ 5%": False,
        "WER ≤ fixed 500 + 0.5 points": True,
        "first partial ≤ 1200 ms after speech starts (p95)": True,
        "finals with partials on no slower than off, 1 speaker(s) (p50 within 20 ms)": True,
        "finals with partials on no slower than off, 4 speaker(s) (p50 within 20 ms)": False,
    }
    assert "| text | 0 | 0 | 0 | - |" in latency_table(summary["latency"], BASELINE.name)
    falses = false_end_table(summary["false_ends"])
    assert f"| {DEFAULT.name} | 2 | 1 | 50.0% | 9-91% | 1/2 |" in falses
    assert "| 1 | 1 | 1 | 2 | 1100 ms |" in partials_table(summary["partials"])
    assert "| 4 | 1/1 | 800 ms | 700 ms | +100 |" in on_off_table(summary["partials_on_off"])
