"""repeat, parallel and json_assert through the real executor."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.results import Status
from calimero_workflow.workflow import parse_workflow


async def run_text(text: str, tmp_path: Path):
    wf = parse_workflow(textwrap.dedent(text), file=tmp_path / "wf.yml", environ={})
    return await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()


async def test_repeat_iteration_variables_and_results(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - name: loop
            type: repeat
            count: 3
            steps:
              - name: it
                type: assert
                actual: ${iteration}
                equals: ${iteration}
              - type: assert
                statements:
                  - equal(${iteration_index}, ${iteration} - 1)
                  - equal(${total_iterations}, 3)
        """,
        tmp_path,
    )
    # `${iteration} - 1` is text, so the second statement fails on purpose;
    # the first iteration stops the loop.
    assert not result.passed
    loop = result.steps[0]
    assert [c.path for c in loop.children] == ["loop[1]/it", "loop[1]/assert #2"]
    assert loop.error.message == "iteration 1 of 3 failed"


async def test_repeat_passes_and_keeps_each_iteration(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - name: loop
            type: repeat
            count: 4
            steps:
              - name: it
                type: assert
                actual: ${iteration}
                less_or_equal: 4
          - type: assert
            statements:
              - equal(${results.loop.iterations.3.it.actual}, 4)
              - equal(${results.it.actual}, 4)
        """,
        tmp_path,
    )
    assert result.passed, [s.error for s in result.all_steps() if s.error]
    assert len(result.steps[0].children) == 4
    assert result.counts()["total"] == 5


async def test_repeat_stop_on_failure_false_runs_every_iteration(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - name: loop
            type: repeat
            count: 3
            stop_on_failure: false
            steps:
              - {type: assert, actual: "${iteration}", not_equals: 2}
        """,
        tmp_path,
    )
    loop = result.steps[0]
    assert [c.status for c in loop.children] == [Status.PASSED, Status.FAILED, Status.PASSED]
    assert loop.data["failed_iterations"] == [2]


def test_nested_mistakes_are_reported_at_their_line(tmp_path: Path):
    text = "name: t\nsteps:\n  - type: repeat\n    count: 2\n    steps:\n      - type: wait\n        secs: 1\n"
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    lines = {p.location.line for p in info.value.problems}
    assert 7 in lines
    assert any("secs" in p.message for p in info.value.problems)


@pytest.mark.parametrize("mode, step_status, groups_ran", [
    ("fail-slow", Status.FAILED, {"slow"}),
    ("continue-on-error", Status.PASSED, {"slow"}),
    ("fail-fast", Status.FAILED, set()),
])
async def test_parallel_failure_modes(mode, step_status, groups_ran, tmp_path: Path):
    result = await run_text(
        f"""
        name: t
        steps:
          - name: par
            type: parallel
            failure_mode: {mode}
            groups:
              - name: bad
                steps:
                  - {{type: assert, actual: 1, equals: 2}}
              - name: slow
                steps:
                  - {{type: wait, seconds: 0.3}}
                  - {{name: after, type: assert, actual: 1, equals: 1}}
        """,
        tmp_path,
    )
    par = result.steps[0]
    assert par.status is step_status
    assert not result.passed  # the failed assertion always counts
    assert set(par.data.get("passed_groups", [])) == groups_ran
    if mode == "fail-fast":
        assert par.data["cancelled_groups"] == ["slow"]


