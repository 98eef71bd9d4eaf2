"""Reading a JSON-RPC request the way merod's server does.

merod takes the body with axum's ``Json`` extractor into ``Request<Value>``
(``jsonrpc``, ``id`` and the rest flattened), so a body that is not JSON, or
whose envelope does not fit, never becomes a JSON-RPC answer: axum rejects it
with a plain-text 415, 400 or 422. The rest (``method`` and ``params``) is then
deserialised into the ``RequestPayload`` enum (adjacently tagged, unknown
fields denied); a failure there is a JSON-RPC ``ParseError`` whose text is
serde's message. This module reproduces both layers and their wording.

The texts follow serde and serde_json; what they cannot match is the
`` at line L column C`` suffix serde_json adds to errors found while reading
the body, which is left out.
"""

from __future__ import annotations

from typing import Any

from .bodies import (
    NotJson,
    expected_fields,
    is_json_content_type,
    load_json,
    unexpected,
)
from .errors import RpcError

__all__ = [
    "METHODS",
    "EnvelopeRejected",
    "parse_envelope",
    "parse_params",
]

#: The ``RequestPayload`` variants, in declaration order.
METHODS = ("execute", "sync_status", "set_ephemeral")

#: Each variant's fields, in declaration order (all required, none other allowed).
_FIELDS = {
    "execute": ("ExecutionRequest", ("contextId", "method", "argsJson")),
    "sync_status": ("SyncStatusRequest", ("contextId",)),
    "set_ephemeral": ("SetEphemeralRequest", ("contextId", "state")),
}


class EnvelopeRejected(Exception):
    """axum refused the body; answer ``status`` with the plain-text ``text``."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def parse_envelope(body: bytes, content_type: str) -> tuple[Any, dict[str, Any]]:
    """The request id and the remaining top-level fields of a JSON-RPC body.

    Raises:
        EnvelopeRejected: axum's 415 (not ``application/json``), 400 (not JSON)
            or 422 (``jsonrpc`` or ``id`` missing or wrong).
    """
    if not is_json_content_type(content_type):
        raise EnvelopeRejected(415, "Expected request with `Content-Type: application/json`")
    try:
        envelope = load_json(body)
    except NotJson as exc:
        raise EnvelopeRejected(
            400, f"Failed to parse the request body as JSON: {exc.reason}"
        ) from None

    def reject(reason: str) -> EnvelopeRejected:
        return EnvelopeRejected(
            422, f"Failed to deserialize the JSON body into the target type: {reason}"
        )

    if not isinstance(envelope, dict):
        raise reject(
            f"invalid type: {unexpected(envelope, from_value=False)}, expected struct Request"
        )
    if "jsonrpc" not in envelope:
        raise reject("missing field `jsonrpc`")
    version = envelope["jsonrpc"]
    if not isinstance(version, str):
        raise reject(
            f"jsonrpc: invalid type: {unexpected(version, from_value=False)}, expected a string"
        )
    if version != "2.0":
        raise reject("jsonrpc: Invalid JSON-RPC version")
    if "id" not in envelope:
        raise reject("missing field `id`")
    request_id = envelope["id"]
    valid_id = request_id is None or isinstance(request_id, str) or (
        isinstance(request_id, int)
        and not isinstance(request_id, bool)
        and 0 <= request_id < 2**64
    )
    if not valid_id:
        raise reject("id: data did not match any variant of untagged enum RequestId")
    payload = {k: v for k, v in envelope.items() if k not in ("jsonrpc", "id")}
    return request_id, payload


def _parse_error(reason: str) -> RpcError:
    return RpcError("ParseError", reason)


def _check_variant(method: Any) -> None:
    if not isinstance(method, str):
        raise _parse_error(
            f"invalid type: {unexpected(method, from_value=True)}, expected variant identifier"
        )
    if method not in METHODS:
        expected = ", ".join(f"`{m}`" for m in METHODS)
        raise _parse_error(f"unknown variant `{method}`, expected one of {expected}")


def parse_params(payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The method and its params, checked like serde checks ``RequestPayload``.

    Raises:
        RpcError: a ``ParseError`` with serde's message.
    """
    # serde walks the map in key order: the tag is checked where it is met,
    # an unknown key fails where it is met, missing fields fail at the end.
    # With deny_unknown_fields an adjacently tagged enum refuses a stray key
    # as an invalid tag-or-content key, not as an unknown field.
    for key in sorted(payload):
        if key == "method":
            _check_variant(payload["method"])
        elif key != "params":
            raise _parse_error(
                f'invalid value: {unexpected(key, from_value=True)}, expected "method" or "params"'
            )
    if "method" not in payload:
        raise _parse_error("missing field `method`")
    method = payload["method"]
    if "params" not in payload:
        raise _parse_error("missing field `params`")
    params = payload["params"]
    struct, fields = _FIELDS[method]
    if isinstance(params, list):
        # serde's derived struct visitor also takes a sequence of the fields.
        if len(params) < len(fields):
            raise _parse_error(
                f"invalid length {len(params)}, expected struct {struct} with "
                f"{len(fields)} element{'s' if len(fields) != 1 else ''}"
            )
        if len(params) > len(fields):
            raise _parse_error(
                f"invalid length {len(params)}, expected fewer elements in array"
            )
        params = dict(zip(fields, params, strict=True))
    if not isinstance(params, dict):
        raise _parse_error(
            f"invalid type: {unexpected(params, from_value=True)}, expected struct {struct}"
        )
    # A serde_json Value map iterates in key order, so the first unknown field
    # in sorted order is the one reported; missing fields come after, in
    # declaration order.
    for key in sorted(params):
        if key not in fields:
            raise _parse_error(
                f"unknown field `{key}`, expected {expected_fields(fields)}"
            )
    for field in fields:
        if field not in params:
            raise _parse_error(f"missing field `{field}`")
    for field in ("contextId", "method"):
        if field in fields and not isinstance(params[field], str):
            raise _parse_error(
                f"invalid type: {unexpected(params[field], from_value=True)}, expected a string"
            )
    return method, params
