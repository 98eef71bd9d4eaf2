"""The GitHub adapter: escaping, masks, groups, stop-commands, limits, env files.

The helpers at the top read our output back the way the Actions runner does
(its unescape tables, its stop-commands state, its heredoc parser), so the
tests check what the runner would see, not just the text we wrote.
"""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path

import pytest

from calimero_workflow.report.github import (
    MAX_ANNOTATIONS_PER_LEVEL,
    MAX_MESSAGE_CHARS,
    Annotation,
    GitHub,
    Redactor,
    escape_data,
    escape_property,
    utf16_size,
)

# -- the runner's side, as the reference notes describe it -------------------------


def unescape_data(text: str) -> str:
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def unescape_property(text: str) -> str:
    return (
        text.replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%3A", ":")
        .replace("%2C", ",")
        .replace("%25", "%")
    )


#: Commands the runner knows (ActionCommandManager's extensions); only these run.
_REGISTERED = frozenset(
    {
        "error", "warning", "notice", "debug", "group", "endgroup", "add-mask",
        "set-output", "save-state", "set-env", "add-path", "echo",
        "stop-commands", "add-matcher", "remove-matcher",
    }
)  # fmt: skip


def _parse_v2(line: str, registered: set[str]) -> tuple[str, dict, str] | None:
    """ActionCommand.TryParseV2: ``::name props::data`` after leading spaces."""
    line = line.lstrip()
    if not line.startswith("::"):
        return None
    end = line.find("::", 2)
    if end < 0:
        return None
    info = line[2:end]
    name, _, props_text = info.partition(" ")
    if name.lower() not in registered:
        return None
    props = {}
    for pair in props_text.split(","):
        key, eq, value = pair.partition("=")
        if eq and key and value:
            props[key] = unescape_property(value)
    return name.lower(), props, unescape_data(line[end + 2 :])


def _parse_v1(line: str, registered: set[str]) -> tuple[str, dict, str] | None:
    """ActionCommand.TryParse: the legacy ``##[name props]data``, anywhere in a line."""
    start = line.find("##[")
    if start < 0:
        return None
    close = line.find("]", start)
    if close < 0:
        return None
    name = line[start + 3 : close].partition(" ")[0]
    if name.lower() not in registered:
        return None
    return name.lower(), {"legacy": "true"}, line[close + 1 :]


def runner_commands(output: str) -> list[tuple[str, dict[str, str], str]]:
    """The commands the runner would execute for ``output``, in order.

    As the runner does it: lines end at ``\\r``, ``\\n`` or ``\\r\\n``
    (StreamReader.ReadLine); a line is a command when it starts with ``::``
    after spaces, or holds a legacy ``##[`` command anywhere; command names
    are case-insensitive; after ``stop-commands`` only the resume token runs.
    """
    executed = []
    registered = set(_REGISTERED)
    stop_token: str | None = None
    for line in re.split(r"\r\n|\r|\n", output):
        command = _parse_v2(line, registered) or _parse_v1(line, registered)
        if command is None:
            continue
        name, props, data = command
        if stop_token is not None:
            if name == stop_token.lower():
                registered.discard(name)
                stop_token = None
            continue
        if name == "stop-commands":
            stop_token = data
            registered.add(data.lower())
            continue
        executed.append((name, props, data))
    return executed


def read_env_file(path: Path) -> dict[str, str]:
    """The runner's parser of GITHUB_OUTPUT / GITHUB_STATE (heredoc form)."""
    values = {}
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        name, delimiter = line.split("<<", 1)
        body = []
        i += 1
        while lines[i] != delimiter:
            body.append(lines[i])
            i += 1
        values[name] = "\n".join(body)
        i += 1
    return values


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def gh(tmp_path: Path, out: io.StringIO) -> GitHub:
    env = {
        "GITHUB_OUTPUT": str(tmp_path / "output"),
        "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"),
        "GITHUB_STATE": str(tmp_path / "state"),
    }
    return GitHub(env, out)


