"""Loading workflow files: positions, env expansion, validation messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from calimero_workflow import yamlsrc
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


@pytest.mark.parametrize(
    "actual, expected",
    [
        ("${A}${B}", "${run_id}"),
        ("${A}{nodes.n-1.url}", "${nodes.n-1.url}"),
        ("${A:-$}{run_id}", "${run_id}"),
        ("x${C} {y}", "xcost$ {y}"),
    ],
)
def test_env_values_never_join_into_a_placeholder(actual: str, expected: str):
    env = {"A": "$", "B": "{run_id}", "C": "cost$"}
    wf = parse_workflow(
        f"name: n\nsteps:\n  - {{name: a, type: assert, actual: '{actual}', is_set: true}}\n",
        file=Path("wf.yml"), environ=env,
    )
    from calimero_workflow.placeholders import Resolver, Scope

    resolved = Resolver().resolve_text(
        wf.steps[0].raw["actual"], Scope({}, {"n-1": {"url": "http://x"}}, {"run_id": "r1"})
    )
    assert resolved == expected


def test_deeply_nested_defaults_are_refused_and_many_dollar_braces_load():
    (msg,) = problems_of("name: n\ndescription: '" + "${A:-" * 40 + "x" + "}" * 40 + "'\nsteps: []\n")
    assert msg.startswith("wf.yml:2:") and "defaults nest more than 16 deep" in msg
    # each `${` is matched once: tens of thousands load at once
    wf = parse_workflow("name: n\ndescription: '" + "${" * 30_000 + "'\nsteps: []\n", environ={})
    assert wf.settings.description == "${" * 30_000


def test_a_literal_dollar_brace_in_settings_is_unescaped():
    wf = parse_workflow("name: 'cost $${X}'\nsteps: []\n", file=Path("wf.yml"), environ={})
    assert wf.name == "cost ${X}"


def test_an_env_value_yaml_reads_as_something_else_gets_a_note():
    wf = parse_workflow(
        "name: x\nsteps:\n  - type: script\n    run: 'true'\n    env:\n"
        "      M: ${MODE}\n      T: ${TIME}\n      N: ${N}\n      Y: ${Y}\n      K: ${API_TOKEN}\n"
        "      Q: \"${MODE}\"\n",
        file=Path("wf.yml"),
        environ={"MODE": "0755", "TIME": "12:30", "N": "42", "Y": "yes", "API_TOKEN": "0x1f2e"},
    )
    env = wf.steps[0].raw["env"]
    assert (env["M"], env["T"], env["N"], env["Y"], env["Q"]) == (493, 750, 42, True, "0755")
    notes = [n for n in wf.notes if "YAML reads" in n or "read by YAML" in n]
    assert notes == [
        "wf.yml:6:10: ${MODE} is '0755', which YAML reads as 493 (write \"${MODE}\" in quotes to keep the text)",
        "wf.yml:7:10: ${TIME} is '12:30', which YAML reads as 750 (write \"${TIME}\" in quotes to keep the text)",
        "wf.yml:9:10: ${Y} is 'yes', which YAML reads as True (write \"${Y}\" in quotes to keep the text)",
        "wf.yml:10:10: the value of ${API_TOKEN} is read by YAML as a number (write \"${API_TOKEN}\" in quotes to keep the text)",
    ]


def test_nested_placeholders_are_refused_at_load():
    (problem,) = problems_of(
        "name: x\nnodes: {count: 1, prefix: n}\nsteps:\n"
        "  - {name: s, type: script, run: 'echo {}', json_output: true}\n"
        "  - {type: assert, actual: '${results.s.output[${nodes.n-1.url}]}', equals: x}\n"
    )
    assert problem.startswith("wf.yml:5:")
    assert "has a placeholder inside a placeholder; they do not nest" in problem


def test_an_empty_parallel_group_is_refused():
    (problem,) = problems_of(
        "name: x\nsteps:\n  - type: parallel\n    groups:\n"
        "      - {name: a, steps: [{type: wait, seconds: 0.01}]}\n      - {name: b, steps: []}\n"
    )
    assert problem.startswith("wf.yml:6:9: group 'b': `steps` is empty")


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nsteps: {a: 1}\n", "wf.yml:2:8: `steps` must be a list of steps, got a mapping"),
        ("name: x\nnodes: 3\nsteps: []\n", "wf.yml:2:8: `nodes` must be a mapping, got the number 3"),
    ],
)
def test_a_wrong_kind_of_value_is_named_in_yaml_words(text: str, message: str):
    (problem,) = problems_of(text)
    assert problem.startswith(message), problem


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


# -- shell text never takes expanded values ---------------------------------------

@pytest.mark.parametrize(
    "type_line, env",
    [
        ("type: ${T:-script}", {}),
        ("type: ${T}", {"T": "script"}),
        ("type: '${T:-script}'", {}),
    ],
)
def test_run_stays_raw_whatever_spelling_reaches_type(type_line: str, env: dict[str, str]):
    text = f"name: x\nsteps:\n  - {type_line}\n    run: echo hello ${{EVIL}}\n"
    (msg,) = problems_of(text, env={"EVIL": "$(touch PWNED)", **env})
    assert msg.startswith("wf.yml:4:10: ")
    assert "not expanded inside `run`" in msg
    assert "PWNED" not in msg


def test_run_merged_in_from_an_anchor_stays_raw():
    text = (
        "base: &s {type: script}\nname: x\nsteps:\n  - <<: *s\n    run: echo ${EVIL}\n"
    )
    msgs = problems_of(text, env={"EVIL": "$(touch PWNED)"})
    assert any("not expanded inside `run`" in m for m in msgs)


@pytest.mark.parametrize("section", ["sandbox", "contracts"])
def test_a_container_command_is_shell_text_too(section: str):
    sandbox = "sandbox: {image: i, port: 1}\n" if section == "contracts" else ""
    extra = "image: i, port: 1, " if section == "sandbox" else ""
    text = f"name: x\n{sandbox}{section}: {{{extra}command: [sh, -c, 'deploy ${{NET}}']}}\nsteps: []\n"
    msgs = problems_of(text, env={"NET": "$(touch PWNED)"})
    assert any(f"not expanded inside `{section}.command`" in m for m in msgs)
    assert not any("PWNED" in m for m in msgs)
    # the shell's own variables are written $${NAME}
    ok = text.replace("${NET}", "$${NET}")
    wf = parse_workflow(ok, file=Path("wf.yml"), environ={})
    assert getattr(wf.settings, section).command[-1] == "deploy ${NET}"


# -- typed placeholders under both of PyYAML's loaders ----------------------------

LOADERS = [yamlsrc._PyLoader] + ([yamlsrc._CLoader] if yamlsrc._CLoader else [])


@pytest.fixture(params=LOADERS, ids=lambda c: c.__name__)
def loader(request, monkeypatch):
    monkeypatch.setattr(yamlsrc, "_Loader", request.param)
    return request.param


def test_an_unquoted_placeholder_takes_the_type_of_its_value(loader):
    env = {"X": "123", "F": "1.5", "B": "true"}
    data = yamlsrc.load_yaml("a: ${X}\nb: '${X}'\nc: ${F}\nd: ${B}\n", source_file=None, environ=env)
    assert data == {"a": 123, "b": "123", "c": 1.5, "d": True}
    assert type(data["a"]) is int


@pytest.mark.parametrize("count", ['"3"', "3.0", "true", "0"])
def test_a_parallel_group_count_must_be_a_positive_whole_number(count: str):
    text = (
        "name: x\nsteps:\n  - name: par\n    type: parallel\n    groups:\n"
        f"      - {{name: g, count: {count}, steps: [{{type: wait, seconds: 0.01}}]}}\n"
    )
    (msg,) = problems_of(text)
    assert msg.startswith("wf.yml:6:")
    assert "group 'g': count" in msg


# -- merge keys -------------------------------------------------------------------

def test_a_key_written_out_wins_over_a_merged_one(loader):
    text = (
        "base: &w {type: wait, seconds: 5, message: base}\nname: x\nsteps:\n"
        "  - <<: *w\n    seconds: 0.01\n"
    )
    data = yamlsrc.load_yaml(text, source_file=None, environ={})
    assert data["steps"][0] == {"type": "wait", "seconds": 0.01, "message": "base"}
    assert data["steps"][0].value_pos("seconds") == (5, 14)


def test_of_two_merged_mappings_the_first_listed_wins(loader):
    text = "a: &a {k: 1}\nb: &b {k: 2, j: 3}\nc:\n  <<: [*a, *b]\n"
    assert yamlsrc.load_yaml(text, source_file=None, environ={})["c"] == {"k": 1, "j": 3}


def test_a_merge_key_written_twice_is_refused(loader):
    text = "a: &a {k: 1}\nb: &b {k: 2}\nc:\n  <<: *a\n  <<: *b\n"
    with pytest.raises(WorkflowValidationError) as info:
        yamlsrc.load_yaml(text, source_file=Path("wf.yml"), environ={})
    (problem,) = info.value.problems
    assert problem.render().startswith("wf.yml:5:3: key '<<' is given twice in one mapping")
    assert "`<<: [*first, *second]`" in problem.render()


def test_a_key_written_twice_is_still_refused(loader):
    text = "base: &w {type: wait}\nname: x\nsteps:\n  - <<: *w\n    seconds: 1\n    seconds: 2\n"
    with pytest.raises(WorkflowValidationError) as info:
        yamlsrc.load_yaml(text, source_file=Path("wf.yml"), environ={})
    (problem,) = info.value.problems
    assert "key 'seconds' is given twice" in problem.message
    assert problem.location.line == 6


# -- YAML errors: located, with the hint that fits --------------------------------

@pytest.mark.parametrize(
    "text, message, hint",
    [
        ("name: x\nsteps:\n  - type: script\n    run: x\n    env: {CTX: ${results.ctx.context_id}}\n",
         "YAML syntax error", 'must be quoted: env: {CTX: "${results.ctx.context_id}"}'),
        ("name: x\nsteps: " + "[" * 2000 + "]" * 2000 + "\n", "", "few levels of nesting"),
        ('name: "a\\uZZZZ"\nsteps: []\n', "YAML syntax error", "a backslash starts an escape"),
        ("name: x\nsteps:\n  - {type: wait, seconds: 2024-13-45}\n", "is not a valid date", "quote it"),
        ("name: x\nsteps:\n  - {type: wait, seconds: 1" + "0" * 5000 + "}\n",
         "it has 5001 digits (the limit is 4300)", "quote it"),
    ],
    ids=["flow-mapping", "nesting", "escape", "date", "huge-number"],
)
def test_yaml_errors_are_located_with_a_fitting_hint(loader, text: str, message: str, hint: str):
    (problem,) = problems_of(text)
    assert problem.startswith("wf.yml:")
    assert message in problem
    assert hint in problem.split("hint:", 1)[1]
    assert "json_subset" not in problem


@pytest.mark.parametrize(
    "body",
    [
        "message: " + "[" * 40_000 + "]" * 40_000,
        "message: " + "{a: " * 20_000 + "b" + "}" * 20_000,
        "message:\n" + "".join(" " * (6 + i) + "- \n" for i in range(3_000)),
    ],
    ids=["flow-sequences", "flow-mappings", "block-sequences"],
)
def test_tens_of_thousands_of_levels_are_refused_without_crashing(tmp_path: Path, body: str):
    # in a process of its own: libyaml's composer (PyYAML < 6.0.4) recursed
    # in C until the process died
    wf = tmp_path / "deep.yml"
    wf.write_text("name: deep\nsteps:\n  - type: assert\n    actual: a\n    equals: a\n    " + body + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "calimero_workflow", "validate", str(wf)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-500:])
    assert "deep.yml:" in done.stderr and "nest" in done.stderr, done.stderr[-500:]


def test_the_run_hint_is_valid_yaml():
    (msg,) = problems_of("name: x\nsteps:\n  - type: script\n    run: echo ${X:-1}\n")
    example = msg.split("(e.g. ", 1)[1].split(")", 1)[0]
    text = f"name: x\nsteps:\n  - type: script\n    run: echo \"$CTX\"\n    {example}\n"
    assert yamlsrc.load_yaml(text, source_file=None, environ={})["steps"][0]["env"] == {
        "CTX": "${results.ctx.context_id}"
    }


# -- credentials never reach a message --------------------------------------------

@pytest.mark.parametrize(
    "auth, secret",
    [
        ("{method: password, username: bob, password: 98765432101}", "98765432101"),
        ("{method: api_key, api_key: [sekret-key-1]}", "sekret-key-1"),
        ("{method: api_key, key: {x: sekret-key-2}}", "sekret-key-2"),
        ("'bob:sekret-pass-3'", "sekret-pass-3"),
    ],
)
def test_validation_errors_never_show_a_credential(auth: str, secret: str):
    text = f"name: x\nremote_nodes:\n  r1:\n    url: http://127.0.0.1:1\n    auth: {auth}\nsteps: []\n"
    msgs = problems_of(text)
    assert msgs and all(secret not in m for m in msgs)
    assert any("***" in m for m in msgs)


def test_a_misspelled_auth_method_is_shown_but_the_password_next_to_it_is_not():
    (msg,) = problems_of(
        "name: x\nremote_nodes:\n  r1:\n    url: http://127.0.0.1:1\n"
        "    auth: {method: pasword, username: bob, password: sekret-pass-4}\nsteps: []\n"
    )
    assert "auth.method: Input should be 'none', 'api_key', 'password' or 'user_password'" in msg
    assert '(got "pasword")' in msg and "sekret-pass-4" not in msg


def test_a_url_password_is_masked_in_errors():
    text = 'name: x\nremote_nodes: {r: {url: "http://bob:Hunter2Pass@"}}\nsteps: []\n'
    (msg,) = problems_of(text)
    assert "names no host" in msg and "Hunter2Pass" not in msg
    assert "http://bob:***@" in msg


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://host/x", "over http:// or https://, not ftp://"),
        ("127.0.0.1:2528", "over http:// or https://"),
        ("http://host:99999", "its port is not a number"),
        ("http://ho st", "cannot hold spaces"),
    ],
)
def test_a_remote_url_is_checked_at_load(url: str, message: str):
    (msg,) = problems_of(f"name: x\nremote_nodes: {{r: {{url: '{url}'}}}}\nsteps: []\n")
    assert msg.startswith("wf.yml:2:") and message in msg


# -- bad literal values: located errors, never a traceback ------------------------

NODE = "name: x\nnodes: {count: 1}\nsteps:\n"


@pytest.mark.parametrize(
    "step, message",
    [
        ("{type: create_mesh, context_node: calimero-node-1, application_id: a, nodes: 1}", "nodes: Input should be a valid list"),
        ("{type: create_mesh, context_node: calimero-node-1, application_id: a, nodes: 1.5}", "nodes: Input should be a valid list"),
        ("{type: create_mesh, context_node: calimero-node-1, application_id: a, nodes: true}", "nodes: Input should be a valid list"),
        ("{type: upload_blob, node: calimero-node-1, file_path: " + "a" * 300 + "}", "a name in it is 300 bytes long"),
        ('{type: script, script: "a\\0b.sh"}', "script: not a usable path: it holds a NUL character"),
        ('{type: script, run: x, args: ["a\\0b"]}', "args.0: text passed to a program cannot hold a NUL"),
        ('{type: script, run: x, env: {X: "a\\0b"}}', "the value of X holds a NUL character"),
        ('{type: script, run: x, env: {"A=B": "1"}}', "cannot name an environment variable"),
        ("{type: call, node: calimero-node-1, context_id: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc, method: m, args: {d: 2024-01-01}}", "args.d: 2024-01-01 is a YAML date"),
        ("{type: call, node: calimero-node-1, context_id: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc, method: m, args: {n: .nan}}", "args.n: .nan is a YAML non-finite number"),
        ("{type: call, node: calimero-node-1, context_id: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc, method: m, args: {b: !!binary aGVsbG8=}}", "binary value (!!binary)"),
        ("{type: call, node: calimero-node-1, context_id: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc, method: m, args: {s: !!set {a, b}}}", "set (!!set)"),
        ("{type: download_blob, node: calimero-node-1, blob_id: b, output_path: ../../outside.bin}", "output_path '../../outside.bin' is outside"),
        ("{type: assert, actual: x, matches: '(unclosed'}", "invalid regular expression '(unclosed'"),
        ("{type: assert, statements: ['regex(a, \"(\")']}", "invalid regular expression '('"),
        # times beyond a week break timers and regex deadlines
        ("{type: assert, actual: a, equals: a, timeout: 1.0e+15}", "timeout: Input should be less than or equal to 604800"),
        ("{type: wait, seconds: 1, retry_delay: 1e400}", "retry_delay: Input should be less than or equal to 604800"),
        ("{type: wait_for_sync, context_id: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc, check_interval: 1e9}", "check_interval: Input should be less than or equal to 604800"),
        ("{type: fuzzy_test, duration_minutes: 1e9, operations: [{steps: [{type: wait, seconds: 1}]}]}", "duration_minutes: Input should be less than or equal to 10080"),
    ],
)
def test_bad_literal_values_are_located_errors(step: str, message: str):
    msgs = problems_of(NODE + f"  - {step}\n")
    assert any(m.startswith("wf.yml:4:") and message in m for m in msgs), msgs


@pytest.mark.parametrize("value", [".inf", "1e400", "604801"])
def test_the_ready_timeout_is_at_most_a_week(value: str):
    msgs = problems_of(f"name: t\nwait_timeout: {value}\nsteps: [{{type: wait, seconds: 1}}]\n")
    assert any(
        m.startswith("wf.yml:2:15:") and "wait_timeout: Input should be less than or equal to 604800" in m
        for m in msgs
    ), msgs


def test_a_date_in_call_args_says_how_to_quote_it():
    (msg,) = problems_of(NODE + "  - {type: call, node: calimero-node-1, context_id: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc, method: m, args: {d: 2024-01-01}}\n")
    assert "hint: quote it to pass it as text: '2024-01-01'" in msg


@pytest.mark.parametrize(
    "nodes, message",
    [
        ("{count: 2, base_rpc_port: 65535}", "needs ports up to 65536"),
        ("{count: 3, base_port: 65534}", "needs ports up to 65536"),
        ("{count: 3, base_port: 3000, base_rpc_port: 3002}", "overlap"),
        ("{a: {rpc_port: 4000}, b: {rpc_port: 4000}}", "uses port 4000, which node 'a' uses already"),
    ],
)
def test_node_ports_are_checked_at_load(nodes: str, message: str):
    msgs = problems_of(f"name: x\nnodes: {nodes}\nsteps: []\n")
    assert any(m.startswith("wf.yml:2:") and message in m for m in msgs), msgs


def test_a_script_in_node_containers_needs_the_docker_backend():
    text = NODE + "  - {type: script, run: 'true', target: nodes}\n"
    (msg,) = problems_of("backend: embedded\n" + text)
    assert "`target: nodes`" in msg and "embedded backend has none" in msg
    with pytest.raises(WorkflowValidationError):
        parse_workflow(text, file=Path("wf.yml"), environ={}, for_run=True)
    # Unknown backend (validate): accepted; docker: accepted.
    parse_workflow(text, file=Path("wf.yml"), environ={})
    parse_workflow(text, file=Path("wf.yml"), environ={}, backend="docker", for_run=True)
    (msg,) = problems_of("name: x\nsteps:\n  - {type: script, run: 'true', target: nodes}\n")
    assert "the workflow has none" in msg


# -- messages -----------------------------------------------------------------------

def test_a_typo_in_a_nested_mapping_names_that_mapping():
    (msg,) = problems_of(
        "name: x\nremote_nodes:\n  r:\n    url: http://127.0.0.1:1\n    auth: {method: api_key, apikey: x}\nsteps: []\n"
    )
    assert "remote_nodes.r.auth: unknown key 'apikey'" in msg
    assert "did you mean 'api_key'?" in msg
    assert "allowed keys" not in msg


def test_a_typo_in_a_parallel_group_is_said_once():
    (msg,) = problems_of(
        "name: x\nsteps:\n  - name: par\n    type: parallel\n    groups:\n      - name: g\n"
        "        step:\n          - {type: wait, seconds: 0.01}\n"
    )
    assert msg.startswith("wf.yml:7:9: step 'par' (parallel): group 'g': unknown key 'step'")
    assert "did you mean 'steps'?" in msg


def test_a_typo_in_a_fuzzy_operation_names_the_operation():
    (msg,) = problems_of(
        NODE + "  - name: fz\n    type: fuzzy_test\n    context_id: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\n    nodes: [calimero-node-1]\n"
        "    max_operations: 1\n    operations:\n      - name: op\n        wieght: 2\n"
        "        steps: [{type: wait, seconds: 0.01}]\n"
    )
    assert "operation 'op': unknown key 'wieght'" in msg and "did you mean 'weight'?" in msg


def test_a_step_with_a_bad_type_is_the_only_error_for_its_references():
    (msg,) = problems_of(
        NODE + "  - {name: install, type: instal_application, node: calimero-node-1, path: a.wasm}\n"
        "  - {type: assert, actual: '${results.install.application_id}', is_set: true}\n"
    )
    assert "unknown step type 'instal_application'" in msg


def test_a_dotted_step_name_can_be_referenced():
    wf = parse_workflow(
        NODE + "  - {name: get.v1, type: wait, seconds: 0.01}\n"
        "  - {type: assert, actual: '${results.get.v1.seconds}', equals: 0.01}\n",
        file=Path("wf.yml"), environ={},
    )
    assert len(wf.steps) == 2
    (msg,) = problems_of(
        NODE + "  - {name: get.v1, type: wait, seconds: 0.01}\n"
        "  - {type: assert, actual: '${results.get.v2.seconds}', equals: 0.01}\n"
    )
    assert "names step 'get'" in msg and "did you mean 'get.v1'?" in msg


# -- merobox keys -------------------------------------------------------------------

def test_merobox_top_level_keys_are_accepted_with_notes():
    text = (
        "name: x\nnear_devnet: false\nno_docker: true\nbinary_path: /usr/bin/merod\n"
        "topology: {type: nat}\nauth_image: img\nauth_use_cached: true\nwebui_use_cached: true\n"
        "contracts_dir: ./contracts\nvariables: {app: &app ./a.wasm}\nnodes: {count: 1}\nsteps: []\n"
    )
    wf = parse_workflow(text, file=Path("wf.yml"), environ={})
    notes = "\n".join(wf.notes)
    for word in ("no_docker", "near_devnet", "topology", "auth_image", "'variables' is not a setting"):
        assert word in notes


def test_an_unknown_top_level_key_is_a_typo_only_when_close_to_a_known_one():
    (msg,) = problems_of("name: x\nnmae: y\nsteps: []\n")
    assert msg.startswith("wf.yml:2:1: workflow: unknown key 'nmae'") and "did you mean 'name'?" in msg
    wf = parse_workflow("name: x\nmy_team_notes: hi\nsteps: []\n", file=Path("wf.yml"), environ={})
    assert any("'my_team_notes' is not a setting here and is ignored" in n for n in wf.notes)


def test_count_mode_takes_merobox_node_keys():
    wf = parse_workflow(
        "name: x\nnodes: {count: 2, chain_id: testnet-1, init_args: [--x]}\nsteps: []\n",
        file=Path("wf.yml"), environ={},
    )
    assert wf.node_names == ["calimero-node-1", "calimero-node-2"]
    assert any(n.startswith("nodes.chain_id") for n in wf.notes)
    assert any(n.startswith("nodes.init_args") for n in wf.notes)
    (msg,) = problems_of("name: x\nnodes: {count: 2, prefx: n}\nsteps: []\n")
    assert "unknown key 'prefx'" in msg and "did you mean 'prefix'?" in msg


def test_merobox_step_keys_are_accepted():
    wf = parse_workflow(
        NODE + "  - {type: call, node: calimero-node-1, context_id: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc, method: m, token: eyJhbGciOi.x.y,"
        " allow_failure: true, state_retry_attempts: 4, state_retry_delay: 0.5, unauthenticated: true}\n"
        "  - {type: script, run: 'echo {}', json_output: true}\n",
        file=Path("wf.yml"), environ={},
    )
    call = wf.steps[0].static_config
    assert call.allow_failure and call.retries == 3 and call.retry_delay == 0.5
    assert "eyJhbGciOi.x.y" in wf.secret_values()
    assert any(n.startswith("token:") for n in wf.notes)
    (msg,) = problems_of(
        NODE + "  - {type: call, node: calimero-node-1, context_id: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc, method: m, allow_failure: true,"
        " expected_failure: true}\n"
    )
    assert "either `allow_failure`" in msg


def test_older_merobox_mesh_capability_is_accepted_with_a_note():
    wf = parse_workflow(
        "name: x\nnodes: {count: 2}\nsteps:\n"
        "  - {type: create_mesh, context_node: calimero-node-1, application_id: '" + "ab" * 32 + "',"
        " nodes: [calimero-node-2], capability: member}\n",
        file=Path("wf.yml"), environ={},
    )
    assert wf.steps[0].static_config.capability == "member"
    (note,) = [n for n in wf.notes if n.startswith("create_mesh.capability")]
    assert "ignored" in note and "namespace" in note


def test_steps_sharing_a_name_get_a_note():
    wf = parse_workflow(
        "name: x\nsteps:\n  - {name: w, type: wait, seconds: 0.01}\n  - {name: v, type: wait, seconds: 0.01}\n"
        "  - {name: w, type: wait, seconds: 0.02}\n",
        environ={},
    )
    assert [n for n in wf.notes if "are named" in n] == [
        "2 steps are named 'w' (lines 3, 5): ${results.w…} and the results file hold the last "
        "of them that passed; give each its own name to keep each"
    ]


@pytest.mark.parametrize(
    "step, message",
    [
        # a defaults anchor of another type, overridden by the step's own
        ("  - <<: *call\n    type: script\n    run: echo \"branch is ${BRANCH}\"\n", "not expanded inside `run`"),
        ("  - <<: [*script, *call]\n    run: echo ${BRANCH}\n", "not expanded inside `run`"),
        # the type that wins is a call's, where `run` means nothing
        ("  - <<: *script\n    type: call\n    run: echo ${BRANCH}\n", "(call): unknown key 'run'"),
        ("  - <<: [*call, *script]\n    run: echo ${BRANCH}\n", "(call): unknown key 'run'"),
    ],
)
def test_a_merged_type_never_makes_run_expand(loader, step: str, message: str):
    text = (
        "x-call: &call {type: call, retries: 1, timeout: 30}\nx-script: &script {type: script}\n"
        "name: x\nsteps:\n" + step
    )
    msgs = problems_of(text, env={"BRANCH": 'x"; id; echo "'})
    assert any(message in m for m in msgs), msgs
    assert not any("id; echo" in m for m in msgs)


def test_an_unset_variable_does_not_hide_the_files_other_problems():
    msgs = problems_of(
        "name: t\nnodes:\n  count: ${N}\nsteps:\n  - type: nosuchstep\n  - type: wait\n    seconds: ${S}\n"
    )
    assert [m.split(": ", 1)[0] + ": " + m.split(": ", 1)[1].split("\n")[0] for m in msgs] == [
        "wf.yml:3:10: environment variable N is not set",
        "wf.yml:5:11: unknown step type 'nosuchstep'",
        "wf.yml:7:14: environment variable S is not set",
    ]
