"""Which values are credentials, masked wherever a run is shown or written.

Two kinds are found by their place rather than given one by one:

* in an environment (the action's ``env`` input, the CLI's ``--env`` and the
  process environment, a script step's own ``env:``), by one rule
  (:func:`secret_parts`): the whole value of a secret-looking key
  (``API_TOKEN``, ``DB_PASSWORD``, ``GH_PAT``, ``SLACK_WEBHOOK``…) unless it
  cannot plausibly be a secret (empty, ``true``/``false``/``yes``/``no``/
  ``on``/``off``/``null``/``none``, a number of up to 5 digits: masking those
  would rewrite every such word), and whatever the key, a GitHub token in the
  value and the password of a URL's user part;
* in URLs anywhere: the password of the user part (``https://user:pw@host``)
  and the values of credential-looking query parameters (``?token=…``).

:class:`~calimero_workflow.report.github.Redactor` then masks the values
found, in every spelling the reports use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "SECRET_KEY",
    "is_secret_key",
    "not_a_secret",
    "redact_url",
    "redact_urls",
    "secret_env_values",
    "secret_parts",
    "url_secrets",
    "values_in",
]

#: Keys whose values are secrets. Short names only as a whole word of the key
#: (``GH_PAT``, not ``PATH``), and ``PWD`` only after a prefix (``DB_PWD``;
#: ``PWD`` alone is the shell's folder).
SECRET_KEY = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|PASS$|KEY|AUTH|CREDENTIAL|PRIVATE|COOKIE"
    r"|SESSION|BEARER|MNEMONIC|SIGNATURE|CONNECTION_?STRING|WEBHOOK|SEED_?PHRASE"
    r"|(?:^|_)(?:CREDS?|JWT|DSN|CONN_?STR|SALT|PEPPER|PAT|SEED|OTP)(?:_|$)"
    r"|_PWD(?:_|$)",
    re.I,
)
#: Values that cannot plausibly be secrets, so a secret-looking key's value
#: that reads like one is left alone: empty, a switch, or a port or count.
_NOT_A_SECRET = re.compile(r"(?i:true|false|yes|no|on|off|null|none)|[-+]?[0-9]{1,5}|")
#: GitHub's token formats, whatever the key they come under.
_GITHUB_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"
)
#: Query parameters whose values are credentials (``token``, ``access_token``,
#: ``api_key``, ``X-Amz-Signature``, ``sig``, ``password``, ``client_secret``…).
_CREDENTIAL_PARAM = re.compile(
    r"token|key|sig|passw|pwd|secret|credential|auth|session|cookie", re.I
)
#: A URL inside longer text: a scheme, ``://``, then up to the next space or quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>`]+")
_MASK = "***"


def is_secret_key(key: str) -> bool:
    """Whether values under ``key`` (an environment variable's name) are secrets."""
    return bool(SECRET_KEY.search(key))


def not_a_secret(value: str) -> bool:
    """Whether ``value`` cannot plausibly be a secret: empty, a switch
    (true, off, none…) or a number of up to 5 digits (a port, a count)."""
    return bool(_NOT_A_SECRET.fullmatch(value.strip()))


def secret_parts(key: str, value: str) -> list[str]:
    """What of the variable ``key=value`` is a secret to mask (see the module)."""
    parts = []
    if is_secret_key(key) and not not_a_secret(value):
        parts.append(value)
    parts += [match.group(0) for match in _GITHUB_TOKEN.finditer(value)]
    for match in _URL_IN_TEXT.finditer(value):
        try:
            # the user part ends at the last `@`: a password may hold one
            password = urlsplit(match.group(0)).password
        except ValueError:
            continue
        if password:
            parts += [password, unquote(password)]
    return list(dict.fromkeys(parts))


def secret_env_values(env: Mapping[str, str]) -> list[str]:
    """The secrets of every variable of ``env`` (:func:`secret_parts`)."""
    found: list[str] = []
    for key, value in env.items():
        if isinstance(value, str):
            found += secret_parts(key, value)
    return list(dict.fromkeys(found))


def url_secrets(text: str) -> list[str]:
    """The credentials in the URLs of ``text``: each user-part password and each
    credential-looking query parameter's value, as written and decoded."""
    found: list[str] = []
    for match in _URL_IN_TEXT.finditer(text):
        try:
            parts = urlsplit(match.group(0))
            password = parts.password
        except ValueError:
            continue
        if password:
            found += [password, unquote(password)]
        for raw in parts.query.split("&"):
            name, sep, value = raw.partition("=")
            if sep and value and _CREDENTIAL_PARAM.search(name):
                found.append(value)
        for name, value in parse_qsl(parts.query, keep_blank_values=False):
            if value and _CREDENTIAL_PARAM.search(name):
                found.append(value)
    return list(dict.fromkeys(found))


def redact_url(url: str) -> str:
    """``url`` with its user-part password and credential-looking query values as
    ``***`` (``https://u:***@host/a.wasm?token=***&v=2``)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    netloc = parts.netloc
    if password:
        user, _, host = netloc.rpartition("@")
        name = user.split(":", 1)[0]
        netloc = f"{name}:{_MASK}@{host}"
    query = "&".join(_masked_param(raw) for raw in parts.query.split("&")) if parts.query else ""
    return parts._replace(netloc=netloc, query=query).geturl()


def _masked_param(raw: str) -> str:
    name, sep, value = raw.partition("=")
    if sep and value and _CREDENTIAL_PARAM.search(name):
        return f"{name}={_MASK}"
    return raw


def redact_urls(text: str) -> str:
    """Every URL in ``text`` as :func:`redact_url` shows it."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def values_in(value: object) -> Iterable[str]:
    """Every text inside ``value`` (mappings, lists), keys left out; with a
    stack of its own, so that no depth of nesting is too deep."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


