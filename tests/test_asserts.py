"""The assert step, run through the real executor (no nodes needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from calimero_workflow.errors import WorkflowValidationError
from calimero_workflow.executor import WorkflowExecutor
from calimero_workflow.results import Status
from calimero_workflow.steps.asserts import (
    StatementError,
    parse_statement,
    split_top_level,
)
from calimero_workflow.workflow import parse_workflow


async def run_text(text: str, tmp_path: Path):
    wf = parse_workflow(textwrap.dedent(text), file=tmp_path / "wf.yml", environ={})
    return await WorkflowExecutor(wf, env={}, workdir=tmp_path).run()


@pytest.mark.parametrize(
    "statement, passes",
    [
        ("equal(3, 3)", True),
        ("equal(3, 3.0)", True),
        ("equal('3', 3)", True),
        ("equal(abc, abd)", False),
        ("not_equal(a, b)", True),
        ("contains('a,b,c', ',b,')", True),
        ("contains([1, 2, 3], 2)", True),
        ("contains([1, 2, 3], 4)", False),
        ("not_contains('hello', 'z')", True),
        ("regex('v1.2.3', '^v\\d+\\.\\d+')", True),
        ("regex('x', '^y')", False),
        ("is_set('')", False),
        ("is_empty([])", True),
        ("10 >= 9", True),
        ("10 > 10", False),
        ("2 < 10", True),
        ("'b' > 'a'", True),
        ("'a,b' == 'a,b'", True),
        ("EQUAL(1, 1)", True),
        # integers compare exactly, beyond a float's 53 bits
        ("equal(1733350000000000001, 1733350000000000000)", False),
        ("equal('1733350000000000001', 1733350000000000001)", True),
        ("1733350000000000001 > 1733350000000000000", True),
        ("equal(9007199254740993, 9007199254740992.0)", False),
        (f"equal({10**400}, 1)", False),
        (f"{10**400} > 1.5", True),
        (f"{10**400} <= 1e300", False),
        # numbers written as text: digits, decimals, exponents, nothing more
        ("equal('2.5', 2.5)", True),
        ("equal(' 7 ', 7.0)", True),
        ("equal('1e3', 1000)", True),
        ("equal('1_000', 1000)", False),
        ("equal('infinity', 'inf')", False),
        ("equal('nan', 'nan')", True),
    ],
)
async def test_statement_semantics(statement: str, passes: bool, tmp_path: Path):
    text = f"""
    name: t
    steps:
      - type: assert
        statements:
          - "{statement.replace(chr(92), chr(92) * 2)}"
    """
    result = await run_text(text, tmp_path)
    assert result.passed is passes, result.steps[0].error


async def test_placeholders_keep_types_and_commas_in_values(tmp_path: Path):
    text = """
    name: t
    steps:
      - name: src
        type: assert
        actual: {n: 3, text: "a, b", list: [1, 2]}
        is_set: true
      - type: assert
        statements:
          - equal(${results.src.actual.n}, 3)
          - contains(${results.src.actual.text}, ", b")
          - equal(${results.src.actual.list}, [1, 2])
          - ${results.src.actual.n} >= 3
    """
    result = await run_text(text, tmp_path)
    assert result.passed, result.steps[1].error


async def test_failed_statement_reports_its_own_line_expected_and_actual(tmp_path: Path):
    text = """
    name: t
    steps:
      - name: src
        type: assert
        actual: 41
        less_than: 100
      - type: assert
        statements:
          - equal(1, 1)
          - equal(${results.src.actual}, 42)
          - equal(2, 2)
    """
    result = await run_text(text, tmp_path)
    assert not result.passed
    step = result.steps[1]
    assert step.error.location.line == 11
    assert step.error.expected == 42 and step.error.actual == 41
    assert "equal(${results.src.actual}, 42)" in step.error.message
    assert step.data["passed"] == 2 and step.data["failed"] == 1


@pytest.mark.parametrize(
    "check, value, actual, passes",
    [
        ("equals", '"world"', '"world"', True),
        ("equals", "1", "2", False),
        ("not_equals", "1", "2", True),
        ("contains", '"or"', '"world"', True),
        ("matches", '"^w.+d$"', '"world"', True),
        ("greater_than", "5", "6", True),
        ("less_than", "5", "6", False),
        ("is_set", "true", "null", False),
    ],
)
async def test_single_checks(check, value, actual, passes, tmp_path: Path):
    text = f"""
    name: t
    steps:
      - type: assert
        actual: {actual}
        {check}: {value}
    """
    result = await run_text(text, tmp_path)
    assert result.passed is passes
    if not passes:
        assert result.steps[0].error.location.line == 6
        assert "expected" in result.steps[0].error.message


@pytest.mark.parametrize(
    "check, passes",
    [
        ("{actual: 1733350000000000001, equals: 1733350000000000000}", False),
        ("{actual: 1733350000000000001, greater_than: 1733350000000000000}", True),
        (f"{{actual: {10**400}, equals: 1}}", False),
        (f"{{actual: 5, less_than: {10**400}}}", True),
        (f"{{actual: {10**400}, less_or_equal: 1.0e300}}", False),
    ],
)
async def test_single_checks_on_integers_beyond_a_float(check: str, passes: bool, tmp_path: Path):
    result = await run_text(f"name: t\nsteps:\n  - type: assert\n    <<: {check}\n", tmp_path)
    assert result.passed is passes, result.steps[0].error
    assert "internal" not in str(result.steps[0].error)


@pytest.mark.parametrize(
    "statement, passes",
    [
        ("json_equal(9007199254740993, 9007199254740992)", False),
        (f"json_equal({10**400}, {10**400})", True),
        (f"json_equal({10**400}, 1)", False),
        ('json_subset({"n": 18446744073709551615}, {"n": 18446744073709551614})', False),
    ],
)
async def test_json_assert_compares_integers_exactly(statement: str, passes: bool, tmp_path: Path):
    result = await run_text(
        f"name: t\nsteps:\n  - type: json_assert\n    statements: ['{statement}']\n", tmp_path
    )
    assert result.passed is passes, result.steps[0].error


async def test_non_blocking_failure_continues_but_fails_the_run(tmp_path: Path):
    text = """
    name: t
    steps:
      - type: assert
        actual: 1
        equals: 2
        non_blocking: true
      - name: after
        type: assert
        actual: 1
        equals: 1
    """
    result = await run_text(text, tmp_path)
    assert [s.status for s in result.steps] == [Status.FAILED, Status.PASSED]
    assert result.steps[0].non_blocking
    assert not result.passed


async def test_failure_skips_the_remaining_steps(tmp_path: Path):
    text = """
    name: t
    steps:
      - {type: assert, actual: 1, equals: 2}
      - {type: assert, actual: 1, equals: 1}
    """
    result = await run_text(text, tmp_path)
    assert [s.status for s in result.steps] == [Status.FAILED, Status.SKIPPED]
    assert result.counts() == {"total": 2, "passed": 0, "failed": 1, "skipped": 1}


def test_bad_statements_are_validation_errors(tmp_path: Path):
    text = "name: t\nsteps:\n  - type: assert\n    statements:\n      - equal(1)\n      - frobnicate(1, 2)\n      - just words\n"
    with pytest.raises(WorkflowValidationError) as info:
        parse_workflow(text, file=tmp_path / "wf.yml", environ={})
    lines = sorted(p.location.line for p in info.value.problems)
    assert lines == [5, 6, 7]


def test_assert_needs_exactly_one_form(tmp_path: Path):
    for body in ("    actual: 1\n", "    actual: 1\n    equals: 1\n    contains: 1\n",
                 "    actual: 1\n    equals: 1\n    statements: [equal(1,1)]\n"):
        with pytest.raises(WorkflowValidationError):
            parse_workflow("name: t\nsteps:\n  - type: assert\n" + body, environ={})


def test_split_top_level_respects_nesting():
    assert split_top_level("a, 'b,c', [1,2], {x: 1, y: 2}, ${r.a,b}") == [
        "a", " 'b,c'", " [1,2]", " {x: 1, y: 2}", " ${r.a,b}"
    ]
    with pytest.raises(StatementError):
        split_top_level("'unterminated")
    with pytest.raises(StatementError):
        parse_statement("equal(1, 2, 3)")


@pytest.mark.parametrize("kind", ["assert", "json_assert"])
async def test_a_missing_field_is_a_placeholder_error_never_an_expected_failure(tmp_path: Path, kind: str):
    statement = "json_equal(${results.src.actual.nope}, 1)" if kind == "json_assert" else "equal(${results.src.actual.nope}, 1)"
    result = await run_text(
        f"""
        name: p
        steps:
          - {{name: src, type: assert, actual: {{a: 1}}, is_set: true}}
          - type: {kind}
            expected_failure: true
            statements: ['{statement}']
        """,
        tmp_path,
    )
    step = result.steps[1]
    assert step.status is Status.FAILED
    assert step.error.kind == "placeholder"
    assert "has no field 'nope'" in step.error.message
    assert "keys: a" in step.error.hint
    assert step.error.location.line == 7


async def test_contains_on_a_mapping_with_a_list_fails_plainly_and_escapes_unescape(tmp_path: Path):
    result = await run_text(
        """
        name: c
        steps:
          - {name: src, type: assert, actual: {a: 1}, is_set: true}
          - type: assert
            statements:
              - 'not_contains(${results.src.actual}, [1])'
              - 'contains(${results.src.actual}, a)'
              - 'equal($${x}, "$${x}")'
        """,
        tmp_path,
    )
    assert result.passed, [s.error for s in result.all_steps() if s.error]
    assert result.steps[1].data["statements"][2]["values"] == ["${x}", "${x}"]


async def test_a_quoted_operand_is_text_and_its_escaped_quotes_are_quotes(tmp_path: Path):
    result = await run_text(
        r"""
        name: q
        steps:
          - {name: src, type: assert, actual: {list: [10, {b: x}], n: 3}, is_set: true}
          - type: assert
            statements:
              - 'equal("${results.src.actual.list}", "[10,{\"b\":\"x\"}]")'
              - 'equal(${results.src.actual.list}, [10, {"b": "x"}])'
              - 'equal(''it\''s'', "it''s")'
              - 'regex("a1", "^a\d$")'
              - 'equal("${results.src.actual.n}", 3)'
        """,
        tmp_path,
    )
    assert result.passed, [s.error for s in result.all_steps() if s.error]
    values = [o["values"] for o in result.steps[1].data["statements"]]
    assert values[0] == ['[10,{"b":"x"}]', '[10,{"b":"x"}]']
    assert values[4] == ["3", 3]


# -- failure messages keep the operator and the number ------------------------------

async def test_a_single_check_keeps_whole_numbers_and_its_operator(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - {type: assert, actual: 3, less_than: 3}
        """,
        tmp_path,
    )
    error = result.steps[0].error
    assert error.message == "expected 3 to be less than 3"
    assert error.expected == "< 3" and error.actual == 3


