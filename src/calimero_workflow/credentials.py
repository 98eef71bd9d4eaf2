"""Which values are credentials, masked wherever a run is shown or written.

Two kinds are found by their place rather than given one by one:

* an environment value under a secret-looking key (``API_TOKEN``,
  ``DB_PASSWORD``), unless it reads as a setting (``AUTH_REQUIRED=true``):
  masking ``true`` or ``file`` would rewrite every such word. The action's
  ``env`` input, the CLI's ``--env`` and the process environment, and a
  script step's own ``env:`` all follow this one rule;
* the password of a URL's user part (``https://user:pw@host``) and the values
  of its credential-looking query parameters (``?token=…``, ``&sig=…``).

:class:`~calimero_workflow.report.github.Redactor` then masks the values
found, in every spelling the reports use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "SECRET_KEY",
    "SETTING_VALUE",
    "is_secret_key",
    "reads_as_setting",
    "redact_url",
    "redact_urls",
    "secret_env_values",
    "url_secrets",
    "values_in",
]

#: Keys whose values are secrets. Short names only as a whole word of the
#: key, and ``PWD`` only after a prefix (``DB_PWD``; ``PWD`` alone is the
#: shell's folder).
SECRET_KEY = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|PASS$|KEY|AUTH|CREDENTIAL|PRIVATE|COOKIE"
    r"|SESSION|BEARER|MNEMONIC|SIGNATURE|CONNECTION_?STRING"
    r"|(?:^|_)(?:CREDS?|JWT|DSN|CONN_?STR|SALT|PEPPER)(?:_|$)|_PWD(?:_|$)",
    re.I,
)
#: A value under a secret-looking key that reads as a setting, not a secret:
#: numbers, words of up to 7 letters, and these.
SETTING_VALUE = re.compile(
    r"(?i:true|false|yes|no|on|off|null|none|nil|undefined|enabled|disabled|required|optional)"
    r"|[-+]?[0-9]+(?:\.[0-9]+)?|[A-Za-z]{1,7}"
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


def reads_as_setting(value: str) -> bool:
    """Whether ``value`` reads as a setting (a number, a short word, true/false…)."""
    return bool(SETTING_VALUE.fullmatch(value.strip()))


def secret_env_values(env: Mapping[str, str]) -> list[str]:
    """The values of ``env`` to mask: under a secret-looking key, not blank,
    and not a setting."""
    return [
        value
        for key, value in env.items()
        if isinstance(value, str)
        and is_secret_key(key)
        and value.strip()
        and not reads_as_setting(value)
    ]


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
    """Every text inside ``value`` (mappings, lists), keys left out."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from values_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from values_in(item)


