"""External data rules of the TensorRT check: where the weights stored outside the ``.onnx``
file are, whether they may be read, and how big they are, from the protobuf and ``os.stat``
alone (no tensor bytes are read). The path and range rules are the ones every command applies
before a runtime opens the model (:mod:`qm_export.export.external_data`)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from ...export.external_data import external_data_problems, external_files
from .findings import Finding

__all__ = ["external_data_findings"]

_TWO_GB = 2**31

#: rule id and fix per problem kind.
_RULES = {
    "path": ("external-data-path",
             "keep the data file(s) in the model's folder and name them by a relative path inside it (re-save with "
             "onnx.save_model(..., save_as_external_data=True, location='MODEL.onnx.data')); never a symlink out"),
    "missing": ("external-data",
                "keep the .onnx and its data file(s) in the same folder (copy the data file beside the model)"),
    "range": ("external-data-range",
              "the data file is truncated or the model's offsets are wrong: re-export the model, or copy the data file "
              "again in full"),
}


def _size(folder: Path, location: str) -> int:
    try:
        return os.stat(folder / location).st_size
    except OSError:
        return 0


def external_data_findings(model: onnx.ModelProto, base_dir: Path | None) -> list[Finding]:
    """One error per tensor whose external data may not be read (outside the model's folder,
    missing, offset/length past the end), and one info row on the data files' size."""
    files = external_files(model)
    if not files:
        return []
    findings = []
    bad: set[str] = set()
    if base_dir is not None:
        for problem in external_data_problems(model, base_dir):
            rule, fix = _RULES[problem.kind]
            findings.append(Finding("error", rule, problem.message, fix))
            if problem.kind != "range":
                bad.add(problem.location)
    tensors = sum(files.values())
    total = sum(_size(base_dir, loc) for loc in files if loc not in bad) if base_dir is not None else 0
    big = total > _TWO_GB
    findings.append(
        Finding(
            "info",
            "external-data",
            f"{tensors} initializer(s), {total / 2**30:.2f} GiB, stored in external file(s) "
            f"{', '.join(map(repr, sorted(files)))}"
            + (" (over protobuf's 2 GB limit, so external data is required)" if big else ""),
            "parse from the file path (parse_from_file, as qm-export build does) so TensorRT finds the data files",
        )
    )
    return findings