# -- escaping -------------------------------------------------------------------------


def test_escape_data_and_property_follow_the_runner_tables():
    assert escape_data("100%\r\ndone") == "100%25%0D%0Adone"
    assert escape_property("a:b,c%d\ne") == "a%3Ab%2Cc%25d%0Ae"
    # the percent sign goes first, so an escape is never escaped twice
    assert escape_data("%0A") == "%250A"
    assert unescape_data(escape_data("%0A")) == "%0A"


def test_escaping_round_trips_any_text():
    rng = random.Random(7)
    alphabet = "ab%:,\r\n=:: 0A25é𝄞"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert unescape_data(escape_data(text)) == text
        assert unescape_property(escape_property(text)) == text
        assert "\n" not in escape_data(text) and "\r" not in escape_data(text)
        assert not set(",:") & set(escape_property(text))


# -- annotations ------------------------------------------------------------------------


def test_annotation_command_has_only_given_properties_in_order():
    line = Annotation(
        "error",
        "boom\nsecond line 100%",
        file="wf/a b.yml",
        line=12,
        col=3,
        title="kv: set, get",
    ).to_command()
    assert line == (
        "::error file=wf/a b.yml,line=12,col=3,title=kv%3A set%2C get::boom%0Asecond line 100%25"
    )
    assert Annotation("notice", "just text").to_command() == "::notice::just text"


def test_annotation_drops_positions_the_runner_would_reject():
    # no line: a column alone is dropped; line 0 is no line
    assert (
        Annotation("warning", "m", file="a.yml", col=4).to_command()
        == "::warning file=a.yml::m"
    )
    assert (
        Annotation("warning", "m", file="a.yml", line=0).to_command()
        == "::warning file=a.yml::m"
    )


def test_annotation_message_is_cut_to_the_runner_limit_and_title_to_one_line():
    command = Annotation(
        "error", "x" * 10_000, title="two\nlines " + "t" * 400
    ).to_command()
    [(name, props, message)] = runner_commands(command)
    assert name == "error"
    assert len(message) <= MAX_MESSAGE_CHARS
    assert message.startswith("x" * 1000) and "cut to 4096 characters" in message
    assert "\n" not in props["title"] and len(props["title"]) <= 255
    assert props["title"].startswith("two lines t")


def test_annotation_control_characters_are_made_visible():
    command = Annotation("error", "red \x1b[31m bell \x07").to_command()
    assert "\x1b" not in command and "\x07" not in command
    assert "\\x1b[31m" in command


def test_annotations_beyond_the_per_step_limit_are_counted_in_one_warning(gh, out):
    for i in range(15):
        gh.annotate(Annotation("error", f"failure {i}", file="a.yml", line=i + 1))
    for i in range(12):
        gh.annotate(Annotation("warning", f"warning {i}"))
    for i in range(12):
        gh.annotate(Annotation("notice", f"notice {i}"))
    assert gh.dropped_annotations == {"error": 5, "warning": 3, "notice": 2}
    gh.flush_annotations()
    executed = runner_commands(out.getvalue())
    errors = [c for c in executed if c[0] == "error"]
    warnings = [c for c in executed if c[0] == "warning"]
    assert [c[2] for c in errors] == [
        f"failure {i}" for i in range(MAX_ANNOTATIONS_PER_LEVEL)
    ]
    assert len([c for c in executed if c[0] == "notice"]) == MAX_ANNOTATIONS_PER_LEVEL
    # the count is a warning (the runner hides notices without enhanced
    # annotations): 9 of ours plus the one that counts the rest
    assert len(warnings) == MAX_ANNOTATIONS_PER_LEVEL
    assert warnings[-1][2].startswith(
        "5 errors, 3 warnings, 2 notices more not annotated"
    )
    assert gh.dropped_annotations == {"error": 0, "warning": 0, "notice": 0}


