"""action.yml and the repository's workflows against the public JSON schemas.

check-jsonschema ships SchemaStore's schemas for action metadata and for
workflows, so this needs no network.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def check(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            schema,
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_action_yml_matches_the_action_schema():
    done = check("vendor.github-actions", ROOT / "action.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflows_match_the_workflow_schema():
    assert [p.name for p in WORKFLOWS] == ["ci.yml"]
    done = check("vendor.github-workflows", *WORKFLOWS)
    assert done.returncode == 0, done.stdout + done.stderr


def _break_runs(action: dict) -> None:
    action["runs"]["using"] = "docker-compose"


def _break_input(action: dict) -> None:
    action["inputs"]["workflows"]["unknown-key"] = 1


def _break_image(action: dict) -> None:
    del action["runs"]["image"]


def _break_output(action: dict) -> None:
    action["outputs"]["status"]["value"] = "composite actions only"


@pytest.mark.parametrize(
    "breakage", [_break_runs, _break_input, _break_image, _break_output]
)
def test_the_schema_check_catches_a_broken_action(tmp_path, breakage):
    # the check above is only worth something if each kind of breakage fails it
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    breakage(action)
    broken = tmp_path / "action.yml"
    broken.write_text(yaml.safe_dump(action))
    done = check("vendor.github-actions", broken)
    assert done.returncode != 0, done.stdout
    assert "action.yml" in done.stdout


@pytest.mark.parametrize(
    "old, new",
    [
        ("    runs-on: ubuntu-latest\n", ""),  # a job without a runner
        ("timeout-minutes: 45", "timeout-minute: 45"),  # a misspelt key
        ("      - uses: actions/checkout@v4\n", "      - uses: 4\n"),
    ],
    ids=["no-runs-on", "misspelt-key", "uses-not-a-string"],
)
def test_the_schema_check_catches_a_broken_workflow(tmp_path, old, new):
    # edited as text: PyYAML would turn the `on:` key into True
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert old in text
    broken = tmp_path / "ci.yml"
    broken.write_text(text.replace(old, new, 1))
    done = check("vendor.github-workflows", broken)
    assert done.returncode != 0, done.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_ci_uses_the_action_on_itself_and_reads_its_outputs(path):
    workflow = yaml.safe_load(path.read_text())
    steps = [step for job in workflow["jobs"].values() for step in job.get("steps", [])]
    uses_self = [i for i, step in enumerate(steps) if step.get("uses") == "./"]
    assert uses_self, "ci.yml must run the action on this repository with `uses: ./`"
    step_id = steps[uses_self[0]]["id"]
    later = yaml.safe_dump(steps[uses_self[0] + 1 :])
    for output in ("status", "results", "failed-steps"):
        assert f"steps.{step_id}.outputs.{output}" in later