async def test_a_failed_comparison_statement_shows_its_operator(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - {name: get, type: assert, actual: 1, is_set: true}
          - type: assert
            statements:
              - "${results.get.actual} > 5"
              - "contains(abc, z)"
        """,
        tmp_path,
    )
    error = result.steps[1].error
    assert error.expected == "> 5" and error.actual == 1
    assert error.message.startswith("2 of 2 statements failed (lines 7, 8); the first: ")
    assert error.location.line == 7


async def test_a_single_failed_statement_keeps_the_short_headline(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - type: assert
            statements: ["1 == 1", "contains(abc, z)"]
        """,
        tmp_path,
    )
    assert result.steps[0].error.message == "assertion failed: contains(abc, z)"
    assert result.steps[0].error.expected == 'contains "z"'


# -- merobox's comparisons --------------------------------------------------------------

async def test_a_null_compares_equal_to_none_as_in_merobox(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - {type: assert, actual: null, is_empty: true, outputs: {x: actual}}
          - type: assert
            statements: ["{{x}} == None", "{{x}} != 'something'"]
          - type: assert
            statements: ["{{x}} != None"]
        """,
        tmp_path,
    )
    assert [s.status for s in result.steps] == [Status.PASSED, Status.PASSED, Status.FAILED]


async def test_json_assert_takes_mappings_and_plain_text_like_merobox(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - {type: assert, actual: value_1, is_set: true, outputs: {v: actual}}
          - type: json_assert
            statements:
              - 'equal({{v}}, "value_1")'
              - "equal({{v}}, 'value_1')"
              - "json_equal({{v}}, value_1)"
              - {statement: 'json_equal({"a": [1, 2]}, {"a": [1, 2]})', message: lists}
          - type: json_assert
            statements:
              - {statement: "json_equal({{v}}, value_2)", message: the value is kept}
        """,
        tmp_path,
    )
    assert result.steps[1].status is Status.PASSED, result.steps[1].error
    error = result.steps[2].error
    assert error.message == "the value is kept: assertion failed: json_equal({{v}}, value_2)"
    assert error.expected == "value_2" and error.actual == "value_1"