def test_flush_annotations_prints_nothing_when_everything_fit(gh, out):
    gh.annotate(Annotation("error", "one"))
    gh.flush_annotations()
    assert [c[0] for c in runner_commands(out.getvalue())] == ["error"]


# -- masks, groups, untrusted text --------------------------------------------------------


def test_add_mask_masks_each_line_once_and_escapes(gh, out):
    gh.add_mask("s3cr%t\nsecond-line")
    gh.add_mask("s3cr%t")
    gh.add_mask("   ")
    masks = [
        data for name, _, data in runner_commands(out.getvalue()) if name == "add-mask"
    ]
    assert masks == ["s3cr%t\nsecond-line", "s3cr%t", "second-line"]


def test_masked_values_are_redacted_in_what_we_print_and_write(gh, out, tmp_path):
    assert gh.add_mask("pa:ss,w%rd") and not gh.add_mask("abc")
    gh.echo("echo pa:ss,w%rd")
    gh.annotate(Annotation("error", "saw pa:ss,w%rd", title="t pa:ss,w%rd"))
    gh.untrusted("node says pa:ss,w%rd")
    # the console reporter writes pieces of lines; a split value is still found
    for piece in ("console pa:s", "s,w", "%rd and abc\n", "tail pa:ss,w%rd"):
        gh.stream.write(piece)
    gh.echo("after")
    printed = out.getvalue()
    assert printed.count("pa:ss,w%rd") == 0 and printed.count("pa%3Ass") == 0
    assert "::add-mask::pa:ss,w%25rd" in printed  # only the mask itself says it
    lines = printed.splitlines()
    assert "echo ***" in lines and "console *** and abc" in lines
    assert lines.index("tail ***") < lines.index("after")
    assert "title=t ***::saw ***" in printed
    data = '<a v="pa:ss,w%rd">{"k": "pa:ss,w%rd"} \xff</a>\n'.encode("latin-1")
    assert gh.redactor.redact_bytes(data) == b'<a v="***">{"k": "***"} \xff</a>\n'
    # a value spelt as JSON, then HTML, inside JSON (an app's log in the summary)
    assert gh.add_mask('q"<x>"q')
    assert gh.redact('"log": "value \\"q\\\\\\"&lt;x&gt;\\\\\\"q\\""') == '"log": "value \\"***\\""'


def test_groups_close_on_error_and_do_not_nest(gh, out):
    with pytest.raises(RuntimeError, match="do not nest"):
        with gh.group("outer"):
            with gh.group("inner"):
                pass
    with pytest.raises(KeyError):
        with gh.group("workflow: a\nb"):
            raise KeyError("x")
    names = [(name, data) for name, _, data in runner_commands(out.getvalue())]
    assert names == [
        ("group", "outer"),
        ("endgroup", ""),
        ("group", "workflow: a b"),
        ("endgroup", ""),
    ]


def test_untrusted_text_cannot_issue_commands(gh, out):
    hostile = "\n".join(
        [
            "::error file=x.yml,line=1::injected",
            "   ::add-mask::hide-everything",
            "::stop-commands::mine",
            "::mine::",
            "::endgroup::",
            "::warning::still text \x1b[2J",
        ]
    )
    with gh.group("logs"):
        gh.untrusted(hostile)
    gh.annotate(Annotation("error", "ours"))
    executed = runner_commands(out.getvalue())
    assert [(name, data) for name, _, data in executed] == [
        ("group", "logs"),
        ("endgroup", ""),
        ("error", "ours"),
    ]
    printed = out.getvalue()
    assert "::error file=x.yml,line=1::injected" in printed
    assert "\x1b" not in printed


def test_stop_commands_tokens_are_random_and_avoid_the_text(gh, out):
    tokens = set()
    for _ in range(20):
        with gh.stop_commands() as token:
            tokens.add(token)
    assert len(tokens) == 20 and all(len(t) >= 32 for t in tokens)


