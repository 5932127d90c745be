"""Exceptions the CLI maps to clean errors (all are ``ValueError`` subclasses)."""

from __future__ import annotations

__all__ = ["SourceError", "first_line"]


class SourceError(ValueError):
    """A SOURCE that names no recipe, recipe file or supported model folder."""


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (its type's name when the message is empty): what a
    one-line error quotes from a third-party exception."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
