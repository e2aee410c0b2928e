"""ASR alone: latency and real-time factor per engine, model and device on fixed clips.

The clips are the committed speech in ``tests/data`` and Piper speech of about 1, 3, 8 and
20 s (sentences joined, each with the committed clips' 0.3 s lead and 0.2 s trail of
silence). Each engine is called as the gateway's ASR worker calls it
(:meth:`ASREngine.transcribe`, greedy, no timestamps); after a warm-up, every clip is
transcribed ``--repeat`` times. RTF is latency / audio length (below 1 is faster than real
time). Both engines of a model are loaded together and their calls interleave, clip by clip
and repetition by repetition, so that both see the same load on a shared machine;
faster-whisper is the baseline and the ratio column is openai-whisper's p50 over it.

Batching (openai-whisper on CUDA only; it would only queue on a CPU): ``whisper.decode``
takes a batch of log-mel windows, so one call can serve many utterances, e.g. one per
session. Each batch holds the short clips (1-3 s, what a person says to an assistant)
in turn; the figure to read is the batch's latency against a single utterance's.

A model that is not the bundled ``tiny.en`` is a name that each library downloads on
first use (or a local path); one that cannot load is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    Benchmark,
    Recording,
    fmt,
    markdown_table,
    percentile,
    write_json,
)
from bench.transcript import Normaliser, english_normaliser, make_sentences, score
from gateway.errors import ModelLoadError
from gateway.ops.config import ASR_DEVICES, ASR_ENGINES
from gateway.testing.loopback import DATA, read_wav
from media import Float32Array
from media.asr.base import ASREngine, default_language, resolve_device
from media.asr.engines import OpenAIWhisperEngine, load_engine
from media.asr.filters import clean_transcript

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
BASELINE = "faster-whisper"
DEFAULT_MODELS = "tiny.en"
DEFAULT_BATCHES = "1,8,32"
REPEAT = 10
QUICK_REPEAT = 3
# The first calls pay lazy set-up (allocator growth, CUDA kernels and autotuning).
WARMUP_CALLS = 2
# Batches are made of clips up to this long: utterance-sized, so that a batch's cost is
# not set by one 20 s clip's many tokens.
BATCH_CLIP_MAX_S = 5.0

# Piper clips: (name, sentences joined in order). Lengths with Piper's bundled voice:
# 1.1, 3.1, 7.7 and 19.3 s.
PIPER_CLIPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("piper-1s", ("Good morning.",)),
    ("piper-3s", ("Add milk, eggs and bread to my shopping list.",)),
    (
        "piper-8s",
        (
            "Book a table for four people at the Italian restaurant on Friday evening, please.",
            "Send a message to Sarah saying I'm running late.",
        ),
    ),
    (
        "piper-20s",
        (
            "Explain how a rainbow forms in simple terms that a child could understand.",
            "How far is it from London to Edinburgh?",
            "Play some relaxing music in the living room.",
            "How many tablespoons are there in a cup?",
            "Wake me up at seven tomorrow morning.",
            "Summarise the last email from my manager.",
            "Turn the thermostat down by two degrees.",
        ),
    ),
)


@dataclass(frozen=True)
class Clip:
    name: str
    text: str
    audio: Float32Array  # 16 kHz mono

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass
class Calls:
    """One engine's repeated calls on one clip."""

    latency_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # this process's CPU time per call
    text: str = ""


@dataclass
class Loaded:
    engine: ASREngine
    load_s: float
    warmup_ms: list[float]


# --- clips ---


def make_clips() -> list[Clip]:
    """The committed speech clips, then the Piper ones; the same every run."""
    manifest = json.loads((DATA / "speech.json").read_text(encoding="utf-8"))
    clips = [
        Clip(Path(c["file"]).stem, c["text"], read_wav(DATA / c["file"]))
        for c in manifest["clips"]
        if c["text"]  # noise.wav has no speech to time
    ]
    texts = [t for _, sentences in PIPER_CLIPS for t in sentences]
    spoken = {s.text: s.audio for s in make_sentences(texts)}
    for name, sentences in PIPER_CLIPS:
        audio = np.concatenate([spoken[t] for t in sentences]).astype(np.float32)
        clips.append(Clip(name, " ".join(sentences), audio))
    return clips


# --- one call at a time ---


def timed_call(engine: ASREngine, clip: Clip) -> tuple[float, float, str]:
    """(wall ms, CPU ms, text). On CUDA the result is text, so the GPU has finished."""
    cpu, started = time.process_time(), time.perf_counter()
    result = engine.transcribe(clip.audio, None)
    wall_ms = 1000 * (time.perf_counter() - started)
    return wall_ms, 1000 * (time.process_time() - cpu), clean_transcript(result)


