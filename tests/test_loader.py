"""Loading workflow files: positions, env expansion, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.workflow import load_workflow, parse_workflow


def problems_of(text: str, env: dict[str, str] | None = None, file: Path | None = None) -> list[str]:
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=file or Path("wf.yml"), environ=env or {})
    return [p.render() for p in info.value.problems]


MINIMAL = """\
name: demo
nodes: {count: 2, prefix: node}
steps:
  - name: pause
    type: wait
    seconds: 0.01
"""


def test_minimal_workflow_loads_with_count_mode_nodes():
    wf = parse_workflow(MINIMAL, file=Path("wf.yml"), environ={})
    assert wf.name == "demo"
    assert wf.node_names == ["node-1", "node-2"]
    assert [s.type_name for s in wf.steps] == ["wait"]
    assert wf.steps[0].location.line == 4


def test_explicit_nodes_keep_their_names_and_settings():
    wf = parse_workflow(
        "name: x\nnodes:\n  image: img:1\n  alice: {rpc_port: 4001}\n  bob:\nsteps: []\n",
        environ={},
    )
    assert wf.node_names == ["alice", "bob"]
    assert wf.nodes[0].server_port == 4001
    assert wf.nodes[1].image == "img:1"


def test_unknown_key_is_reported_at_its_line_with_a_suggestion():
    text = MINIMAL + "  - type: wait\n    seconds: 1\n    mesage: hi\n"
    (msg,) = problems_of(text)
    assert msg.startswith("wf.yml:9:5: ")
    assert "unknown key 'mesage'" in msg
    assert "did you mean 'message'" in msg


def test_duplicate_key_names_both_lines():
    text = "name: a\nname: b\nnodes: {count: 1}\nsteps: []\n"
    (msg,) = problems_of(text)
    assert msg.startswith("wf.yml:2:1: ")
    assert "first at line 1, again at line 2" in msg


def test_unknown_step_type_lists_supported_types():
    (msg,) = problems_of("name: a\nnodes: {count: 1}\nsteps:\n  - type: instal_application\n")
    assert "wf.yml:4:11: unknown step type 'instal_application'" in msg
    assert "did you mean 'install_application'" in msg
    assert "supported types:" in msg


def test_env_expansion_with_default_and_typed_plain_scalars():
    text = "name: ${NAME:-fallback}\nnodes:\n  count: ${N}\nsteps:\n  - type: wait\n    seconds: ${S}\n"
    wf = parse_workflow(text, environ={"N": "3", "S": "0.5"})
    assert wf.name == "fallback"
    assert len(wf.nodes) == 3
    assert wf.steps[0].static_config.seconds == 0.5


def test_quoted_env_value_stays_a_string():
    wf = parse_workflow(
        'name: "${V}"\nnodes: {count: 1}\nsteps: []\n', environ={"V": "123"}
    )
    assert wf.name == "123"


def test_unset_env_var_is_an_error_at_its_position():
    (msg,) = problems_of("name: demo\nnodes: {count: 1}\nsteps:\n  - type: wait\n    seconds: ${DELAY}\n")
    assert msg.startswith("wf.yml:5:14: environment variable DELAY is not set")
    assert "--env DELAY=VALUE" in msg


def test_runtime_references_survive_loading():
    text = (
        "name: a\nnodes: {count: 1}\nsteps:\n"
        "  - {name: x, type: wait, seconds: 1}\n"
        "  - {name: s, type: assert, actual: '${results.x.y}', equals: '$${LITERAL}'}\n"
    )
    wf = parse_workflow(text, environ={})
    assert wf.steps[1].raw["actual"] == "${results.x.y}"
    assert wf.steps[1].raw["equals"] == "$${LITERAL}"


def test_env_value_cannot_inject_yaml_structure():
    wf = parse_workflow(
        "name: ${EVIL}\nnodes: {count: 1}\nsteps: []\n",
        environ={"EVIL": "x\nsteps: [{type: script}]"},
    )
    assert wf.name == "x\nsteps: [{type: script}]"
    assert wf.steps == []


def test_missing_application_file_is_reported_at_the_path(tmp_path: Path):
    wf = tmp_path / "wf.yml"
    wf.write_text("name: a\nnodes: {count: 1}\nsteps:\n  - type: install_application\n    node: calimero-node-1\n    path: ./nope.wasm\n")
    with pytest.raises(WorkflowValidationError) as info:
        load_workflow(wf, environ={})
    (problem,) = info.value.problems
    assert problem.location.line == 6
    assert "application file not found: ./nope.wasm" in problem.message


def test_yaml_syntax_error_has_a_position():
    (msg,) = problems_of("name: a\nsteps: [\n")
    assert msg.startswith("wf.yml:3:")
    assert "YAML syntax error" in msg


def test_yaml_is_loaded_safely():
    (msg,) = problems_of("name: !!python/object/apply:os.system ['true']\nsteps: []\n")
    assert "YAML" in msg


def test_reused_step_names_are_rejected_only_where_results_read_them():
    text = MINIMAL + "  - name: pause\n    type: wait\n    seconds: 1\n"
    parse_workflow(text, environ={})  # merobox files reuse names freely
    text += "  - {type: assert, actual: '${results.pause.seconds}', equals: 1}\n"
    (msg,) = problems_of(text)
    assert msg.startswith("wf.yml:7:11: ")
    assert "step name 'pause' is used twice (first at line 4)" in msg
    assert "ambiguous" in msg


def test_invalid_value_type_shows_the_value():
    (msg,) = problems_of("name: a\nnodes: {count: 1}\nsteps:\n  - {type: wait, seconds: soon}\n")
    assert "wf.yml:4:27" in msg and '(got "soon")' in msg


def test_placeholder_values_are_type_checked_only_when_resolved():
    wf = parse_workflow(
        "name: a\nnodes: {count: 1}\nsteps:\n  - {name: x, type: wait, seconds: 1}\n  - {type: wait, seconds: '${results.x.n}'}\n",
        environ={},
    )
    assert wf.steps[1].static_config is None


def test_missing_file_and_empty_file():
    with pytest.raises(WorkflowValidationError, match="workflow file not found"):
        load_workflow("/nonexistent/wf.yml")
    (msg,) = problems_of("")
    assert "must be a YAML mapping" in msg


def test_every_problem_is_reported_not_just_the_first():
    text = "name: a\nnodes: {count: 1}\nsteps:\n  - {type: wait}\n  - {type: nope}\n  - {type: call, node: calimero-node-1}\n"
    msgs = problems_of(text)
    assert len(msgs) >= 3
    assert any("missing required key 'seconds'" in m for m in msgs)
    assert any("unknown step type 'nope'" in m for m in msgs)
    assert any("'context_id'" in m for m in msgs)


def test_placeholder_in_flow_mapping_gets_a_quoting_hint():
    (msg,) = problems_of("name: a\nnodes: {count: ${N}}\nsteps: []\n")
    assert "YAML syntax error" in msg
    assert "quote" in msg


def test_union_errors_are_said_once_with_the_real_value():
    (msg,) = problems_of("name: x\nsteps:\n  - type: script\n    run: x\n    args: [{k: 1}]\n")
    assert msg.startswith("wf.yml:5:12: ")
    assert 'args.0: expected text or a whole number or a number or true/false (got {"k": 1})' in msg


def test_results_of_a_step_that_does_not_exist_are_reported_at_load():
    text = MINIMAL + "  - {type: assert, actual: '${results.paus.seconds}', equals: 1}\n"
    (msg,) = problems_of(text)
    assert msg.startswith("wf.yml:7:28: ")
    assert "names step 'paus', but no step has that name" in msg
    assert "did you mean 'pause'?" in msg


def test_nested_aliases_are_refused_before_anything_walks_them():
    laughs = "".join(
        f"  - {{type: assert, actual: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}], is_set: true}}\n"
        for i in range(1, 8)
    )
    text = "name: x\nsteps:\n  - {type: assert, actual: &l0 [a, a, a, a, a, a, a, a, a], is_set: true}\n" + laughs
    (problem,) = problems_of(text)
    assert problem.startswith("wf.yml:")
    assert "aliases expand to" in problem and "limit is 200,000" in problem
    assert "hint: a workflow does not need nested aliases" in problem


def test_a_few_aliases_still_load():
    text = "name: x\nsteps:\n  - &w {type: wait, seconds: 0.01}\n  - *w\n  - *w\n"
    assert len(parse_workflow(text, file=Path("wf.yml"), environ={}).steps) == 3


@pytest.mark.parametrize(
    "text, message, hint",
    [
        ("name: !!python/object:os.system x\nsteps: []\n", "YAML error: could not determine a constructor", "tags"),
        ("name: x\nnodes: &a {count: 1, more: *a}\nsteps: []\n", "recursive", "anchor (`&name`)"),
        ("name: x\nsteps:\n\t- {type: wait, seconds: 1}\n", "YAML syntax error", "tabs"),
        ("name: x\nsteps:\n  - {type: wait, seconds: 1}\n   - x\n", "YAML syntax error", None),
    ],
)
def test_yaml_errors_get_the_hint_for_their_cause(text: str, message: str, hint: str | None):
    (problem,) = problems_of(text)
    assert message in problem
    if hint is None:
        assert "hint:" not in problem
    else:
        assert hint in problem.split("hint:", 1)[1]


def test_a_file_that_is_not_utf8_is_located(tmp_path: Path):
    path = tmp_path / "wf.yml"
    path.write_bytes(b"name: ok\ndescription: caf\xe9\nsteps: []\n")
    with pytest.raises(WorkflowValidationError) as info:
        load_workflow(path, environ={})
    (problem,) = info.value.problems
    assert (problem.location.line, problem.location.col) == (2, 17)
    assert "byte e9" in problem.message and "UTF-8" in problem.hint


def test_env_defaults_may_nest_and_hold_braces():
    wf = parse_workflow(
        'name: "${A:-${B:-deep}}"\ndescription: \'${J:-{"a": {"b": 1}}}\'\nsteps: []\n',
        file=Path("wf.yml"), environ={},
    )
    assert wf.name == "deep"
    assert wf.settings.description == '{"a": {"b": 1}}'


def test_an_env_value_is_literal_text_never_expanded_again():
    env = {"TOKEN": "t${results.nope.x}$${z}"}
    wf = parse_workflow(
        "name: n\ndescription: ${TOKEN}\nsteps:\n  - {name: a, type: assert, actual: '${TOKEN}', is_set: true}\n",
        file=Path("wf.yml"), environ=env,
    )
    # no "names step 'nope'" problem: the value is not a reference
    assert wf.settings.description == "t${results.nope.x}$${z}"
    from calimero_workflow.placeholders import Resolver, Scope

    resolved = Resolver().resolve_text(wf.steps[0].raw["actual"], Scope({}, {}))
    assert resolved == "t${results.nope.x}$${z}"


def test_a_literal_dollar_brace_in_settings_is_unescaped():
    wf = parse_workflow("name: 'cost $${X}'\nsteps: []\n", file=Path("wf.yml"), environ={})
    assert wf.name == "cost ${X}"


def test_github_expression_syntax_is_reported_at_load():
    (problem,) = problems_of("name: x\ndescription: ${{ secrets.TOKEN }}\nsteps: []\n")
    assert "${{ secrets.TOKEN }} is not a valid reference" in problem


def test_a_reference_to_a_step_that_runs_later_is_reported_at_load():
    text = (
        "name: f\nsteps:\n"
        "  - {type: assert, actual: '${results.later.actual}', is_set: true}\n"
        "  - {name: later, type: assert, actual: 1, is_set: true}\n"
        "  - name: loop\n    type: repeat\n    count: 2\n    steps:\n"
        "      - {type: assert, actual: '${results.inside.actual}', is_empty: false}\n"
        "      - {name: inside, type: assert, actual: 1, is_set: true}\n"
    )
    (problem,) = problems_of(text)
    assert problem.startswith("wf.yml:3:")
    assert "names step 'later', which runs later (line 4)" in problem


def test_only_a_script_steps_run_is_kept_from_env_expansion():
    text = (
        "name: r\nsteps:\n"
        "  - {type: script, run: 'echo $${HOME_DIR}'}\n"
        "  - {type: assert, actual: {run: '${WHAT}'}, is_set: true}\n"
    )
    wf = parse_workflow(text, file=Path("wf.yml"), environ={"WHAT": "data", "HOME_DIR": "/h"})
    assert wf.steps[0].raw["run"] == "echo $${HOME_DIR}"
    assert wf.steps[1].raw["actual"] == {"run": "data"}


def test_a_reference_to_an_unknown_node_is_reported_at_load():
    text = "name: n\nnodes: {count: 1, prefix: n}\nsteps:\n  - {type: assert, actual: '${nodes.n-2.url}', is_set: true}\n"
    (problem,) = problems_of(text)
    assert problem.startswith("wf.yml:4:")
    assert "names node 'n-2', which the workflow does not define" in problem and "did you mean 'n-1'?" in problem


def test_a_check_of_a_whole_step_does_not_dump_the_step():
    (problem,) = problems_of("name: s\nsteps:\n  - {type: script}\n")
    assert problem == (
        "wf.yml:3:5: step 'script #1' (script): give exactly one of `script` (a file) or `run` (an inline command)"
    )
