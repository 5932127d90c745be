"""Shared CLI plumbing: consoles and the one boundary where library errors become CLI errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from ..errors import SourceError

__all__ = ["console", "fail_on", "SourceError"]


def console(stderr: bool = True):  # -> rich.console.Console (imported lazily)
    """A rich console; progress and tables go to stderr so stdout stays machine-readable."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@contextlib.contextmanager
def fail_on() -> Iterator[None]:
    """Turn the library's input errors into clean CLI errors (no traceback)."""
    from ..export.files import OutputPathError

    try:
        yield
    except click.ClickException:
        raise
    except OutputPathError as exc:
        raise click.BadParameter(str(exc), param_hint="'-o' / '--output'") from None
    except SourceError as exc:
        raise click.BadParameter(str(exc), param_hint="'SOURCE'") from None
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        raise click.ClickException(str(exc)) from None
