"""The ``qm-export`` command line: a click group; each command lives in its own module.

:class:`QmExportGroup` is the one place where a command line ends: the exit code per class of
outcome (see :mod:`.common`), the ``--json`` document on failure, and SIGINT (exit 130, one
line ``interrupted``, no traceback; every writer has removed its partial files by then).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import click

from .. import __version__
from . import common
from .build import build
from .check import check
from .convert import convert
from .fit_prior import fit_prior
from .generate import generate
from .models import models
from .profile import profile
from .run import run
from .serve_bench import serve_bench
from .serve_repo import serve_repo
from .sweep import sweep
from .validate import validate

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}


def _on_sigint(signum: int, frame: Any) -> None:
    # A second Ctrl-C must not cut short the cleanup the first one started.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


class QmExportGroup(click.Group):
    """The ``qm-export`` group: every command's end goes through :meth:`main`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise common.Interrupted() from None

    def json_requested(self, argv: Sequence[str]) -> bool:
        """Whether the command line asks for ``--json`` (of a command that has it); read from
        the arguments, so that errors of parsing them get their JSON document too."""
        args = list(argv)
        for i, arg in enumerate(args):
            if arg == "--":
                return False
            if arg.startswith("-"):
                continue
            command = self.commands.get(arg)
            if command is None:
                return False
            rest = args[i + 1:]
            rest = rest[: rest.index("--")] if "--" in rest else rest
            opts = {opt for param in command.params for opt in getattr(param, "opts", ())}
            return "--json" in opts and "--json" in rest
        return False

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        common.begin(self.json_requested(argv))
        handler = None
        if threading.current_thread() is threading.main_thread():
            handler = signal.signal(signal.SIGINT, _on_sigint)
        try:
            try:
                rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            except (click.Abort, KeyboardInterrupt):
                exc: click.ClickException = common.Interrupted()
                exc.show()
                common.emit_json_failure(exc)
                sys.exit(exc.exit_code)
            except click.ClickException as exc:
                common.show_error(exc)
                common.emit_json_failure(exc)
                sys.exit(exc.exit_code)
            sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)
        except KeyboardInterrupt:  # while reporting
            sys.exit(common.EXIT_INTERRUPTED)
        finally:
            if handler is not None:
                signal.signal(signal.SIGINT, handler)


@click.group(cls=QmExportGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="qm-export")
def main() -> None:
    """Deploy transformers with QuickMerge++ token merging.

    Export to ONNX, build TensorRT engines with the qm merge/unmerge plugins, and check
    that every runtime picks the same tokens.
    """


main.add_command(models)
main.add_command(convert)
main.add_command(check)
main.add_command(build)
main.add_command(fit_prior)
main.add_command(profile)
main.add_command(validate)
main.add_command(generate)
main.add_command(sweep)
main.add_command(run)
main.add_command(serve_repo)
main.add_command(serve_bench)

__all__ = ["main"]