# -- regular expressions are bounded and can be stopped ------------------------------------

async def test_a_catastrophic_regex_is_stopped_by_the_step_timeout(tmp_path: Path):
    import time

    started = time.monotonic()
    result = await run_text(
        f"""
        name: t
        steps:
          - type: assert
            timeout: 0.5
            actual: "{'a' * 64}b"
            matches: "(a|aa)+$"
        """,
        tmp_path,
    )
    assert time.monotonic() - started < 5
    error = result.steps[0].error
    assert "did not finish within 0.5 s" in error.message or "timed out" in error.message


async def test_a_catastrophic_regex_without_a_timeout_has_a_default_bound(tmp_path: Path, monkeypatch):
    from calimero_workflow.steps import regexes

    monkeypatch.setattr(regexes, "REGEX_TIMEOUT", 0.3)
    result = await run_text(
        f"""
        name: t
        steps:
          - type: assert
            statements: ["regex({'a' * 64}b, '(a|aa)+$')"]
        """,
        tmp_path,
    )
    error = result.steps[0].error
    assert "did not finish within 0.3 s on a 65-character value" in error.message
    assert "backtracks" in error.hint
    assert error.location.line == 5


async def test_nested_quantifiers_that_re_would_hang_on_finish(tmp_path: Path):
    result = await run_text(
        f"""
        name: t
        steps:
          - {{type: assert, actual: "{'a' * 100}b", matches: "^(a+)+$"}}
        """,
        tmp_path,
    )
    assert result.steps[0].error.message.startswith("expected ")


async def test_an_invalid_regex_from_a_placeholder_fails_the_step_cleanly(tmp_path: Path):
    result = await run_text(
        """
        name: t
        steps:
          - {name: p, type: assert, actual: "(", is_set: true}
          - {type: assert, actual: x, matches: "${results.p.actual}"}
        """,
        tmp_path,
    )
    error = result.steps[1].error
    assert "matches: invalid regular expression '('" in error.message
    assert (error.location.line, error.location.col) == (5, 40)  # the `matches:` value