def load(name: str, model: str, device: str, warmup: Clip) -> Loaded:
    started = time.perf_counter()
    engine = load_engine(name, model, device)
    load_s = time.perf_counter() - started
    warmup_ms = [timed_call(engine, warmup)[0] for _ in range(WARMUP_CALLS)]
    return Loaded(engine, load_s, warmup_ms)


def measure_clips(
    engines: dict[str, Loaded], clips: Sequence[Clip], repeat: int
) -> dict[tuple[str, str], Calls]:
    """(engine, clip) → calls; engines alternate call by call."""
    out = {(name, clip.name): Calls() for name in engines for clip in clips}
    for clip in clips:
        for _ in range(repeat):
            for name, loaded in engines.items():
                wall_ms, cpu_ms, text = timed_call(loaded.engine, clip)
                calls = out[name, clip.name]
                calls.latency_ms.append(wall_ms)
                calls.cpu_ms.append(cpu_ms)
                calls.text = text
    return out


# --- batching (openai-whisper) ---


def measure_batches(
    engine: OpenAIWhisperEngine, clips: Sequence[Clip], sizes: Sequence[int], repeat: int
) -> list[dict[str, Any]]:
    """One ``whisper.decode`` call per batch: log-mel of each utterance on the device, then
    greedy decoding of all together. Repetition ``r`` of size ``b`` takes clips
    ``r*b, r*b+1, ...`` round the list, so batch 1 visits every clip too."""
    import torch  # deferred: only this path needs torch directly
    import whisper

    model: Any = engine._model  # the loaded whisper.Whisper; the engine exposes no other
    device = model.device
    options = whisper.DecodingOptions(
        language=default_language(engine.languages, "en"),  # every clip is English
        temperature=0.0,
        without_timestamps=True,
        fp16=device.type == "cuda",
    )
    windows = [whisper.pad_or_trim(clip.audio) for clip in clips]  # 30 s, as transcribe pads

    def decode(batch: Sequence[Float32Array]) -> tuple[float, list[Any]]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        mels = torch.stack(
            [whisper.log_mel_spectrogram(a, model.dims.n_mels, device=device) for a in batch]
        )
        results: list[Any] = whisper.decode(model, mels, options)
        # The results are Python lists of tokens: the GPU has finished by now.
        return 1000 * (time.perf_counter() - started), results

    rows: list[dict[str, Any]] = []
    for size in sizes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        decode([windows[i % len(windows)] for i in range(size)])  # a new shape: warm up
        latency, tokens = [], []
        text = ""
        for r in range(repeat):
            batch = [windows[(r * size + i) % len(windows)] for i in range(size)]
            ms, results = decode(batch)
            latency.append(ms)
            tokens.append(float(np.mean([len(res.tokens) for res in results])))
            text = str(results[0].text).strip()
        rows.append(
            {
                "batch": size,
                "latency_ms": latency,
                "p50_ms": percentile(latency, 50),
                "p95_ms": percentile(latency, 95),
                "tokens_per_utterance": float(np.mean(tokens)),
                "peak_gpu_mib": (
                    torch.cuda.max_memory_allocated(device) / 2**20
                    if device.type == "cuda"
                    else None
                ),
                "sample_text": text,
            }
        )
    single = rows[0]["p50_ms"] if rows and rows[0]["batch"] == 1 else None
    for row in rows:
        p50 = row["p50_ms"]
        row["per_utterance_ms"] = p50 / row["batch"]
        row["vs_batch_1"] = p50 / single if single else None
    return rows


# --- one model ---