def test_a_mask_added_while_commands_are_off_still_reaches_the_runner(gh, out):
    with gh.stop_commands():
        gh.stream.write("::error::before\n")
        assert gh.add_mask("token-found-mid-run")
        gh.stream.write("::error::after token-found-mid-run\n")
        gh.add_mask("token-found-mid-run")  # known: no second command
    gh.annotate(Annotation("error", "ours"))
    executed = runner_commands(out.getvalue())
    # the mask ran, nothing printed inside the block did, and the block ended
    assert [(n, m) for n, _, m in executed] == [
        ("add-mask", "token-found-mid-run"),
        ("error", "ours"),
    ]
    assert "after ***" in out.getvalue()


@pytest.mark.parametrize(
    "name",
    [
        "a\r::warning::CR.yml",
        "b ##[error]LEGACY.yml",
        "c\n::error::NL.yml",
        "d\r\n  ::add-mask::x.yml",
        "e ##[group]x\r##[endgroup].yml",
        "  ::error::lead.yml",
    ],
)
def test_echo_prints_any_text_inert(gh, out, name):
    # our messages quote names from the repository (file names, workflow
    # names): the runner must show them, never run them
    gh.echo(f"calimero-workflow: 1 workflow file(s)\n  - tests/{name}\n{name}")
    gh.echo(f"(more step logs are in the JUnit report: {name} (tests/{name}))")
    printed = out.getvalue()
    assert runner_commands(printed) == []
    # a carriage return never ends a line; our own line breaks (a name with
    # a line feed, passed as it is) do, and the rest is behind a gutter
    lines = re.split(r"\r\n|\r|\n", printed.rstrip("\n"))
    assert len(lines) == 4 + 4 * name.count("\n")
    shown = printed.replace("\u200b", "")
    assert name.split("\n")[0].replace("\r", "\\x0d") in shown


# -- outputs -----------------------------------------------------------------------------


def test_outputs_are_heredocs_the_runner_reads_back(gh, tmp_path):
    values = {
        "status": "failed",
        "multi": "line 1\nline 2\n\nline 4",
        "tricky": "name<<EOF\nghadelimiter_x\n%0A",
        "empty": "",
    }
    for name, value in values.items():
        gh.set_output(name, value)
    text = (tmp_path / "output").read_text()
    delimiters = re.findall(r"^(?:status|multi|tricky|empty)<<(.+)$", text, flags=re.M)
    assert len(set(delimiters)) == 4
    assert all(d.startswith("ghadelimiter_") for d in delimiters)
    assert read_env_file(tmp_path / "output") == values


def test_output_names_are_checked(gh):
    for bad in ("", "1abc", "a b", "a<<b", "a=b", "é"):
        with pytest.raises(ValueError, match="output name"):
            gh.set_output(bad, "x")


def test_large_output_is_cut_with_a_note(tmp_path):
    gh = GitHub(
        {"GITHUB_OUTPUT": str(tmp_path / "o")}, io.StringIO(), output_value_limit=1000
    )
    written = gh.set_output("log", "y" * 5000, full_value="reports/log.txt")
    value = read_env_file(tmp_path / "o")["log"]
    assert written.truncated
    assert utf16_size(value) == written.size <= 1000
    assert value.startswith("yyyy")
    assert "the full value is in reports/log.txt" in value.splitlines()[-1]


def test_outputs_are_sized_as_utf16(tmp_path):
    gh = GitHub(
        {"GITHUB_OUTPUT": str(tmp_path / "o")}, io.StringIO(), output_value_limit=40
    )
    # 10 clefs are 40 UTF-16 bytes (surrogate pairs) though only 10 characters
    assert not gh.set_output("a", "𝄞" * 10).truncated
    assert gh.set_output("b", "𝄞" * 11).truncated


