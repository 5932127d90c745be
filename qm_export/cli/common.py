"""Shared CLI plumbing: consoles and the one boundary where library errors become CLI errors.

Exit codes, the same for every command: 0 success, 1 a failure the command found (parity,
a runtime that failed, a missing package), 2 bad input (usage, arguments, files), 130
interrupted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from ..errors import SourceError

__all__ = ["console", "fail_on", "SourceError", "InputError"]


class InputError(click.ClickException):
    """A user's input that cannot be used: one line on stderr, exit code 2."""

    exit_code = 2


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
    except OutputPathError as exc:  # the message names the path and the option
        raise InputError(str(exc)) from None
    except SourceError as exc:
        raise click.BadParameter(str(exc), param_hint="'SOURCE'") from None
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise InputError(str(exc)) from None
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
