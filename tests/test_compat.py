"""merobox workflow files run unmodified, and merobox's known defects are fixed.

The corpus in tests/compat/ is written in merobox's format (``{{name}}``
placeholders, ``outputs:`` captures, merobox step names and aliases). Each
file runs on embedded nodes with the kv-store app.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.results import Status
from calimero_workflow.workflow import load_workflow, parse_workflow

COMPAT = Path(__file__).resolve().parent / "compat"
CORPUS = sorted(COMPAT.glob("*.yml"))
APP = COMPAT.parent.parent / "apps" / "kv-store" / "kv_store.wasm"


def failures(result) -> list[str]:
    out = [f"{s.path}: {s.error.message}" for s in result.all_steps() if s.error]
    out += [f"phase {p.name}: {p.error.message}" for p in result.phases if p.error]
    return out


async def run_file(path: Path, tmp_path: Path, environ: dict[str, str] | None = None):
    wf = load_workflow(path, environ=environ or {})
    return await WorkflowExecutor(wf, env=environ or {}, workdir=tmp_path).run()


async def run_text(text: str, tmp_path: Path, file: Path | None = None):
    wf = parse_workflow(textwrap.dedent(text), file=file or tmp_path / "wf.yml", environ={})
    return await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs").run()


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
async def test_corpus_file_passes(path: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(COMPAT)
    result = await run_file(path, tmp_path)
    assert result.passed, failures(result)
    assert result.counts()["failed"] == 0


@pytest.mark.parametrize(
    "name, old, new",
    [
        ("01-groups.yml", '"equal({{read_value}}, hello)"', '"equal({{read_value}}, goodbye)"'),
        ("02-three-nodes-repeat.yml", '"equal({{count_on_3}}, 3)"', '"equal({{count_on_3}}, 4)"'),
        ("04-assert-grammar.yml", "\"contains({{csv}}, ', b,')\"", "\"contains({{csv}}, ', d,')\""),
        ("05-nested-json.yml", '"equal({{second_tag}}, y)"', '"equal({{second_tag}}, x)"'),
        ("06-negative.yml", "expected_error: NotFound", "expected_error: Forbidden"),
        ("08-legacy-placeholders.yml", "method: get\n", "method: len\n"),
        ("13-canonical-fixture.yml", '"value_3_from_node1"}', '"value_2_from_node1"}'),
        ("15-auto-join.yml", '"equal({{later_on_3}}, from-node-2)"', '"equal({{later_on_3}}, from-node-1)"'),
        ("16-current-merobox-keys.yml", '"json_equal({{read}}, value_1)"', '"json_equal({{read}}, value_2)"'),
        ("16-current-merobox-keys.yml", '"equal({{length}}, 1)"', '"equal({{length}}, 2)"'),
        ("16-current-merobox-keys.yml", '"{{len_error}} == None"', '"{{failed_type}} == None"'),
        ("17-api-response-and-network-blobs.yml", "match: {name: shared-room}", "match: {name: other-room}"),
        ("17-api-response-and-network-blobs.yml", "context_id: '{{context_id}}', expected_size", "expected_size"),
    ],
)
async def test_corpus_checks_can_fail(name: str, old: str, new: str, tmp_path: Path):
    text = (COMPAT / name).read_text()
    assert old in text
    mutated = COMPAT / f".mutated-{name}"
    mutated.write_text(text.replace(old, new))
    try:
        result = await run_file(mutated, tmp_path)
    finally:
        mutated.unlink()
    assert not result.passed


def test_unsupported_merobox_step_is_a_validation_error(tmp_path: Path):
    text = "name: x\nnodes: {count: 1}\nsteps:\n  - type: tee_fleet_join\n    node: calimero-node-1\n"
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    (problem,) = info.value.problems
    assert problem.location.line == 4
    assert "unknown step type 'tee_fleet_join'" in problem.message
    assert "supported types:" in problem.hint and "create_mesh" in problem.hint


# -- merobox defects (reference §9 and §3), each with our behaviour ----------------


async def test_env_expands_across_the_whole_file(tmp_path: Path, monkeypatch):
    # §9.1: merobox expanded ${VAR} only in remote_nodes.
    monkeypatch.chdir(COMPAT)
    env = {"WORKFLOW_TITLE": "From env", "NODE_COUNT": "2", "NODE_PREFIX": "n"}
    wf = load_workflow(COMPAT / "12-env-and-top-level.yml", environ=env)
    assert wf.name == "From env"
    assert wf.node_names == ["n-1", "n-2"]
    assert wf.steps[0].raw["node"] == "n-1"


async def test_invite_open_and_join_open_behave_as_namespace_steps(tmp_path: Path, monkeypatch):
    # §9.2: they are aliases of the namespace invite/join (corpus 02 uses them).
    monkeypatch.chdir(COMPAT)
    result = await run_file(COMPAT / "02-three-nodes-repeat.yml", tmp_path)
    types = {s.name: s.type for s in result.steps}
    assert types["Invite 3"] == "invite" and types["Join 3"] == "join"
    assert result.passed


def test_base_port_is_the_swarm_port_and_base_rpc_port_the_server_port():
    # §9.3: documented as "server port", it is the swarm port; we name both plainly.
    wf = parse_workflow("name: p\nnodes: {count: 2, base_port: 3000, base_rpc_port: 4000}\nsteps: []\n", environ={})
    assert [(n.swarm_port, n.server_port) for n in wf.nodes] == [(3000, 4000), (3001, 4001)]


async def test_yaml_log_level_reaches_the_nodes(tmp_path: Path):
    # §9.4: merobox's CLI defaults shadowed log_level from the YAML.
    from calimero_workflow.executor import WorkflowExecutor as Executor

    wf = parse_workflow("name: p\nnodes: {count: 1}\nlog_level: warn\nsteps: []\n", environ={})
    seen = []

    class Recording:
        def __init__(self, *a, **k):
            from calimero_workflow.backends.embedded import EmbeddedBackend

            self.inner = EmbeddedBackend(run_id=k["run_id"], workflow_name="p", workdir=k["workdir"])

        def __getattr__(self, name):
            return getattr(self.inner, name)

        async def start_nodes(self, specs, *, ready_timeout):
            seen.extend(s.log_level for s in specs)
            return await self.inner.start_nodes(specs, ready_timeout=ready_timeout)

    result = await Executor(wf, env={}, workdir=tmp_path, backend_factory=lambda kind, **k: Recording(**k)).run()
    assert result.passed, failures(result)
    assert seen == ["warn"]


@pytest.mark.parametrize(
    "image, force_pull, given",
    [
        ("me/node:dev", None, {"me/node:dev"}),  # the README's Docker command
        ("127.0.0.1:1/x:y", None, set()),  # --image names the file's own image
        (None, None, set()),
        ("me/node:dev", True, set()),  # --force-pull: every image
    ],
)
async def test_force_pull_image_is_for_the_files_images_not_image(
    tmp_path: Path, image: str | None, force_pull: bool | None, given: set[str]
):
    # merobox's _force_pull_workflow_images pulls the image the file names;
    # an --image in its place is never force-pulled (the nodes run it).
    from calimero_workflow.backends.embedded import EmbeddedBackend
    from calimero_workflow.executor import WorkflowExecutor as Executor

    wf = parse_workflow(
        "name: p\nforce_pull_image: true\nnodes: {count: 1, image: '127.0.0.1:1/x:y'}\nsteps: []\n",
        environ={},
    )
    asked = []

    class Recording(EmbeddedBackend):
        async def pull_image(self, *, force=False, as_given=()):
            asked.append((force, set(as_given)))
            return await super().pull_image(force=force, as_given=as_given)

    def factory(kind, **k):
        return Recording(run_id=k["run_id"], workflow_name="p", workdir=k["workdir"])

    executor = Executor(
        wf, backend="docker", image=image, force_pull=force_pull, env={}, workdir=tmp_path,
        backend_factory=factory,
    )
    result = await executor.run()
    assert result.passed, failures(result)
    assert asked == [(True, given)]


async def test_executor_public_key_is_accepted_and_sent(tmp_path: Path, monkeypatch):
    # §9.5: merobox validated it and dropped it; we send it (0.10-era nodes need it)
    # and, when a current node denies the unknown field, send the call again
    # without it — corpus 01 passes it to a current node.
    monkeypatch.chdir(COMPAT)
    result = await run_file(COMPAT / "01-groups.yml", tmp_path)
    assert result.passed
    step = next(s for s in result.steps if s.name == "Set value")
    assert step.status is Status.PASSED


async def test_assertions_work_inside_repeat_and_parallel(tmp_path: Path, monkeypatch):
    # §9.6: merobox failed at run time with "Unknown nested step type".
    monkeypatch.chdir(COMPAT)
    result = await run_file(COMPAT / "11-parallel.yml", tmp_path)
    nested = [s for s in result.all_steps() if s.type == "assert" and "/" in s.path]
    assert len(nested) == 3 and all(s.status is Status.PASSED for s in nested)


def test_wait_zero_seconds_is_refused_at_load(tmp_path: Path):
    # §9.9: merobox's schema took `seconds: 0` and the run failed later.
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow("name: w\nsteps:\n  - {type: wait, seconds: 0}\n", file=tmp_path / "w.yml", environ={})
    assert info.value.problems[0].location.line == 3


async def test_upload_blob_captures_both_spellings(tmp_path: Path, monkeypatch):
    # §9.10: docs said blobId, examples used blob_id; both capture here.
    monkeypatch.chdir(COMPAT)
    result = await run_file(COMPAT / "09-mesh-blobs-restart.yml", tmp_path)
    assert result.passed, failures(result)


async def test_unresolved_placeholder_fails_instead_of_passing_literal_text(tmp_path: Path):
    # §3.2: merobox warned and sent "{{nope}}" to the node.
    result = await run_text(
        f"""
        name: u
        nodes: {{count: 1}}
        steps:
          - {{type: install_application, node: calimero-node-1, path: {APP}}}
          - {{type: create_namespace, node: calimero-node-1, application_id: '{{{{nope}}}}'}}
        """,
        tmp_path,
    )
    step = result.steps[1]
    assert step.status is Status.FAILED
    assert "unresolved placeholder {{nope}}" in step.error.message
    assert "app_id_calimero-node-1" in step.error.hint


async def test_embedded_mapping_placeholder_is_json_not_python_repr(tmp_path: Path):
    # §3.2: merobox substituted str(dict) (single quotes, True/None).
    result = await run_text(
        """
        name: j
        steps:
          - name: src
            type: assert
            actual: {ok: true, none: null}
            is_set: true
            outputs: {obj: actual}
          - name: text
            type: assert
            actual: 'obj={{obj}}'
            equals: 'obj={"ok":true,"none":null}'
        """,
        tmp_path,
    )
    assert result.passed, failures(result)


async def test_node_name_is_replaced_in_string_form_targets_too(tmp_path: Path):
    # §3.1: merobox replaced {node_name} only in the mapping form.
    result = await run_text(
        f"""
        name: t
        nodes: {{count: 1}}
        steps:
          - type: install_application
            node: calimero-node-1
            path: {APP}
            outputs: {{'app_of_{{node_name}}': applicationId}}
          - type: assert
            statements: ["is_set({{{{app_of_calimero-node-1}}}})"]
        """,
        tmp_path,
    )
    assert result.passed, failures(result)


async def test_capture_that_cannot_bind_lists_available_keys(tmp_path: Path):
    result = await run_text(
        f"""
        name: t
        nodes: {{count: 1}}
        steps:
          - type: install_application
            node: calimero-node-1
            path: {APP}
            outputs: {{app: appId}}
        """,
        tmp_path,
    )
    step = result.steps[0]
    assert step.status is Status.FAILED
    assert step.error.kind == "capture"
    assert "output 'app' cannot be captured" in step.error.message
    assert "applicationId" in step.error.hint
    assert step.error.location.line == 8


async def test_commas_inside_quoted_operands_do_not_split(tmp_path: Path, monkeypatch):
    # §3.5: merobox split contains()/regex() arguments on every comma.
    monkeypatch.chdir(COMPAT)
    result = await run_file(COMPAT / "04-assert-grammar.yml", tmp_path)
    grammar = next(s for s in result.steps if s.name == "Grammar")
    assert grammar.status is Status.PASSED
    assert grammar.data["passed"] == 13


async def test_files_named_from_the_working_directory_are_found(tmp_path: Path, monkeypatch):
    # merobox runs from the repository root and names files from there
    # (`path: workflow-examples/res/kv_store.wasm`), not from the workflow file.
    folder = tmp_path / "workflow-examples"
    (folder / "res").mkdir(parents=True)
    (folder / "res" / "kv_store.wasm").write_bytes(APP.read_bytes())
    (folder / "res" / "blob.txt").write_text("blob body")
    (folder / "res" / "hello.sh").write_text('echo "hello $1"\n')
    (folder / "wf.yml").write_text(
        textwrap.dedent(
            """
            name: cwd paths
            nodes: {count: 2}
            steps:
              - {type: install_application, node: calimero-node-1, path: workflow-examples/res/kv_store.wasm, dev: true}
              - type: create_mesh
                context_node: calimero-node-1
                application_id: '{{app_id_calimero-node-1}}'
                nodes: [calimero-node-2]
                path: workflow-examples/res/kv_store.wasm
              - {type: upload_blob, node: calimero-node-1, file_path: workflow-examples/res/blob.txt}
              - {name: sh, type: script, script: workflow-examples/res/hello.sh, args: [there]}
              - {type: assert, statements: ['equal({{blob_id_calimero-node-1}}, {{blob_id_calimero-node-1}})', 'contains(${results.sh.stdout}, "hello there")']}
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    result = await run_file(Path("workflow-examples/wf.yml"), tmp_path / "runs")
    assert result.passed, failures(result)