def test_cut_json_output_stays_valid_json(tmp_path):
    gh = GitHub(
        {"GITHUB_OUTPUT": str(tmp_path / "o")}, io.StringIO(), output_value_limit=400
    )
    big = json.dumps({"wf.yml": {"x": "z" * 1000}})
    assert gh.set_output(
        "results", big, is_json=True, full_value="out/results.json"
    ).truncated
    data = json.loads(read_env_file(tmp_path / "o")["results"])
    assert data["truncated"] is True and data["file"] == "out/results.json"
    assert data["size"] == utf16_size(big)


def test_outputs_share_one_budget(tmp_path):
    gh = GitHub(
        {"GITHUB_OUTPUT": str(tmp_path / "o")},
        io.StringIO(),
        output_budget=3000,
        output_value_limit=2000,
    )
    assert not gh.set_output("first", "a" * 900).truncated  # 1800 bytes
    second = gh.set_output("second", "b" * 900)
    assert second.truncated and second.size <= 3000 - 1800 - utf16_size(
        "first"
    ) - utf16_size("second")
    values = read_env_file(tmp_path / "o")
    assert sum(utf16_size(k) + utf16_size(v) for k, v in values.items()) <= 3000


def test_without_github_files_nothing_is_written(tmp_path):
    gh = GitHub({}, io.StringIO())
    assert gh.set_output("a", "b").size == 2
    gh.save_state("run_ids", "x")
    assert gh.append_summary("# hi\n") is False
    assert list(tmp_path.iterdir()) == []


def test_state_is_written_for_the_post_step(gh, tmp_path):
    gh.save_state("run_ids", "r1\nr2")
    gh.save_state("run_ids_more", "r3")
    assert read_env_file(tmp_path / "state") == {
        "run_ids": "r1\nr2",
        "run_ids_more": "r3",
    }


# -- the step summary ----------------------------------------------------------------------