async def test_repeat_and_parallel_timings_have_merobox_names(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - name: loop
            type: repeat
            count: 4
            steps:
              - {type: wait, seconds: 0.02}
          - name: par
            type: parallel
            failure_mode: continue-on-error
            groups:
              - name: ok
                steps: [{type: wait, seconds: 0.05}]
              - steps: [{type: assert, actual: 1, equals: 2}]
        """,
        tmp_path,
    )
    loop = result.workflow_results["loop"]
    seconds = loop["duration_seconds"]
    assert 0.08 <= seconds < 5
    assert loop["duration_ms"] == pytest.approx(seconds * 1000, abs=0.01)
    assert isinstance(loop["duration_ns"], int) and loop["duration_ns"] == pytest.approx(seconds * 1e9, rel=1e-3)
    assert loop["throughput_ops_per_sec"] == pytest.approx(4 / seconds, abs=0.01)
    assert loop["avg_time_per_op_ms"] == pytest.approx(seconds * 1000 / 4, abs=0.001)

    par = result.workflow_results["par"]
    assert par["parallel_success_count"] == 1 and par["parallel_failure_count"] == 1
    assert par["overall_duration_ms"] == pytest.approx(par["overall_duration_seconds"] * 1000, abs=0.01)
    assert isinstance(par["overall_duration_ns"], int)
    assert 0.05 <= par["ok_duration_seconds"] <= par["overall_duration_seconds"]
    assert par["group_0_duration_seconds"] == par["ok_duration_seconds"]
    assert par["group_0_duration_ms"] == par["ok_duration_ms"]
    # as in merobox: an unnamed group is known by its index only ("Group 2" to ${group_name})
    assert isinstance(par["group_1_duration_ns"], int)
    assert not [k for k in par if k.startswith(("Group 2_", "group-2_"))]
    assert par["failed_groups"] == ["Group 2"]


async def test_json_assert(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - name: src
            type: assert
            actual: {a: 1, b: [1, 2, {c: x}], s: '{"k": [1,2]}'}
            is_set: true
          - type: json_assert
            statements:
              - json_equal(${results.src.actual.a}, 1)
              - 'json_subset(${results.src.actual}, {"b": [{"c": "x"}]})'
              - 'json_equal(${results.src.actual.s}, {"k": [1, 2]})'
              - json_not_equal(${results.src.actual.b}, [2, 1])
          - type: json_assert
            statements:
              - 'json_subset(${results.src.actual}, {"b": [{"c": "y"}]})'
        """,
        tmp_path,
    )
    assert [s.status for s in result.steps] == [Status.PASSED, Status.PASSED, Status.FAILED]
    assert result.steps[2].error.location.line == 16


@pytest.mark.parametrize(
    "body, line, message",
    [
        ("  - type: parallel\n    groups:\n      - {name: a, steps: [{type: wait, seconds: 0.01}]}\n"
         "      - {name: a, steps: [{type: wait, seconds: 0.01}]}\n", 6, "two groups of this parallel step are named 'a'"),
        ("  - type: parallel\n    groups:\n      - {name: a, count: '{{n}}', steps: [{type: wait, seconds: 0.01}]}\n",
         5, "group 'a': `count` must be a number written out"),
        ("  - type: fuzzy_test\n    context_id: c\n    max_operations: 1\n    nodes: [n]\n    operations:\n"
         "      - {name: op, weight: '{{w}}', steps: [{type: wait, seconds: 0.01}]}\n", 8, "operation 'op': `weight` must be a number"),
    ],
)
def test_group_and_operation_settings_fixed_at_load_are_checked_at_load(tmp_path: Path, body: str, line: int, message: str):
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow("name: t\nsteps:\n" + body, file=tmp_path / "wf.yml", environ={})
    found = [p for p in info.value.problems if message in p.message]
    assert found and found[0].location.line == line, [p.render() for p in info.value.problems]


async def test_json_subset_takes_the_value_first_as_merobox_does(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - name: src
            type: assert
            actual: {a: 1, b: 2}
            is_set: true
          - type: json_assert
            statements: ['json_subset(${results.src.actual}, {"a": 1})']
          - type: json_assert
            statements: ['json_subset({"a": 1}, ${results.src.actual})']
        """,
        tmp_path,
    )
    assert [s.status for s in result.steps] == [Status.PASSED, Status.PASSED, Status.FAILED]
    assert result.steps[2].error.expected == {"a": 1, "b": 2}


async def test_an_unnamed_group_is_named_as_merobox_names_it(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - name: par
            type: parallel
            groups:
              - name: first
                steps: [{name: a, type: assert, actual: "${group_name}/${group_index}", equals: first/0}]
              - steps: [{name: b, type: assert, actual: "${group_name}/${group_index}", equals: Group 2/1}]
        """,
        tmp_path,
    )
    assert result.passed, [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    assert [c.path for c in result.steps[0].children] == ["par/first/a", "par/Group 2/b"]
    par = result.workflow_results["par"]
    assert par["passed_groups"] == ["first", "Group 2"]
    assert {"group_0_duration_ms", "group_1_duration_ms", "first_duration_ms"} <= set(par)