def test_a_file_found_nowhere_names_both_folders(tmp_path: Path, monkeypatch):
    (tmp_path / "wf").mkdir()
    monkeypatch.chdir(tmp_path)
    text = "name: x\nnodes: {count: 1}\nsteps:\n  - {type: install_application, node: calimero-node-1, path: res/app.wasm}\n"
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=tmp_path / "wf" / "wf.yml", environ={})
    (problem,) = info.value.problems
    assert "application file not found: res/app.wasm" in problem.message
    assert str(tmp_path / "wf") in problem.hint and f"working directory ({tmp_path})" in problem.hint


async def test_repeat_outputs_rename_loop_variables_inside_each_iteration(tmp_path: Path):
    # merobox's canonical fixture writes `outputs: {current_iteration: iteration}`
    # on the repeat and uses {{current_iteration}} in the nested steps.
    result = await run_text(
        """
        name: r
        steps:
          - name: loop
            type: repeat
            count: 3
            outputs: {current_iteration: iteration, n: total_iterations}
            steps:
              - name: seen
                type: assert
                actual: 'k_{{current_iteration}}_of_{{n}}'
                matches: '^k_[123]_of_3$'
                outputs: {last_seen: actual}
          - type: assert
            statements:
              - equal(${results.loop.iterations.1.seen.actual}, k_2_of_3)
              - equal({{last_seen}}, k_3_of_3)
              - equal({{current_iteration}}, 3)
        """,
        tmp_path,
    )
    assert result.passed, failures(result)


