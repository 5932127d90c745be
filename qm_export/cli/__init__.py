"""The ``qm-export`` command line: a click group; each command lives in its own module."""

from __future__ import annotations

import click

from .. import __version__
from .build import build
from .check import check
from .convert import convert
from .fit_prior import fit_prior
from .models import models
from .profile import profile
from .run import run
from .sweep import sweep
from .validate import validate

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "show_default": True}


@click.group(context_settings=CONTEXT_SETTINGS)
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
main.add_command(sweep)
main.add_command(run)

__all__ = ["main"]