def test_summary_appends_within_the_limit_and_refuses_beyond(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("x" * 100)
    gh = GitHub(
        {"GITHUB_STEP_SUMMARY": str(summary)}, io.StringIO(), summary_limit=1000
    )
    assert gh.summary_room() == 900
    assert gh.append_summary("é" * 400)  # 800 bytes
    assert gh.summary_room() == 100
    with pytest.raises(ValueError, match="does not fit the 100 bytes left"):
        gh.append_summary("y" * 101)
    assert summary.stat().st_size == 900


# -- redaction: values, not syntax; redact, then cut ---------------------------------------


def test_a_secret_is_masked_as_repr_spells_it():
    # load errors quote values with !r: a quote or backslash in a secret is escaped
    for secret in ("it's-a\\secret", "both'\"quotes\\", "tab\there"):
        redactor = Redactor([secret])
        for text in (repr(secret), repr(f'x{secret}"y'), repr(f"'{secret}\"")):
            assert secret.strip("'\"") not in redactor.redact(text)
            assert "***" in redactor.redact(text), (secret, text)


def test_cutting_redacts_first_and_drops_a_partial_secret_at_the_cut():
    secret = "tok-0123456789abcdef"
    redactor = Redactor([secret])
    text = "x" * 290 + secret + " and more"
    cut = redactor.cut(text, 300, note="…")
    assert len(cut) <= 300 and "tok-" not in cut and cut.endswith("…")
    # the text was cut before it reached us: its end is the start of a secret
    assert redactor.trim_partial("value tok-0123") == "value "
    assert redactor.trim_partial("9abcdef tail", keep="tail") == " tail"
    assert redactor.cut("…" + "y" * 50 + secret, 20, note="…", keep="tail").endswith("***")
    assert Redactor().trim_partial("tok-0123") == "tok-0123"


def test_the_start_of_a_secret_at_the_end_of_text_cut_by_others_is_masked():
    secret = "ZZsecretTOKEN1234567"
    redactor = Redactor([secret])
    assert redactor.mask_partial("AAAAZZsecretTO") == "AAAA***"
    # as JSON spells it, too (a quote escaped)
    assert Redactor(['pw"with-quote']).mask_partial('{"pw": "pw\\"wi') == '{"pw": "***'
    # fewer than 4 characters of it say no more than a value too short to mask
    assert redactor.mask_partial("AAAAZZs") == "AAAAZZs"
    # whole values are redact()'s; other text is left alone
    assert redactor.mask_partial("x " + secret) == "x " + secret
    assert redactor.mask_partial("nothing here") == "nothing here"
    assert Redactor().mask_partial("AAAAZZsecretTO") == "AAAAZZsecretTO"


def test_annotations_are_redacted_before_they_are_cut(gh, out):
    secret = "s3cret-value-" + "q" * 20
    gh.add_mask(secret)
    message = "a" * (MAX_MESSAGE_CHARS - 10) + secret
    gh.annotate(Annotation("error", message, title="t " + "b" * 250 + secret))
    (_, props, data) = next(c for c in runner_commands(out.getvalue()) if c[0] == "error")
    assert "s3cr" not in data and "s3cr" not in props["title"]
    assert len(data) <= MAX_MESSAGE_CHARS


def test_redacting_records_keeps_their_shape(tmp_path):
    from calimero_workflow.results import ErrorInfo, RunResult, Status, StepRecord

    redactor = Redactor(["failed", "message-secret", "key-secret"])
    run = RunResult(
        workflow_name="wf failed",
        workflow_file="/ws/wf.yml",
        run_id="r",
        backend="embedded",
        status=Status.FAILED,
        steps=[
            StepRecord(
                "a", "call", "a", Status.FAILED,
                error=ErrorInfo("said message-secret", expected={"key-secret": 1}),
            )
        ],
        workflow_results={"a": {"key-secret": "message-secret", "n": 3}},
    )
    copy = redactor.redact_data([[run]])[0][0]
    assert copy.status is Status.FAILED and copy.steps[0].status is Status.FAILED
    assert copy.workflow_name == "wf ***"
    assert copy.steps[0].error.message == "said ***"
    assert copy.steps[0].error.expected == {"***": 1}
    assert copy.workflow_results == {"a": {"***": "***", "n": 3}}
    # JSON of the copy: keys and markup of ours untouched
    assert json.loads(json.dumps(copy.to_dict()))["status"] == "failed"
    assert run.workflow_name == "wf failed"  # the original is left alone


def test_redacting_values_nested_deeper_than_the_recursion_limit():
    from calimero_workflow.results import Status, StepRecord

    # as deep as a script's JSON output or a node's answer may be, and deeper
    deep: object = "key-secret here"
    for level in range(20_000):
        deep = {"key-secret": deep, "n": level} if level % 2 else [deep, ("key-secret",)]
    record = StepRecord("a", "script", "a", Status.PASSED, data={"output": deep})
    copy = Redactor(["key-secret"]).redact_data(record)
    node, levels = copy.data["output"], 0
    while not isinstance(node, str):
        if isinstance(node, dict):
            assert list(node) == ["***", "n"]
            node = node["***"]
        else:
            assert node[1] == ("***",)
            node = node[0]
        levels += 1
    assert (levels, node) == (20_000, "*** here")
    assert copy.status is Status.PASSED


def test_redacting_a_value_that_holds_itself_is_refused_not_endless():
    loop: list[object] = ["key-secret"]
    loop.append({"again": loop})
    with pytest.raises(ValueError, match="contains itself"):
        Redactor(["key-secret"]).redact_data(loop)
    # the same list twice, side by side, is no loop
    twice = ["key-secret"]
    assert Redactor(["key-secret"]).redact_data([twice, twice]) == [["***"], ["***"]]


def test_our_own_outputs_are_not_redacted(gh, tmp_path):
    gh.add_mask("failed")
    gh.set_output("status", "failed", redact=False)
    gh.set_output("other", "it failed")
    values = read_env_file(tmp_path / "output")
    assert values == {"status": "failed", "other": "it ***"}
