"""Exceptions the CLI maps to clean errors (all are ``ValueError`` subclasses)."""

from __future__ import annotations

__all__ = ["SourceError"]


class SourceError(ValueError):
    """A SOURCE that names no recipe, recipe file or supported model folder."""
