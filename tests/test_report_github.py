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


_COMMAND = re.compile(r"^::([A-Za-z-]+)(?: ([^:]*))?::(.*)$")


def runner_commands(output: str) -> list[tuple[str, dict[str, str], str]]:
    """The commands the runner would execute for ``output``, in order."""
    executed = []
    stop_token: str | None = None
    for raw in output.split("\n"):
        line = raw.lstrip()  # the runner trims leading whitespace first
        if stop_token is not None:
            if line == f"::{stop_token}::":
                stop_token = None
            continue
        match = _COMMAND.match(line)
        if not match:
            continue
        name, props_text, data = match.groups()
        props = {}
        for pair in (props_text or "").split(","):
            if "=" in pair:
                key, value = pair.split("=", 1)
                props[key] = unescape_property(value)
        if name == "stop-commands":
            stop_token = data
            continue
        executed.append((name, props, unescape_data(data)))
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


def test_annotations_beyond_the_per_step_limit_are_counted_in_one_notice(gh, out):
    for i in range(15):
        gh.annotate(Annotation("error", f"failure {i}", file="a.yml", line=i + 1))
    for i in range(3):
        gh.annotate(Annotation("warning", f"warning {i}"))
    for i in range(12):
        gh.annotate(Annotation("notice", f"notice {i}"))
    assert gh.dropped_annotations == {"error": 5, "warning": 0, "notice": 3}
    gh.flush_annotations()
    executed = runner_commands(out.getvalue())
    errors = [c for c in executed if c[0] == "error"]
    notices = [c for c in executed if c[0] == "notice"]
    assert [c[2] for c in errors] == [
        f"failure {i}" for i in range(MAX_ANNOTATIONS_PER_LEVEL)
    ]
    assert len([c for c in executed if c[0] == "warning"]) == 3
    # 9 of ours plus the one that counts the rest: never more than 10 notices
    assert len(notices) == MAX_ANNOTATIONS_PER_LEVEL
    assert notices[-1][2].startswith("5 errors, 3 notices more not annotated")
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
    report = tmp_path / "junit.xml"
    report.write_text('<a v="pa:ss,w%rd">{"k": "pa:ss,w%rd"}</a>\n')
    assert gh.redact_file(report) and not gh.redact_file(report)
    assert report.read_text() == '<a v="***">{"k": "***"}</a>\n'
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


def test_echo_refuses_lines_the_runner_would_execute(gh, out):
    gh.echo("plain text\nmore")
    with pytest.raises(ValueError, match="GitHub.untrusted"):
        gh.echo("ok\n  ::error::nope")
    assert out.getvalue() == "plain text\nmore\nok\n"


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
