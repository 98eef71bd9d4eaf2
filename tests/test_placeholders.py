"""Run-time placeholder resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from calimero_workflow.errors import PlaceholderError
from calimero_workflow.placeholders import Resolver, Scope, split_path


@pytest.fixture
def scope() -> Scope:
    return Scope(
        results={
            "install": {"application_id": "app1"},
            "get": {"output": {"items": [{"name": "a"}, {"name": "b"}], "n": 2}},
            "raw": {"output": '{"nested": {"k": [10, 20]}}'},
            "flag": {"output": True},
        },
        nodes={"node-1": {"name": "node-1", "url": "http://127.0.0.1:1234"}},
        variables={"iteration": 3},
        env={"HOME_DIR": "/h"},
    )


def test_whole_placeholder_keeps_type(scope: Scope):
    r = Resolver()
    assert r.resolve("${results.get.output.n}", scope) == 2
    assert r.resolve("${results.get.output.items}", scope) == [{"name": "a"}, {"name": "b"}]
    assert r.resolve("${results.flag.output}", scope) is True
    assert r.resolve("${iteration}", scope) == 3


def test_list_indices_in_both_spellings(scope: Scope):
    r = Resolver()
    assert r.resolve("${results.get.output.items.1.name}", scope) == "b"
    assert r.resolve("${results.get.output.items[0].name}", scope) == "a"
    assert r.resolve("${results.get.output.items[-1].name}", scope) == "b"


def test_embedded_placeholders_format_as_text(scope: Scope):
    r = Resolver()
    assert r.resolve("app=${results.install.application_id}!", scope) == "app=app1!"
    assert r.resolve("n=${results.get.output.n} ok=${results.flag.output}", scope) == "n=2 ok=true"
    assert r.resolve("x${results.get.output.items.0}", scope) == 'x{"name":"a"}'


def test_json_text_is_parsed_when_traversed(scope: Scope):
    assert Resolver().resolve("${results.raw.output.nested.k.1}", scope) == 20


def test_nested_structures_are_resolved(scope: Scope):
    value = {"args": {"key": "${nodes.node-1.url}", "list": ["${iteration}", "lit"]}}
    assert Resolver().resolve(value, scope) == {
        "args": {"key": "http://127.0.0.1:1234", "list": [3, "lit"]}
    }


def test_escaped_dollar_is_literal(scope: Scope):
    assert Resolver().resolve("cost $${results.install.application_id}", scope) == (
        "cost ${results.install.application_id}"
    )


def test_missing_step_names_existing_ones(scope: Scope):
    with pytest.raises(PlaceholderError) as info:
        Resolver().resolve("${results.nope.x}", scope)
    assert "no results for step 'nope'" in str(info.value)
    assert "install, get, raw, flag" in info.value.hint


def test_missing_field_lists_keys(scope: Scope):
    with pytest.raises(PlaceholderError) as info:
        Resolver().resolve("${results.install.app_id}", scope)
    assert "results.install has no field 'app_id'" in str(info.value)
    assert "application_id" in info.value.hint


def test_missing_node_and_out_of_range(scope: Scope):
    with pytest.raises(PlaceholderError, match="no node named 'node-9'"):
        Resolver().resolve("${nodes.node-9.url}", scope)
    with pytest.raises(PlaceholderError, match="index 5 is out of range"):
        Resolver().resolve("${results.get.output.items.5}", scope)
    with pytest.raises(PlaceholderError, match="not an index"):
        Resolver().resolve("${results.get.output.items.x}", scope)


def test_unknown_head_is_an_error(scope: Scope):
    with pytest.raises(PlaceholderError, match="unknown placeholder"):
        Resolver().resolve("${whatever}", scope)


def test_values_are_never_re_expanded(scope: Scope):
    s = Scope(results={"a": {"v": "${results.a.v}"}}, nodes={})
    assert Resolver().resolve("${results.a.v}", s) == "${results.a.v}"
    assert Resolver().resolve("x ${results.a.v}", s) == "x ${results.a.v}"


def test_split_path():
    assert split_path("a.b[2].c") == ["a", "b", "2", "c"]


def test_escapes_inside_substituted_values_are_kept():
    s = Scope(results={"a": {"v": "$${X}"}}, nodes={})
    assert Resolver().resolve("pre ${results.a.v} $${Y}", s) == "pre $${X} ${Y}"


async def test_run_names_the_loader_keeps_for_run_time_have_values(tmp_path: Path):
    from calimero_workflow.executor import WorkflowExecutor
    from calimero_workflow.workflow import parse_workflow

    text = (
        "name: named run\nsteps:\n"
        "  - {name: a, type: assert, actual: '${run_id}|${workflow_dir}|${workflow.name}', is_set: true}\n"
    )
    wf = parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    result = await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs", run_id="r-1").run()
    assert result.passed, [s.error for s in result.steps]
    assert result.workflow_results["a"]["actual"] == f"r-1|{tmp_path.resolve()}|named run"


def test_a_step_name_with_dots_is_matched_longest_first():
    scope = Scope(
        results={"get": {"v1": "short"}, "get.v1": {"output": "long"}},
        nodes={},
    )
    r = Resolver()
    assert r.resolve("${results.get.v1.output}", scope) == "long"
    assert r.resolve("${results.get.v1}", scope) == {"output": "long"}
    with pytest.raises(PlaceholderError, match="no results for step 'nope'"):
        r.resolve("${results.nope.x}", scope)


# -- run time: errors at the offending key; bad values fail the step, never crash --------

async def _run(text: str, tmp_path: Path):
    import textwrap

    from calimero_workflow.executor import WorkflowExecutor
    from calimero_workflow.workflow import parse_workflow

    wf = parse_workflow(textwrap.dedent(text), file=tmp_path / "wf.yml", environ={})
    return await WorkflowExecutor(wf, env={}, workdir=tmp_path / "runs").run()


async def test_a_placeholder_that_fails_at_run_time_points_at_its_key(tmp_path: Path):
    result = await _run(
        """
        name: t
        steps:
          - {name: a, type: assert, actual: 1, is_set: true}
          - name: b
            type: assert
            message: m
            actual: ${results.a.nope}
            equals: 1
        """,
        tmp_path,
    )
    error = result.steps[1].error
    assert "has no field 'nope'" in error.message
    assert (error.location.line, error.location.col) == (8, 13)


async def test_a_placeholder_deep_in_args_points_at_that_value(tmp_path: Path):
    result = await _run(
        """
        name: t
        steps:
          - {name: a, type: assert, actual: 1, is_set: true}
          - type: script
            run: 'true'
            env:
              FIRST: "1"
              SECOND: "{{missing_value}}"
        """,
        tmp_path,
    )
    error = result.steps[1].error
    assert "unresolved placeholder {{missing_value}}" in error.message
    assert error.location.line == 9


@pytest.mark.parametrize(
    "field, message",
    [
        ("args: ['{{v}}']", "text passed to a program cannot hold a NUL"),
        ("env: {X: '{{v}}'}", "the value of X holds a NUL"),
        ("script: '{{v}}'", "not a usable path: it holds a NUL"),
        ("script: '{{long}}'", "a name in it is 300 bytes long"),
    ],
)
async def test_values_resolved_into_process_fields_fail_the_step_cleanly(field: str, message: str, tmp_path: Path):
    result = await _run(
        f"""
        name: t
        steps:
          - {{type: assert, actual: "a\\0b", is_set: true, outputs: {{v: actual}}}}
          - {{type: assert, actual: {'x' * 300}, is_set: true, outputs: {{long: actual}}}}
          - {{type: script, {'run: "true", ' if 'script:' not in field else ''}{field}}}
        """,
        tmp_path,
    )
    error = result.steps[2].error
    assert error.kind == "invalid", error
    assert message in error.message
    assert error.location.line == 6


@pytest.mark.parametrize(
    "expr, choices",
    [
        ('random_choice(["a", "b", 3])', {"a", "b", 3}),
        ("random_choice([alpha, beta, gamma])", {"alpha", "beta", "gamma"}),  # as merobox reads it
        ("random_choice(['x', \"y\"])", {"x", "y"}),
        ("random_choice([1, 2])", {1, 2}),
    ],
)
def test_random_choice_takes_json_or_merobox_word_lists(scope: Scope, expr: str, choices: set):
    import random

    seeded = Scope(scope.results, scope.nodes, rng=random.Random(7))
    seen = {Resolver().resolve("${" + expr + "}", seeded) for _ in range(60)}
    assert seen == choices


def test_random_choice_of_nothing_is_an_error(scope: Scope):
    with pytest.raises(PlaceholderError, match="random_choice"):
        Resolver().resolve("${random_choice([, ])}", scope)


def test_a_brace_pair_and_a_long_run_of_spaces_is_plain_text(scope: Scope):
    # the former pattern backtracked cubically here (minutes for 4,000 spaces)
    text = "{{" + " " * 200_000 + "x"
    assert Resolver().resolve(text, scope) == text
    assert Resolver().resolve("{{ iteration }}", scope) == 3
    assert Resolver().references("a {{  iteration }} b ${results.x.y}") == ["results.x.y", "iteration"]


@pytest.mark.parametrize("length", ["1e12", "-1", str((1 << 20) + 1)])
def test_random_string_length_is_bounded(scope: Scope, length: str):
    with pytest.raises(PlaceholderError, match="the length must be from 0 to 1,048,576"):
        Resolver().resolve("${random_string(" + length + ")}", scope)


def test_random_string_up_to_the_bound(scope: Scope):
    text = Resolver().resolve("${random_string(1048576)}", scope)
    assert len(text) == 1 << 20 and text.isalnum()
