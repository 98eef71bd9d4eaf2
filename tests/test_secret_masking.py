"""Credentials found by their place never show: not on the console, not in
--results, --report or --junit, not in the node logs.

Each leak path runs end to end through the command line: embedded nodes,
real scripts, and real HTTP servers on loopback standing in for an
authenticating node and for a file server.
"""

from __future__ import annotations

import http.server
import json
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from calimero_workflow.cli import main
from calimero_workflow.credentials import (
    not_a_secret,
    redact_url,
    secret_env_values,
    url_secrets,
)

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "kv-store" / "kv_store.wasm"
MARK = "Sup3rS3cret"


def run_cli(tmp_path: Path, capsys, text: str, *extra: str) -> tuple[int, dict[str, str]]:
    """Run the workflow ``text``; return the exit code and everything written."""
    wf = tmp_path / "wf.yml"
    wf.write_text(textwrap.dedent(text))
    out = tmp_path / "out"
    code = main([
        "run", str(wf), "--results", str(out / "results.json"), "--report", str(out / "report.json"),
        "--junit", str(out / "junit.xml"), "--logs-dir", str(out / "logs"),
        "--workdir", str(tmp_path / "runs"), "--color", "never", *extra,
    ])
    printed = capsys.readouterr()
    written = {"console": printed.out + printed.err}
    for path in out.rglob("*"):
        if path.is_file():
            written[str(path.relative_to(out))] = path.read_text(errors="replace")
    return code, written


def leaks(written: dict[str, str]) -> list[str]:
    return [f"{where}: {line}" for where, text in written.items() for line in text.splitlines() if MARK in line]


# -- the rules ----------------------------------------------------------------------


def test_the_env_rule_is_the_actions_and_urls_give_up_their_credentials():
    env = {
        "MY_API_TOKEN": f"env-{MARK}-4",
        "DB_PASSWORD": "hunter2-pass",
        "AUTH_REQUIRED": "true",  # a switch, not a secret
        "SESSION_STORE": "file",  # a word: masked, it could be a password
        "HOME": "/root",
        "PWD": "/work",
        "DATABASE_URL": "postgres://app:db-pw-1@db/app",  # a URL's password, any key
    }
    assert secret_env_values(env) == [f"env-{MARK}-4", "hunter2-pass", "file", "db-pw-1"]
    assert not_a_secret(" 8080 ") and not not_a_secret("s3cr3t-value")
    assert not not_a_secret("letmein") and not not_a_secret("84726193051234567890")
    url = "https://u:p%40ss-word@files.example/app.wasm?v=2&token=t-123456&X-Amz-Signature=abcd"
    assert redact_url(url) == "https://u:***@files.example/app.wasm?v=2&token=***&X-Amz-Signature=***"
    assert set(url_secrets(f"fetch {url} now")) == {"p%40ss-word", "p@ss-word", "t-123456", "abcd"}
    assert url_secrets("http://host/app.wasm?v=2") == []


def test_a_url_password_holding_an_at_sign_is_masked_whole():
    env = {"DB_URL": "postgres://app:p@ssw0rdXYZ@db/app", "NOTE": "see https://u:a@b@c/x then"}
    assert secret_env_values(env) == ["p@ssw0rdXYZ", "a@b"]
    assert redact_url(env["DB_URL"]) == "postgres://app:***@db/app"


def test_the_action_decides_with_the_same_rule():
    from calimero_workflow import credentials, masking

    assert masking.secret_parts is credentials.secret_parts
    assert masking.is_secret_key is credentials.is_secret_key


# -- a script's own env, and --env ------------------------------------------------------


