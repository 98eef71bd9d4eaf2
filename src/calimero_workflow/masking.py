"""Which values of the action's environment are secrets, and masking them.

The runner masks its own secrets in the log it shows, never in the files the
action writes, and knows nothing of a secret handed to the step through
``env:`` or the ``env`` input. So the action decides, per variable, what to
mask (:func:`~.credentials.secret_parts`, the rule the CLI follows too):

* the whole value of a key that looks secret (``API_TOKEN``, ``DB_PASSWORD``,
  ``GH_PAT``, ``SLACK_WEBHOOK``, ``SEED_PHRASE``, ``OTP_SEED``…), unless the
  value cannot be a secret at all: empty, ``true``/``false``/``yes``/``no``/
  ``on``/``off``/``null``/``none``, or a number of up to 5 digits (a port, a
  count). Masking those would rewrite every such word in the log and the
  reports, and a secret never reads like them;
* whatever the key, a GitHub token in the value (``ghp_…``, ``gho_…``,
  ``ghs_…``, ``ghu_…``, ``ghr_…``, ``github_pat_…``) and the password of a
  URL's user part (``postgres://app:PASSWORD@db/x``), as written and
  percent-decoded.

A value under a secret-looking key that is left unmasked (it reads as a
setting, or is shorter than :data:`~.report.github.MIN_SECRET_CHARS`) is
named in a warning annotation, never shown.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

from .credentials import is_secret_key, secret_parts
from .report.github import MIN_SECRET_CHARS, Annotation, GitHub

__all__ = [
    "mask_env_secrets",
    "runner_tokens",
    "scrub_runner_tokens",
]

log = logging.getLogger("calimero_workflow.action")

def mask_env_secrets(gh: GitHub, env: Mapping[str, str]) -> None:
    """Mask the secrets of every variable in ``env`` (in its order).

    A secret-looking key whose value stays unmasked is named in one warning
    annotation (the log says which keys and why, never the values).
    """
    setting: list[str] = []
    short: list[str] = []
    for key, value in env.items():
        parts = secret_parts(key, value)
        masked = {part for part in parts if gh.add_mask(part)}
        looks_secret = is_secret_key(key) and bool(value.strip())
        if looks_secret and value not in parts:
            setting.append(key)
        elif len(masked) < len(parts):
            short.append(key)
    reasons = []
    if setting:
        reasons.append(
            f"{', '.join(setting)}: each reads as a setting (true, false, yes, no, on, "
            "off, null, none, or a number of up to 5 digits)"
        )
    if short:
        reasons.append(
            f"{', '.join(short)}: a secret in it is shorter than {MIN_SECRET_CHARS} "
            "characters, and masking it would hide those characters everywhere"
        )
    if reasons:
        gh.annotate(
            Annotation(
                "warning",
                "not masked, although the key looks secret (the values are not shown): "
                + "; ".join(reasons)
                + ". If one of them is a secret, make it longer or pass it differently.",
                title="calimero-workflow: values left unmasked",
            )
        )


def runner_tokens(env: Mapping[str, str]) -> dict[str, str]:
    """The runner's own secrets in the environment (``ACTIONS_RUNTIME_TOKEN``,
    ``ACTIONS_ID_TOKEN_REQUEST_TOKEN``, …): token-like ``ACTIONS_*`` values."""
    return {
        key: value
        for key, value in env.items()
        if key.startswith("ACTIONS_")
        and is_secret_key(key.removeprefix("ACTIONS_"))
        and not key.endswith("_URL")
        and value.strip()
    }


def scrub_runner_tokens(names: Sequence[str]) -> None:
    """Take the runner's tokens out of this process's environment.

    Workflows never see them (``${VAR}`` and scripts get an environment
    without ``ACTIONS_*``), and a script reading this process's
    ``/proc/<pid>/environ`` finds them blanked: the values are removed from
    ``os.environ`` and overwritten in that block. This is no boundary: a
    script runs as root beside the action, with the Docker socket, and can
    still find them elsewhere (docs/action.md says so).
    """
    for name in names:
        os.environ.pop(name, None)
    wanted = {name.encode() for name in names}
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        # env_start and env_end: fields 50 and 51 of proc(5), after "pid (comm)"
        start, end = int(fields[47]), int(fields[48])
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            block = mem.read(end - start)
            offset = 0
            for entry in block.split(b"\0"):
                key, eq, value = entry.partition(b"=")
                if eq and key in wanted:
                    mem.seek(start + offset + len(key) + 1)
                    mem.write(b"\0" * len(value))
                offset += len(entry) + 1
    except (OSError, ValueError, IndexError) as exc:  # not Linux, or no /proc
        log.debug("the runner's tokens stay in the process's first environment: %s", exc)