_SYNC_SETUP = f"""
name: s
nodes: {{count: 2}}
steps:
  - {{type: install_application, node: calimero-node-1, path: {APP}, outputs: {{app_id: applicationId}}}}
  - {{type: create_mesh, context_node: calimero-node-1, application_id: '{{{{app_id}}}}', nodes: [calimero-node-2], outputs: {{context_id: contextId}}}}
  - {{type: call, node: calimero-node-1, context_id: '{{{{context_id}}}}', method: set, args: {{key: k, value: v}}}}
"""


async def test_wait_for_sync_expect_takes_merobox_unwrapped_result_and_root_hash(tmp_path: Path):
    # merobox compares `expect.equals` with the unwrapped JSON-RPC result
    # ({output: …}) and exports the hash as `root_hash` too.
    result = await run_text(
        _SYNC_SETUP
        + """
  - name: synced
    type: wait_for_sync
    context_id: '{{context_id}}'
    timeout: 10
    expect: {method: get, args: {key: k}, equals: {output: v}}
    outputs: {root: root_hash, polls: attempts}
  - type: assert
    statements: ['equal({{root}}, ${results.synced.context_state_hash})', 'gte({{polls}}, 1)']
""",
        tmp_path,
    )
    assert result.passed, failures(result)


async def test_wait_for_sync_says_when_hashes_agree_but_expect_never_holds(tmp_path: Path):
    result = await run_text(
        _SYNC_SETUP
        + """
  - name: synced
    type: wait_for_sync
    context_id: '{{context_id}}'
    timeout: 1
    expect: {method: get, args: {key: k}, equals: w}
""",
        tmp_path,
    )
    step = result.steps[-1]
    assert step.status is Status.FAILED
    assert "every node agrees on" in step.error.message
    assert 'calimero-node-1="v", calimero-node-2="v"' in step.error.message
    assert step.error.expected == "w" and step.error.actual == {"calimero-node-1": "v", "calimero-node-2": "v"}