def run_model(
    model: str,
    engine_names: Sequence[str],
    device: str,
    clips: Sequence[Clip],
    repeat: int,
    batch_sizes: Sequence[int],
    batch_only: bool,
    normalise: Normaliser,
) -> dict[str, Any]:
    """Everything measured for one model; the engines are dropped before the next."""
    warmup = next(c for c in clips if c.name == "piper-3s")
    loaded: dict[str, Loaded] = {}
    notes: list[str] = []
    loads: dict[str, Any] = {}
    for name in engine_names:
        print(f"{name} {model} on {device}: loading…", flush=True)
        try:
            loaded[name] = engine = load(name, model, device, warmup)
        except (ModelLoadError, OSError, RuntimeError, ValueError) as exc:
            # A name that needs the network (or a CUDA build) that is not here: the others
            # still get measured.
            notes.append(f"{name} {model}: skipped, cannot load: {exc}")
            loads[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        loads[name] = {"load_s": round(engine.load_s, 2), "warmup_ms": engine.warmup_ms}

    records: list[dict[str, Any]] = []
    if loaded and not batch_only:
        print(
            f"{model}: {len(clips)} clips x {repeat} calls x {len(loaded)} engine(s)…", flush=True
        )
        calls = measure_clips(loaded, clips, repeat)
        for name in loaded:
            for clip in clips:
                c = calls[name, clip.name]
                p50 = percentile(c.latency_ms, 50)
                base = calls.get((BASELINE, clip.name))
                base_p50 = percentile(base.latency_ms, 50) if base else None
                records.append(
                    {
                        "engine": name,
                        "model": model,
                        "device": device,
                        "clip": clip.name,
                        "audio_s": round(clip.duration_s, 3),
                        "latency_ms": [round(v, 2) for v in c.latency_ms],
                        "cpu_ms": [round(v, 2) for v in c.cpu_ms],
                        "p50_ms": p50,
                        "p95_ms": percentile(c.latency_ms, 95),
                        "rtf_p50": None if p50 is None else p50 / 1000 / clip.duration_s,
                        "cpu_ms_p50": percentile(c.cpu_ms, 50),
                        "vs_baseline": (
                            p50 / base_p50
                            if name != BASELINE and p50 is not None and base_p50
                            else None
                        ),
                        "reference": clip.text,
                        "text": c.text,
                        **score(clip.text, c.text, normalise),
                    }
                )

    batches: list[dict[str, Any]] = []
    openai = loaded.get("openai-whisper")
    if batch_sizes and openai is not None:
        if device != "cuda":
            notes.append(f"openai-whisper {model}: batching skipped on CPU (CUDA only)")
        else:
            assert isinstance(openai.engine, OpenAIWhisperEngine)
            short = [c for c in clips if c.duration_s <= BATCH_CLIP_MAX_S]
            print(f"{model}: batches {list(batch_sizes)} x {repeat} calls…", flush=True)
            batches = measure_batches(openai.engine, short, batch_sizes, repeat)
    loaded.clear()
    _free_gpu(device)
    return {"model": model, "loads": loads, "records": records, "batches": batches, "notes": notes}


def _free_gpu(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()  # the next (larger) model gets the memory back


# --- output ---


def clip_table(records: Sequence[dict[str, Any]]) -> str:
    header = (
        "engine",
        "model",
        "device",
        "clip",
        "audio",
        "p50",
        "p95",
        "RTF p50",
        f"vs {BASELINE}",
        "CPU p50",
        "WER",
    )
    rows = [
        [
            r["engine"],
            r["model"],
            r["device"],
            r["clip"],
            fmt(r["audio_s"], 1, " s"),
            fmt(r["p50_ms"], suffix=" ms"),
            fmt(r["p95_ms"], suffix=" ms"),
            fmt(r["rtf_p50"], 3),
            "baseline" if r["engine"] == BASELINE else fmt(r["vs_baseline"], 2, "x"),
            fmt(r["cpu_ms_p50"], suffix=" ms"),
            fmt(100 * r["wer"], 1, "%"),
        ]
        for r in records
    ]
    return markdown_table(header, rows)


def engine_summary(models: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for m in models:
        for name, info in m["loads"].items():
            recs = [r for r in m["records"] if r["engine"] == name]
            ratios = [r["vs_baseline"] for r in recs if r["vs_baseline"]]
            words = sum(r["ref_words"] for r in recs)
            out.append(
                {
                    "engine": name,
                    "model": m["model"],
                    "error": info.get("error"),
                    "load_s": info.get("load_s"),
                    "warmup_first_ms": (info.get("warmup_ms") or [None])[0],
                    "rtf_median": percentile([r["rtf_p50"] for r in recs], 50),
                    "vs_baseline_geomean": (
                        float(np.exp(np.mean(np.log(ratios)))) if ratios else None
                    ),
                    "wer_corpus": (sum(r["word_errors"] for r in recs) / words if words else None),
                }
            )
    return out


def summary_table(summary: Sequence[dict[str, Any]]) -> str:
    header = (
        "engine",
        "model",
        "load",
        "first call",
        "RTF (median of clips)",
        "vs baseline",
        "WER",
    )
    rows = []
    for s in summary:
        if s["error"]:
            rows.append([s["engine"], s["model"], "not loaded", "-", "-", "-", "-"])
            continue
        rows.append(
            [
                s["engine"],
                s["model"],
                fmt(s["load_s"], 1, " s"),
                fmt(s["warmup_first_ms"], suffix=" ms"),
                fmt(s["rtf_median"], 3),
                "baseline" if s["engine"] == BASELINE else fmt(s["vs_baseline_geomean"], 2, "x"),
                fmt(None if s["wer_corpus"] is None else 100 * s["wer_corpus"], 1, "%"),
            ]
        )
    return markdown_table(header, rows)


def batch_table(models: Sequence[dict[str, Any]]) -> str:
    header = ("model", "batch", "p50", "p95", "per utterance", "vs batch 1", "tokens/utt", "GPU")
    rows = [
        [
            m["model"],
            str(b["batch"]),
            fmt(b["p50_ms"], suffix=" ms"),
            fmt(b["p95_ms"], suffix=" ms"),
            fmt(b["per_utterance_ms"], 1, " ms"),
            fmt(b["vs_batch_1"], 2, "x"),
            fmt(b["tokens_per_utterance"], 1),
            fmt(b["peak_gpu_mib"], suffix=" MiB"),
        ]
        for m in models
        for b in m["batches"]
    ]
    return markdown_table(header, rows)


# --- the subcommand ---


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=(*ASR_ENGINES, "both"),
        default="both",
        help="which ASR engine to measure (default both; faster-whisper is the baseline)",
    )
    parser.add_argument(
        "--models",
        type=_names,
        default=_names(DEFAULT_MODELS),
        metavar="A,B",
        help="models, comma-separated (default tiny.en, bundled); other names are downloaded "
        "on first use, or give local paths",
    )
    parser.add_argument(
        "--device",
        choices=ASR_DEVICES,
        default="auto",
        help="cpu, cuda, or auto: CUDA when torch sees a GPU (default auto)",
    )
    parser.add_argument(
        "--repeat",
        type=_positive,
        default=None,
        metavar="N",
        help=f"timed calls per clip and per batch size (default {REPEAT}, {QUICK_REPEAT} "
        "with --quick)",
    )
    parser.add_argument(
        "--batch",
        dest="batches",
        type=_sizes,
        default=_sizes(DEFAULT_BATCHES),
        metavar="1,8,32",
        help="openai-whisper batch sizes, CUDA only (default %(default)s); '' for none",
    )
    parser.add_argument(
        "--batch-only",
        action="store_true",
        help="measure batching alone (openai-whisper on CUDA), not the per-clip latencies",
    )


def run(args: argparse.Namespace) -> int:
    repeat: int = args.repeat or (QUICK_REPEAT if args.quick else REPEAT)
    engine_names = list(ASR_ENGINES if args.engine == "both" else (args.engine,))
    if args.batch_only:
        engine_names = ["openai-whisper"]
    device = resolve_device(args.device)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: torch sees no CUDA device (a CPU build, or no driver)")
            return 1
    recording = Recording("asr")

    print("synthesising the Piper clips…", flush=True)
    clips = make_clips()
    normalise = english_normaliser()
    models = [
        run_model(
            model, engine_names, device, clips, repeat, args.batches, args.batch_only, normalise
        )
        for model in args.models
    ]
    records = [r for m in models for r in m["records"]]
    notes = [n for m in models for n in m["notes"]]
    summary = engine_summary(models)

    machine = recording.machine_after()
    if device == "cuda":
        import torch

        machine["gpu"] = torch.cuda.get_device_name(0)
    out_path: Path = args.out / "asr.json"
    write_json(
        out_path,
        {
            **recording.header(machine),
            "settings": {
                "quick": args.quick,
                "engines": engine_names,
                "models": args.models,
                "device": device,
                "repeat": repeat,
                "warmup_calls": WARMUP_CALLS,
                "batches": args.batches,
                "batch_only": args.batch_only,
                "baseline": BASELINE,
                "clips": [
                    {"name": c.name, "audio_s": round(c.duration_s, 3), "text": c.text}
                    for c in clips
                ],
            },
            "summary": summary,
            "records": records,
            "batches": [{"model": m["model"], "rows": m["batches"]} for m in models],
            "notes": notes,
        },
    )

    print()
    where = machine.get("gpu") or f"{machine['cpus_usable']} CPUs"
    print(
        f"{device} ({where}), {repeat} calls per clip after {WARMUP_CALLS} warm-up, "
        f"load average {machine['load_average'][0]:.2f}"
    )
    if records:
        print(clip_table(records))
        print()
        print(summary_table(summary))
    if any(m["batches"] for m in models):
        print()
        print("openai-whisper batched decoding (one whisper.decode call per batch)")
        print(batch_table(models))
    for note in notes:
        print(f"- {note}")
    print(f"\nwrote {out_path}")
    return 0 if records or any(m["batches"] for m in models) else 1


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one model")
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _sizes(text: str) -> list[int]:
    return [_positive(n) for n in text.split(",") if n.strip()]


BENCHMARK = Benchmark(
    name="asr",
    help="ASR latency and real-time factor per engine and model on fixed clips "
    "(CPU or CUDA), with openai-whisper batching on CUDA",
    add_arguments=add_arguments,
    run=run,
)
