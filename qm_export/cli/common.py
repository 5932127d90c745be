"""Shared CLI plumbing: consoles, progress, verdicts, ``--json``, and the one boundary where
library errors become CLI errors.

Exit codes, the same for every command, one per class:

====  ===========================================================  ==========================
code  what                                                          last line on stderr
====  ===========================================================  ==========================
0     success                                                       ``PASSED: ...`` (something
                                                                    was checked) or ``DONE: ...``
1     a failure the command found: parity, a runtime that failed,   ``FAILED: ...``
      the ONNX checker, TensorRT or a package missing
2     bad input: usage, arguments, files (named in the message)     ``Error: ...`` (click's)
130   interrupted (SIGINT, Ctrl-C); nothing partial is left         ``interrupted``
====  ===========================================================  ==========================

Human output goes to stderr; stdout carries only the ``--json`` document, also on failure
(``{"passed": false, "error": "<the one-line message>", ...}``, written by
:class:`QmExportGroup` in ``cli/__init__.py``).
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from ..errors import SourceError

__all__ = [
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_INPUT",
    "EXIT_INTERRUPTED",
    "CommandFailed",
    "InputError",
    "Interrupted",
    "SourceError",
    "console",
    "emit_json",
    "fail_on",
    "status",
    "verdict",
]

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class InputError(click.ClickException):
    """A user's input that cannot be used: one line on stderr (``Error: ...``), exit code 2."""

    exit_code = EXIT_INPUT


class CommandFailed(click.ClickException):
    """A failure the command found (parity, a runtime, a missing package): ``FAILED: ...`` on
    stderr, exit code 1.

    Args:
        message: the one-line reason (``--json``'s ``error``).
        report: the command's report, printed as the ``--json`` document (``passed`` false,
            ``error`` added).
        shown: the verdict line was printed already (e.g. by the command's own report).
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, report: dict[str, Any] | None = None, shown: bool = False) -> None:
        super().__init__(message)
        self.report = report
        self.shown = shown

    def show(self, file: Any = None) -> None:
        if not self.shown:
            verdict(console(), "FAILED", self.format_message())


class Interrupted(click.ClickException):
    """SIGINT (Ctrl-C): ``interrupted`` on stderr, exit code 130."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self) -> None:
        super().__init__("interrupted")

    def show(self, file: Any = None) -> None:
        click.echo("interrupted", err=True)


class _Invocation:
    """What the current command line asked for: ``--json``, and whether its document was written."""

    json_mode = False
    json_emitted = False


_INVOCATION = _Invocation()


def begin(json_mode: bool) -> None:
    """Start of one command line (``QmExportGroup.main``)."""
    _INVOCATION.json_mode = json_mode
    _INVOCATION.json_emitted = False


def emit_json(doc: Any) -> None:
    """The ``--json`` document on stdout (once; nothing else goes to stdout)."""
    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
    _INVOCATION.json_emitted = True


def show_error(exc: click.ClickException) -> None:
    """Show ``exc`` on stderr as one line. A usage error (a bad option or argument) is
    ``Error: <message> (see 'qm-export CMD --help')`` instead of click's usage block and hint
    lines; every other error shows itself (``FAILED: ...``, ``Error: ...``, ``interrupted``)."""
    if isinstance(exc, click.UsageError):
        ctx = exc.ctx
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = " ".join(exc.format_message().split())
        click.echo(f"Error: {message}{hint}", err=True)
        return
    exc.show()


def emit_json_failure(exc: click.ClickException) -> None:
    """On a failure under ``--json``: ``{"passed": false, "error": ..., **report}`` unless the
    command already wrote its document."""
    if not _INVOCATION.json_mode or _INVOCATION.json_emitted:
        return
    doc: dict[str, Any] = {"passed": False, "error": exc.format_message()}
    report = getattr(exc, "report", None)
    if isinstance(report, dict):
        doc.update({k: v for k, v in report.items() if k not in doc})
    emit_json(doc)


