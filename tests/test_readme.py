"""The README stays true: commands, step types and their fields."""

from __future__ import annotations

import re
from pathlib import Path

from calimero_workflow.node import abi
from calimero_workflow.steps import load_builtin_steps
from calimero_workflow.steps.base import StepConfig, registry

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _reference_rows() -> dict[str, str]:
    rows = {}
    for line in README.splitlines():
        m = re.match(r"^\| `([a-z_]+)`(?: \(([^)]*)\))? \|(.*)$", line)
        if m:
            rows[m.group(1)] = line
    return rows


def test_every_step_type_its_aliases_and_fields_are_documented():
    load_builtin_steps()
    rows = _reference_rows()
    common = set(StepConfig.model_fields)
    for cls in registry.classes():
        assert cls.type_name in rows, f"README lacks step type {cls.type_name}"
        row = rows[cls.type_name]
        for alias in cls.aliases:
            assert f"`{alias}`" in row, f"README lacks alias {alias} of {cls.type_name}"
        for field in set(cls.Config.model_fields) - common:
            assert f"`{field}`" in row, f"README lacks field {field} of {cls.type_name}"


def test_common_step_keys_are_documented():
    for field in StepConfig.model_fields:
        assert f"`{field}`" in README or field == "description", field


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"```sh\n(python3 -m pytest[^\n]*)\n```", README)
    assert command, "README must show the test command"
    assert command.group(1) in ci


def test_readme_example_files_exist():
    for path in re.findall(r"(examples/[\w./-]+\.yml)", README):
        assert (ROOT / path).is_file(), path


def test_every_host_function_is_documented_as_provided_or_refused():
    section = README.split("## What the embedded node runs", 1)[1].split("\n## ", 1)[0]
    provided, refused = section.split("Not provided", 1)
    for name in abi.HOST_FUNCTIONS:
        assert f"`{name}`" in provided, f"README does not list host function {name}"
    for name in abi.REFUSED_HOST_FUNCTIONS:
        assert f"`{name}`" in refused, f"README does not list refused host function {name}"


def test_the_step_reference_is_one_table():
    # A blank line inside a Markdown table ends it; a line right after one joins it.
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| type (aliases) |"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    in_table = {m.group(1) for m in (re.match(r"^\| `([a-z_]+)`", line) for line in lines[start:end]) if m}
    load_builtin_steps()
    assert set(registry.names()) <= in_table, set(registry.names()) - in_table
    assert lines[end] == "", f"line {end + 1} must be blank to end the table: {lines[end]!r}"