def test_script_env_and_cli_env_secrets_are_masked_everywhere(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("SERVICE_PASSWORD", f"envvar-{MARK}-8")
    code, written = run_cli(
        tmp_path,
        capsys,
        f"""
        name: secrets
        nodes: {{count: 1, prefix: n}}
        steps:
          - name: sc
            type: script
            run: 'echo "pw is $DB_PASSWORD, token $TOK, svc $SERVICE_PASSWORD"; echo "err $DB_PASSWORD" >&2; exit 3'
            env: {{TOK: "${{MY_API_TOKEN}}", DB_PASSWORD: yaml-{MARK}-5}}
            expected_failure: true
          - {{name: v, type: assert, actual: "${{MY_API_TOKEN}}", is_set: true}}
          # the node logs the route, id and all
          - {{type: get_application, node: n-1, application_id: "${{results.v.actual}}",
              expected_failure: true, retries: 0}}
          - {{name: boom, type: assert, actual: "${{MY_API_TOKEN}} yaml-{MARK}-5", equals: other}}
        """,
        "--env", f"MY_API_TOKEN=env-{MARK}-4",
        "-v",
    )
    assert code == 1
    assert leaks(written) == []
    assert "pw is ***, token ***, svc ***" in written["console"]
    assert "GET /admin-api/applications/*** 400" in written["logs/n-1.log"]
    results = json.loads(written["results.json"])
    assert results["sc"]["stdout"] == "pw is ***, token ***, svc ***\n"
    assert 'expected "*** ***" to equal "other"' in written["junit.xml"]


def test_a_secret_a_placeholder_brings_into_a_script_env_is_masked(tmp_path: Path, capsys):
    code, written = run_cli(
        tmp_path,
        capsys,
        f"""
        name: runtime secret
        steps:
          - {{name: made, type: script, run: 'printf rt-{MARK}-11'}}
          - name: use
            type: script
            run: 'echo "using $API_TOKEN"; exit 1'
            env: {{API_TOKEN: "${{results.made.stdout}}"}}
        """,
    )
    assert code == 1
    assert leaks(written) == []
    assert "using ***" in written["console"]


def test_a_secret_from_a_placeholder_is_masked_even_when_its_step_fails_validation(
    tmp_path: Path, capsys
):
    # the step's `args` is wrong once resolved (a mapping): it fails before it
    # runs, and the credential its `env:` got must still be masked everywhere
    code, written = run_cli(
        tmp_path,
        capsys,
        f"""
        name: runtime secret
        steps:
          - {{name: made, type: script, run: 'printf rt-{MARK}-12'}}
          - name: use
            type: script
            run: 'echo "using $API_TOKEN"'
            env: {{API_TOKEN: "${{results.made.stdout}}"}}
            args: ["${{results.made}}"]
        """,
    )
    assert code == 1
    assert "invalid value after resolving placeholders" in written["console"]
    assert leaks(written) == []
    assert json.loads(written["results.json"])["made"]["stdout"] == "***"


def test_a_secret_cut_in_two_at_the_output_limit_never_shows_its_start(tmp_path: Path, capsys):
    # stdout is kept up to 1 MiB, and was cut before it was masked: the
    # secret's first ten characters stayed, which masking no longer matched
    token = "ZZsecretTOKEN1234567"
    code, written = run_cli(
        tmp_path,
        capsys,
        """
        name: cut secret
        steps:
          - name: big
            type: script
            run: 'head -c 1048566 /dev/zero | tr "\\0" A; printf "%s and more" "$API_TOKEN"'
        """,
        "--env", f"API_TOKEN={token}", "-v",
    )
    assert code == 0, written["console"]
    assert [where for where, text in written.items() if token[:4] in text] == []
    stdout = json.loads(written["results.json"])["big"]["stdout"]
    assert stdout == "A" * 1048566 + "***"
    assert "AAAA***" in written["console"]


# -- a remote node's token, obtained with a password ----------------------------------------


class _EchoingNode(http.server.BaseHTTPRequestHandler):
    """Logs in with a password, then answers every guarded route with an error
    that quotes the Authorization header back (as a careless proxy might)."""

    token = f"tok-{MARK}-6"

    def _send(self, code: int, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/auth/token":
            return self._send(200, {"data": {"access_token": self.token, "refresh_token": "r-x"}})
        return self._send(401, {"error": f"unauthorized: you sent {self.headers.get('Authorization')}"})

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/admin-api/health":
            return self._send(200, {"data": {"status": "alive"}})
        if self.path == "/admin-api/peers" and self.server.peers_ok:  # type: ignore[attr-defined]
            return self._send(200, {"count": 0})
        return self._send(401, {"error": f"unauthorized: you sent {self.headers.get('Authorization')}"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echoing_node() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoingNode)
    server.peers_ok = False  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _remote(server: http.server.ThreadingHTTPServer) -> str:
    return f"""
        remote_nodes:
          r:
            url: http://127.0.0.1:{server.server_address[1]}
            auth: {{method: password, username: admin, password: pw-{MARK}-1}}
    """


def test_a_token_obtained_at_start_is_masked_when_the_node_echoes_it(
    tmp_path: Path, capsys, echoing_node
):
    code, written = run_cli(
        tmp_path,
        capsys,
        f"""
        name: remote login
        {_remote(echoing_node).strip()}
        steps:
          - {{name: who, type: node_identity, node: r}}
        """,
    )
    assert code == 1
    assert "GET /admin-api/peers failed with HTTP 401: unauthorized: you sent Bearer ***" in written["console"]
    assert leaks(written) == []
    report = json.loads(written["report.json"])
    (failed,) = [p for p in report["phases"] if p["status"] == "failed"]
    assert failed["error"]["message"].endswith("you sent Bearer ***")


def test_a_token_echoed_by_a_step_later_is_masked(tmp_path: Path, capsys, echoing_node):
    echoing_node.peers_ok = True
    code, written = run_cli(
        tmp_path,
        capsys,
        f"""
        name: remote login
        {_remote(echoing_node).strip()}
        steps:
          - {{name: who, type: node_identity, node: r, retries: 0}}
        """,
    )
    assert code == 1
    assert "you sent Bearer ***" in written["console"]
    assert "you sent Bearer ***" in written["junit.xml"]
    assert leaks(written) == []


# -- credentials in an application URL --------------------------------------------------------


class _Refusing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_url_passwords_and_tokens_never_show(tmp_path: Path, capsys, refusing_server: int):
    url = f"http://u:inst-{MARK}-9@127.0.0.1:{refusing_server}/x.wasm?v=1&token=q-{MARK}-10"
    code, written = run_cli(
        tmp_path,
        capsys,
        f"""
        name: url secret
        nodes: {{count: 1, prefix: n}}
        steps:
          - {{name: i, type: install_application, node: n-1, url: "{url}", retries: 0}}
        """,
    )
    assert code == 1
    shown = f"downloading http://u:***@127.0.0.1:{refusing_server}/x.wasm?v=1&token=*** failed: HTTP 401"
    assert shown in written["console"]
    assert shown.replace("&", "&amp;") in written["junit.xml"]
    assert leaks(written) == []


def test_a_url_from_a_placeholder_is_masked_too(tmp_path: Path, capsys, refusing_server: int):
    code, written = run_cli(
        tmp_path,
        capsys,
        f"""
        name: url secret
        nodes: {{count: 1, prefix: n}}
        steps:
          - name: where
            type: script
            run: 'printf "http://127.0.0.1:{refusing_server}/x.wasm?access_token=a-{MARK}-12"'
          - {{name: i, type: install_application, node: n-1, url: "${{results.where.stdout}}", retries: 0}}
        """,
    )
    assert code == 1
    assert "x.wasm?access_token=*** failed: HTTP 401" in written["console"]
    # the script's own output was printed before the step knew it was a credential:
    # it is masked in the files, written at the end
    assert [leak for leak in leaks(written) if not leak.startswith("console")] == []


def test_a_url_password_a_placeholder_brings_is_masked_even_when_the_step_is_invalid(
    tmp_path: Path, capsys
):
    # the URL's credentials are known when the placeholder resolves, before
    # the step finds its other values invalid
    code, written = run_cli(
        tmp_path,
        capsys,
        f"""
        name: url secret
        nodes: {{count: 1, prefix: n}}
        steps:
          - name: where
            type: script
            run: 'printf "http://u:pw-{MARK}-13@127.0.0.1:9/x.wasm"'
          - {{name: i, type: install_application, node: n-1, url: "${{results.where.stdout}}", retries: "${{results.where.stdout}}"}}
        """,
    )
    assert code == 1
    assert "invalid value after resolving placeholders" in written["console"]
    assert [leak for leak in leaks(written) if not leak.startswith("console")] == []
