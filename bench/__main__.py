"""``python -m bench <benchmark>|all [--quick] [--out DIR] [benchmark options]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import asr, capacity, e2e, loss, media, setup, soak, transcript, turns, voice
from bench.common import Benchmark

logger = logging.getLogger("bench")

# A new benchmark is a module with a BENCHMARK and one entry here.
BENCHMARKS: tuple[Benchmark, ...] = (
    transcript.BENCHMARK,
    turns.BENCHMARK,
    e2e.BENCHMARK,
    setup.BENCHMARK,
    asr.BENCHMARK,
    media.BENCHMARK,
    voice.BENCHMARK,
    loss.BENCHMARK,
    soak.BENCHMARK,
    capacity.BENCHMARK,
)


def build_parser() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument(
        "--quick", action="store_true", help="a smaller run (a smoke test of the numbers)"
    )
    shared.add_argument(
        "--out",
        type=Path,
        default=Path("bench-out"),
        metavar="DIR",
        help="folder for the JSON results (default bench-out/)",
    )
    shared.add_argument(
        "-v", "--verbose", action="store_true", help="log the gateway's INFO messages too"
    )
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run benchmarks: each prints a markdown table and writes DIR/<name>.json.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="BENCHMARK")
    for bench in BENCHMARKS:
        sub = commands.add_parser(
            bench.name, parents=[shared], help=bench.help, description=bench.help
        )
        bench.add_arguments(sub)
    commands.add_parser(
        "all", parents=[shared], help="every benchmark, each with its default options"
    )
    return parser


def with_defaults(bench: Benchmark, args: argparse.Namespace) -> argparse.Namespace:
    """``args`` plus ``bench``'s own options at their defaults (argparse fills only the
    attributes a namespace lacks)."""
    own = argparse.ArgumentParser(add_help=False)
    bench.add_arguments(own)
    return own.parse_args([], namespace=argparse.Namespace(**vars(args)))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    selected = (
        BENCHMARKS if args.command == "all" else [b for b in BENCHMARKS if b.name == args.command]
    )
    status = 0
    for bench in selected:
        try:
            status = max(status, bench.run(with_defaults(bench, args)))
        except KeyboardInterrupt:
            return 130
        except Exception:
            # One broken benchmark should not cost the others' numbers under ``all``.
            logger.exception("benchmark %s failed", bench.name)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