async def test_call_result_capture_is_merods_result_shape(tmp_path: Path):
    # merobox files capture `result` and compare it with {"output": …}.
    result = await run_text(
        _SYNC_SETUP
        + """
  - {type: call, node: calimero-node-1, context_id: '{{context_id}}', method: get, args: {key: k}, outputs: {got: result}}
  - type: json_assert
    statements: ['json_equal({{got}}, {"output": "v"})']
""",
        tmp_path,
    )
    assert result.passed, failures(result)


async def test_error_code_is_the_http_status_and_null_for_json_rpc_errors(tmp_path: Path):
    # merobox files assert is_empty() on error_code of a JSON-RPC error.
    result = await run_text(
        _SYNC_SETUP
        + """
  - {name: rpc, type: call, node: calimero-node-1, context_id: '{{context_id}}', method: nope, expected_failure: true}
  - {name: http, type: join_context, node: calimero-node-2, context_id: 'abababababababababababababababababababababababababababababababab', expected_failure: true, retries: 0}
""",
        tmp_path,
    )
    assert result.passed, failures(result)
    rpc, http = result.workflow_results["rpc"], result.workflow_results["http"]
    assert rpc["error_type"] == "FunctionCallError" and rpc["error_code"] is None
    assert http["error_code"] == 403 and http["error_type"] == "HTTP 403", http


