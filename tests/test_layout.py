"""The layering the code relies on, checked from the source: lower packages never import
``gateway``, and the conversation core never imports aiohttp (the HTTP edge's concern)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(package: str) -> dict[str, set[str]]:
    """Every module each file of ``package`` imports, deferred imports included."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(package: str, forbidden: str) -> list[str]:
    return [
        f"{path} imports {name}"
        for path, names in imported_modules(package).items()
        for name in sorted(names)
        if name == forbidden or name.startswith(forbidden + ".")
    ]


@pytest.mark.parametrize("package", ["signalling", "media", "certs"])
def test_lower_layers_do_not_import_gateway(package: str) -> None:
    assert offenders(package, "gateway") == []


def test_the_conversation_does_not_import_aiohttp() -> None:
    assert offenders("gateway/conversation", "aiohttp") == []


def test_bench_does_not_import_tests() -> None:
    assert offenders("bench", "tests") == []