def console(stderr: bool = True):  # -> rich.console.Console (imported lazily)
    """A rich console; progress and tables go to stderr so stdout stays machine-readable."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


_COLORS = {"PASSED": "green", "DONE": "green", "FAILED": "red"}


def verdict(err: Any, word: str, text: str) -> None:
    """The one verdict line that ends a command: ``PASSED: ...``, ``DONE: ...`` or ``FAILED: ...``
    (never wrapped, whatever the width)."""
    from rich.markup import escape

    err.print(f"[bold {_COLORS.get(word, 'red')}]{word}[/]: {escape(text)}", soft_wrap=True)


_COUNTER = re.compile(r"\s*\d+/(\d+|\?)")


@contextlib.contextmanager
def status(err: Any, message: str) -> Iterator[Callable[[str], None]]:
    """Show the work while it happens; yields ``say(message)``.

    On a terminal: a spinner whose text is the latest stage. Elsewhere (a pipe, a CI log): one
    line per stage, with the seconds since the command started (counters such as ``3/15`` do
    not make a new line).
    """
    from rich.markup import escape

    if getattr(err, "is_terminal", False):
        with err.status(escape(message)) as spinner:
            yield lambda msg: spinner.update(escape(msg))
        return
    start = time.perf_counter()
    last: list[str | None] = [None]

    def say(msg: str) -> None:
        key = _COUNTER.sub("", msg)
        if key == last[0]:
            return
        last[0] = key
        err.print(f"[dim]{time.perf_counter() - start:6.1f}s  {escape(msg)}[/]", soft_wrap=True)

    say(message)
    yield say


#: What --merge's help says about its amounts (shared by every command that takes it).
MERGE_HELP = ("LAYER:AMOUNT entries, e.g. '1:0.5,4:0.7' (merge inside LAYER, after its attention), 'embed:0.33' "
              "(merge the embeddings before layer 0, so every layer runs on the merged tokens). AMOUNT: a float in "
              "(0, 1) is a keep ratio, an int a token count: '1:1' keeps one token, '1:1.0' would keep every token "
              "and is refused (use --no-merge for the unmerged model).")


def merge_spec_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Callback of ``--merge``: refuse entries that merge nothing (``1:1.0``), naming them."""
    from ..models.schedule import noop_entries

    if value is None:
        return None
    noops = noop_entries(value)
    if noops:
        entry = noops[0]
        raise click.BadParameter(
            f"{value!r}: the entry {entry!r} is a keep ratio of 1.0, which keeps every token (no merge); "
            f"'{entry.split(':')[0]}:1' (an int) keeps one token; for the unmerged model pass --no-merge",
            ctx=ctx, param=param)
    return value


def _failure_types() -> tuple[type[BaseException], ...]:
    """Library errors that are failures the command found (exit 1), not bad input; only from
    modules already imported (an error of a module that was never imported cannot occur)."""
    types: list[type[BaseException]] = [ImportError]
    for module, name in (("qm_export.export.onnx_export", "ExportCheckError"),
                         ("qm_export.export.verify", "VerifyError"),
                         ("qm_export.validate.compare", "ReferenceFailed"),
                         ("qm_export.trt.prepare", "TensorRTUnavailable"),
                         ("qm_export.trt.prepare", "BuildError")):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            types.append(getattr(mod, name))
    return tuple(types)


@contextlib.contextmanager
def fail_on() -> Iterator[None]:
    """Turn the library's errors into clean CLI errors (no traceback), by class:

    - bad output paths, sources, options and input files -> exit 2 (:class:`InputError`,
      ``BadParameter`` for SOURCE);
    - the ONNX checker, a runtime that cannot run the model, TensorRT or a package missing,
      an OS error while writing (a full disk) -> exit 1 (:class:`CommandFailed`).
    """
    from ..export.files import OutputPathError

    try:
        yield
    except click.ClickException:
        raise
    except OutputPathError as exc:  # the message names the path and the option
        raise InputError(str(exc)) from None
    except SourceError as exc:
        raise click.BadParameter(str(exc), param_hint="'SOURCE'") from None
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            PermissionError) as exc:
        raise InputError(str(exc)) from None
    except MemoryError:  # an allocation the estimates (qm_export.memory) did not foresee
        raise CommandFailed("ran out of memory; try a smaller --batch or --seq-len") from None
    except OSError as exc:  # the disk filled, a device failed: the command could not finish
        where = f" ({exc.filename})" if exc.filename else ""
        raise CommandFailed(f"{exc.strerror or exc}{where}") from None
    except Exception as exc:
        if isinstance(exc, _failure_types()):
            raise CommandFailed(str(exc)) from None
        raise