async def test_fuzzy_call_args_are_captured_as_fuzzy_variables(tmp_path: Path):
    # merobox's fuzzy example reads a call's resolved args back as {{fuzzy_<arg>}}.
    result = await run_text(
        _SYNC_SETUP
        + """
  - name: fuzz
    type: fuzzy_test
    context_id: '{{context_id}}'
    nodes: [{name: calimero-node-1}, {name: calimero-node-2}]
    max_operations: 8
    seed: 5
    operations:
      - name: set_and_verify
        steps:
          - {type: call, node: '{{random_node}}', context_id: '{{context_id}}', method: set,
             args: {key: 'fuzzy_key_{{random_int(1, 10000)}}', value: 'value_{{uuid}}'}}
          - {type: call, node: '{{random_node}}', context_id: '{{context_id}}', method: get,
             args: {key: '{{fuzzy_key}}'}, outputs: {got: result}}
          - type: assert
            non_blocking: true
            statements:
              - "contains({{got}}, {{fuzzy_value}})"
              - "equal({{_pattern_name}}, set_and_verify)"
              - "equal({{_fuzzy_args_key}}, {{fuzzy_key}})"
""",
        tmp_path,
    )
    assert result.passed, failures(result)
    fuzz = next(s for s in result.steps if s.type == "fuzzy_test")
    assert fuzz.data["assertions_passed"] == 8 and fuzz.data["assertions_failed"] == 0


async def test_random_executor_is_the_drawn_nodes_executor_key(tmp_path: Path):
    # merobox documented {{random_executor}} and never set it.
    result = await run_text(
        _SYNC_SETUP
        + """
  - name: fuzz
    type: fuzzy_test
    context_id: '{{context_id}}'
    nodes:
      - {name: calimero-node-1, executor_key: key-of-calimero-node-1}
      - {name: calimero-node-2, executor_key: key-of-calimero-node-2}
    max_operations: 6
    operations:
      - name: check
        steps:
          - type: assert
            statements: ['equal({{random_executor}}, "key-of-{{random_node}}")']
""",
        tmp_path,
    )
    assert result.passed, failures(result)
