"""Strict JSON helpers shared by the offer's envelope (:mod:`signalling.offer`) and the
client protocol (:mod:`signalling.protocol`). Pure."""

from __future__ import annotations

from typing import NoReturn


class NonStandardConstant(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity``: Python's json reads them, JSON has none.

    A ``ValueError``, as json's own errors are, so that a caller that catches those catches
    this too; one that wants its own wording catches this first."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is not allowed")
        self.name = name


def reject_constant(name: str) -> NoReturn:
    """``parse_constant`` for ``json.loads``: refuse what is not JSON."""
    raise NonStandardConstant(name)


def json_type(value: object) -> str:
    """The JSON type of a decoded value, with its article: ``"an array"``, ``"null"``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
