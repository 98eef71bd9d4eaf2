"""fuzzy_test: seeded, replayable, counted against a threshold, converged at the end."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.workflow import load_workflow, parse_workflow

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "kv-store" / "kv_store.wasm"

HEAD = f"""
name: fuzz
nodes: {{count: 2, prefix: node}}
steps:
  - {{name: install, type: install_application, node: node-1, path: {APP}}}
  - {{name: ns, type: create_namespace, node: node-1, application_id: "${{results.install.application_id}}"}}
  - {{name: ctx, type: create_context, node: node-1, application_id: "${{results.install.application_id}}", namespace_id: "${{results.ns.namespace_id}}"}}
  - {{name: inv, type: invite, node: node-1, namespace_id: "${{results.ns.namespace_id}}"}}
  - {{type: join, node: node-2, namespace_id: "${{results.ns.namespace_id}}", invitation: "${{results.inv.invitation}}"}}
  - {{type: join_context, node: node-2, context_id: "${{results.ctx.context_id}}"}}
"""


def fuzz_step(seed: str, threshold: int = 100, assertion: str = "less_or_equal: 1000000") -> str:
    return textwrap.indent(textwrap.dedent(f"""
        - name: fuzz
          type: fuzzy_test
          context_id: ${{results.ctx.context_id}}
          nodes: [node-1, {{name: node-2, executor_key: ignored}}]
          max_operations: 25
          {seed}
          success_threshold: {threshold}
          operations:
            - name: write
              weight: 2
              steps:
                - type: call
                  node: "{{{{random_node}}}}"
                  context_id: ${{results.ctx.context_id}}
                  method: set
                  args: {{key: "{{{{random_choice([\\"a\\", \\"b\\", \\"c\\"])}}}}", value: "{{{{random_string(6)}}}}-{{{{uuid}}}}"}}
            - name: check
              weight: 1
              steps:
                - name: n
                  type: call
                  node: "{{{{random_node}}}}"
                  context_id: ${{results.ctx.context_id}}
                  method: random_free_len_check_is_len
                  expected_failure: true
                - type: assert
                  actual: "{{{{random_int(1, 100)}}}}"
                  {assertion}
          """), "  ")


async def run(text: str, tmp_path: Path):
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    return await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs").run()


ENTRIES = """
  - name: entries
    type: call
    node: node-1
    context_id: ${results.ctx.context_id}
    method: entries
"""


async def test_same_seed_replays_the_same_run(tmp_path: Path):
    text = HEAD + fuzz_step("seed: 4242") + ENTRIES
    first = await run(text, tmp_path / "a")
    second = await run(text, tmp_path / "b")
    assert first.passed and second.passed, [s.error for s in first.all_steps() if s.error]
    a, b = first.workflow_results, second.workflow_results
    assert a["fuzz"]["seed"] == b["fuzz"]["seed"] == 4242
    assert a["fuzz"]["per_operation"] == b["fuzz"]["per_operation"]
    # values come from random_string and uuid: same seed, same data
    assert a["entries"]["output"] == b["entries"]["output"] != {}
    third = await run(HEAD + fuzz_step("seed: 7") + ENTRIES, tmp_path / "c")
    assert third.workflow_results["entries"]["output"] != a["entries"]["output"]


async def test_results_report_counts_and_convergence(tmp_path: Path):
    result = await run(HEAD + fuzz_step(""), tmp_path)
    data = result.workflow_results["fuzz"]
    assert data["operations"] == 25
    assert sum(op["runs"] for op in data["per_operation"].values()) == 25
    assert data["assertions_passed"] == data["per_operation"]["check"]["runs"]
    assert data["assertions_failed"] == 0
    assert isinstance(data["seed"], int)
    assert data["context_state_hash"]
    assert any(f"seed {data['seed']}" in line for line in result.steps[-1].logs)


async def test_pass_rate_below_threshold_fails_with_the_seed(tmp_path: Path):
    result = await run(HEAD + fuzz_step("seed: 1", threshold=100, assertion="less_than: 50"), tmp_path)
    fuzz = result.steps[-1]
    assert fuzz.status.value == "failed"
    assert "below the threshold of 100%" in fuzz.error.message
    assert "seed: 1" in fuzz.error.message
    assert fuzz.data["failed_samples"]


async def test_low_threshold_passes_despite_failed_assertions(tmp_path: Path):
    result = await run(HEAD + fuzz_step("seed: 1", threshold=10, assertion="less_than: 50"), tmp_path)
    assert result.passed, [s.error for s in result.all_steps() if s.error]
    assert result.workflow_results["fuzz"]["assertions_failed"] > 0


def test_bad_fuzzy_configuration(tmp_path: Path):
    text = HEAD + textwrap.dedent("""
      - type: fuzzy_test
        context_id: x
        nodes: [node-7]
        operations:
          - name: op
            steps:
              - {type: wait}
    """).replace("\n", "\n  ").rstrip() + "\n"
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    messages = " | ".join(p.message for p in info.value.problems)
    assert "max_operations" in messages
    assert "node-7" in messages
    assert "'seconds'" in messages


async def test_fuzzy_example_passes(tmp_path: Path):
    wf = load_workflow(ROOT / "examples" / "fuzzy" / "workflow.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()
    assert result.passed, [s.error for s in result.all_steps() if s.error]


NESTED_FUZZ = """
  - name: fuzz
    type: fuzzy_test
    context_id: ${results.ctx.context_id}
    nodes: [node-1, node-2]
    max_operations: 6
    seed: 99
    operations:
      - name: loop
        steps:
          - type: repeat
            count: 2
            steps:
              - type: parallel
                groups:
                  - steps:
                      - type: call
                        node: "{{random_node}}"
                        context_id: ${results.ctx.context_id}
                        method: set
                        args: {key: "k{{iteration}}", value: "v{{random_int(1, 1000000000)}}"}
          - {type: assert, actual: 1, equals: 1}
"""


async def test_the_seed_reaches_steps_nested_in_repeat_and_parallel(tmp_path: Path, capsys):
    from calimero_workflow.report.console import ConsoleReporter

    async def once(where: Path):
        wf = parse_workflow(HEAD + NESTED_FUZZ + ENTRIES, file=where / "wf.yml", environ={})
        return await WorkflowExecutor(
            wf, env={}, workdir=where / "runs", events=ConsoleReporter(color=False)
        ).run()

    first, second = await once(tmp_path / "a"), await once(tmp_path / "b")
    assert first.passed and second.passed
    values = first.workflow_results["entries"]["output"]
    assert set(values) == {"k1"} and values == second.workflow_results["entries"]["output"]
    # the fuzz's many nested operations are counted, not printed one by one
    assert "fuzz/loop#" not in capsys.readouterr().out


async def test_failed_samples_name_the_nested_step_that_failed(tmp_path: Path):
    text = HEAD + NESTED_FUZZ.replace("method: set", "method: no_such_method").replace("seed: 99", "seed: 1")
    result = await run(text, tmp_path)
    samples = result.workflow_results["fuzz"]["failed_samples"]
    assert samples and all("/call #1" in s["path"] for s in samples), samples
    assert 'method "no_such_method" not found' in samples[0]["message"]
