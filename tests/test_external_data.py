"""External data stays inside the model's folder (issue 14, section 1): ``check`` reports an
escaping, missing or truncated data file as an error without reading any tensor bytes, and
every command that loads a model refuses it (exit 2, one line) before a runtime opens it."""

from __future__ import annotations

import builtins
import os
import re
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from qm_export.cli import main
from qm_export.export.external_data import ExternalDataError, check_external_data, external_data_problems
from untrusted_models import BROKEN_FORMS, broken_model, matmul_model, save_external, set_entries

_PROGRESS = re.compile(r"^\s*\d+\.\ds  ")
_KIND = {"escape": "path", "absolute": "path", "symlink": "path", "missing": "missing", "past-end": "range"}
_RULE = {"path": "external-data-path", "missing": "external-data", "range": "external-data-range"}


def _problems(path: Path):
    return external_data_problems(onnx.load(os.fspath(path), load_external_data=False), path.parent)


def test_a_model_with_its_data_beside_it_passes(tmp_path: Path) -> None:
    path = save_external(matmul_model(), tmp_path / "m.onnx")
    assert _problems(path) == []
    check_external_data(path)  # no error


def test_a_data_file_in_a_subfolder_or_linked_inside_the_folder_passes(tmp_path: Path) -> None:
    path = save_external(matmul_model(), tmp_path / "m.onnx")
    (tmp_path / "weights").mkdir()
    os.replace(tmp_path / "m.onnx.data", tmp_path / "weights" / "w.bin")
    set_entries(path, location="weights/./w.bin")
    assert _problems(path) == []
    (tmp_path / "link.bin").symlink_to("weights/w.bin")  # a symlink that stays inside
    set_entries(path, location="link.bin")
    assert _problems(path) == []


@pytest.mark.parametrize("form", sorted(BROKEN_FORMS))
def test_each_broken_form_is_one_problem_naming_tensor_and_location(tmp_path: Path, form: str) -> None:
    path = broken_model(tmp_path, form)
    problems = _problems(path)
    assert [p.kind for p in problems] == [_KIND[form]]
    assert problems[0].tensor == "W" and "'W'" in problems[0].message and BROKEN_FORMS[form] in problems[0].message
    with pytest.raises(ExternalDataError, match=BROKEN_FORMS[form]):
        check_external_data(path)


@pytest.mark.parametrize("entries,needle", [
    ({"location": ""}, "is empty"),
    ({"location": "a/../../x.bin"}, "climbs out"),
    ({"location": "C:\\\\w.bin"}, "absolute path"),
    ({"offset": "-4"}, "not a non-negative integer"),
    ({"length": "12abc"}, "not a non-negative integer"),
    ({"length": "4"}, "need 256 bytes"),
    ({"offset": str(2**70)}, "past the end"),
])
def test_other_refused_entries(tmp_path: Path, entries: dict[str, str], needle: str) -> None:
    path = save_external(matmul_model(), tmp_path / "m.onnx")
    set_entries(path, **entries)
    problems = _problems(path)
    assert len(problems) == 1 and needle in problems[0].message, problems


def test_a_fifo_named_as_data_is_refused_not_opened(tmp_path: Path) -> None:
    path = save_external(matmul_model(), tmp_path / "m.onnx")
    (tmp_path / "m.onnx.data").unlink()
    os.mkfifo(tmp_path / "m.onnx.data")  # opening it for reading would block forever
    assert "not a regular file" in _problems(path)[0].message


@pytest.mark.parametrize("form", sorted(BROKEN_FORMS))
def test_check_reports_each_form_as_an_error_with_rule_and_fix(tmp_path: Path, form: str) -> None:
    path = broken_model(tmp_path, form)
    res = CliRunner().invoke(main, ["check", str(path), "--json"])
    assert res.exit_code == 1, res.output
    import json

    doc = json.loads(res.stdout)
    errors = [f for f in doc["findings"] if f["severity"] == "error"]
    assert [f["rule"] for f in errors] == [_RULE[_KIND[form]]]
    assert BROKEN_FORMS[form] in errors[0]["message"] and errors[0]["fix"]
    assert "Traceback" not in res.output


def test_check_never_reads_a_10_gib_data_file(tmp_path: Path, monkeypatch) -> None:
    """A sparse 10 GiB data file declared in full: check stats it, and any attempt to open it
    (Python's open, os.open, onnx's external data loader) fails the test."""
    from onnx import external_data_helper

    model = matmul_model()
    path = save_external(model, tmp_path / "m.onnx")
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(10 * 2**30)
    proto = onnx.load(os.fspath(path), load_external_data=False)
    w = proto.graph.initializer[0]
    del w.dims[:]
    w.dims.extend([10 * 2**30 // 4])
    for entry in w.external_data:
        entry.value = {"location": "big.bin", "offset": "0", "length": str(10 * 2**30)}[entry.key]
    path.write_bytes(proto.SerializeToString())

    real_open, real_os_open = builtins.open, os.open

    def guarded(opener):
        def wrapper(file, *args, **kwargs):
            if str(file).endswith("big.bin"):
                raise AssertionError(f"check opened the data file {file}")
            return opener(file, *args, **kwargs)
        return wrapper

    def no_load(*args, **kwargs):
        raise AssertionError("check loaded external data")

    monkeypatch.setattr(builtins, "open", guarded(real_open))
    monkeypatch.setattr(os, "open", guarded(real_os_open))
    monkeypatch.setattr(external_data_helper, "load_external_data_for_model", no_load)
    monkeypatch.setattr(external_data_helper, "load_external_data_for_tensor", no_load)
    res = CliRunner().invoke(main, ["check", str(path), "--json"])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    import json

    doc = json.loads(res.stdout)
    assert doc["ok"] is True, doc["findings"]
    info = [f for f in doc["findings"] if f["rule"] == "external-data"]
    assert len(info) == 1 and "10.00 GiB" in info[0]["message"]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not _PROGRESS.match(line)]


_COMMANDS = {
    "validate": lambda m, tmp: ["validate", str(m)],
    "profile": lambda m, tmp: ["profile", str(m), "--runs", "1"],
    "build": lambda m, tmp: ["build", str(m), "-o", str(tmp / "m.engine")],
    "serve-repo": lambda m, tmp: ["serve-repo", str(m), "-o", str(tmp / "repo")],
}


@pytest.mark.parametrize("form", sorted(BROKEN_FORMS))
@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_every_command_refuses_the_model_before_a_runtime_reads_it(tmp_path: Path, command: str, form: str) -> None:
    path = broken_model(tmp_path, form)
    res = CliRunner().invoke(main, _COMMANDS[command](path, tmp_path))
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    errors = _error_lines(res.stderr)
    assert len(errors) == 1 and errors[0].startswith("Error: "), res.stderr
    assert BROKEN_FORMS[form] in errors[0] or (command == "serve-repo" and form == "symlink"
                                                and "is a symlink" in errors[0]), errors[0]
    assert not (tmp_path / "repo").exists() and not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize("form", sorted(BROKEN_FORMS))
def test_serve_bench_launch_refuses_a_repository_with_such_a_model(tmp_path: Path, form: str) -> None:
    broken_model(tmp_path / "repo" / "m", form, name="model.onnx", sub="1")
    res = CliRunner().invoke(main, ["serve-bench", "--launch", str(tmp_path / "repo"), "--model", "m"])
    assert res.exit_code == 2, (res.exit_code, res.output)
    errors = _error_lines(res.stderr)
    assert len(errors) == 1 and errors[0].startswith("Error: --launch") and BROKEN_FORMS[form] in errors[0], errors
