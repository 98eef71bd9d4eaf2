"""A typed async client for a Calimero node's admin API and JSON-RPC.

It speaks the current (namespace era) routes of ``merod`` and works with the
nodes before it where their shapes differ:

- ids: current merod (0.11.0-rc.27 and later) shows every id as 64 hex digits,
  older nodes base58; ids are passed through as the node gave them, and an
  uninitialised context's state hash is recognised in both spellings
  (:func:`is_zero_hash`).
- ``install-dev-application``: current merod takes ``{path}`` alone and refuses
  any other field; older nodes require ``metadata`` (and take ``package`` and
  ``version``). The client sends the shape the call needs, falls back to the
  other when the node says so, and remembers which one the node takes.
- ``install-application``: current merod installs registry coordinates
  ``{package, version}``; older nodes fetch a ``url``.
- what a dev install takes: merod from 0.11.0-rc.31 installs only signed
  ``.mpk`` bundles and refuses a raw ``.wasm`` (``not a signed application
  bundle: {path}``), and the signing payload changed with core#4307.
  :meth:`NodeClient.install_file` installs a raw ``.wasm`` as is on a node that
  takes it, and on one that does not packs it into a bundle signed with the
  public development key (the one ``cargo mero bundle --dev`` uses), falling
  back to the signature before core#4307 when the node refuses the current one.
  It remembers what each node took.
- older response spellings where that is cheap (``rootHash`` for
  ``contextStateHash``).

Every failure is raised as :class:`NodeApiError` (the node answered with an
error) or :class:`NodeConnectionError` (it did not answer), both carrying the
node's name, so a step can say which node failed and why. A call the node
cannot take in any shape it speaks is a :class:`NodeUnsupportedError`, which
names the fields concerned.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .confined import read_file
from .http1 import ConnectionPool, HttpError, HttpTimeout, Reply

if TYPE_CHECKING:
    import httpx

__all__ = [
    "APP_WASM",
    "LEGACY_ZERO_HASH",
    "ZERO_HASH",
    "ExecuteResult",
    "InstalledApp",
    "NodeApiError",
    "NodeClient",
    "NodeConnectionError",
    "NodeError",
    "NodeUnsupportedError",
    "decode_returned_error",
    "describe_rpc_error",
    "is_zero_hash",
]

log = logging.getLogger("calimero_workflow.client")

#: The state hash of a context that has no state yet, as current merod shows it.
ZERO_HASH = "0" * 64
#: The same all-zero hash as nodes before 0.11.0-rc.27 show it (base58).
LEGACY_ZERO_HASH = "1" * 32


def is_zero_hash(value: object) -> bool:
    """Whether ``value`` is the all-zero state hash, in either spelling."""
    return value in (ZERO_HASH, LEGACY_ZERO_HASH)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Building a TLS context costs tens of milliseconds; every client of a run
    # shares one instead of making its own (even for plain-HTTP nodes).
    return ssl.create_default_context()


class NodeError(Exception):
    """Base of the errors a node call can raise."""

    def __init__(self, message: str, *, node: str, route: str):
        super().__init__(message)
        self.message = message
        self.node = node
        self.route = route


class NodeConnectionError(NodeError):
    """The node could not be reached (refused, reset, timed out)."""

    transient = True


class NodeApiError(NodeError):
    """The node answered with an error.

    ``error_type`` is the JSON-RPC error ``type`` (``FunctionCallError``,
    ``Uninitialized``…) or ``HTTP <status>`` for admin routes.
    """

    def __init__(
        self,
        message: str,
        *,
        node: str,
        route: str,
        status: int | None = None,
        error_type: str | None = None,
        data: Any = None,
    ):
        super().__init__(message, node=node, route=route)
        self.status = status
        self.error_type = error_type or (f"HTTP {status}" if status else "Error")
        self.data = data

    @property
    def transient(self) -> bool:
        # 503 means the node cannot decide yet; Uninitialized means the
        # context still waits for its first sync. Both pass with time.
        return self.status == 503 or self.error_type in {"Uninitialized", "GroupKeyPending"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "route": self.route,
            "status": self.status,
            "error_type": self.error_type,
            "message": self.message,
            "data": self.data,
        }


class NodeUnsupportedError(NodeApiError):
    """The node cannot take what was asked in any request shape it speaks.

    ``fields`` are the caller's names of what the node cannot take (``metadata``,
    ``url``…), so a step can point at them; ``hint`` says what works instead.
    """

    def __init__(
        self,
        message: str,
        *,
        node: str,
        route: str,
        fields: tuple[str, ...],
        hint: str,
        status: int | None = None,
        data: Any = None,
    ):
        super().__init__(message, node=node, route=route, status=status, data=data)
        self.fields = fields
        self.hint = hint


def _refused_field(exc: NodeApiError, names: tuple[str, ...]) -> str | None:
    """The field of ``names`` a node's 400/422 says it does not know, if any."""
    if exc.status not in (400, 422):
        return None
    for name in names:
        if f"unknown field `{name}`" in exc.message:
            return name
    return None


def _wants_field(exc: NodeApiError, name: str) -> bool:
    """Whether a node's 400/422 says the body lacks the required field ``name``.

    merod says so in serde's words; node images of this project built before
    they followed merod 0.11.0-rc.27 said ``'metadata' is required``.
    """
    if exc.status not in (400, 422):
        return False
    return f"missing field `{name}`" in exc.message or f"'{name}' is required" in exc.message


def _legacy_hash(value: str) -> str:
    """A blob hash as nodes that fetch URLs read it: base58 (hex is converted)."""
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        from .node.ids import b58encode

        return b58encode(bytes.fromhex(value))
    return value


#: The body shapes of install-dev-application: current merod's, and older nodes'.
_PATH_ONLY, _WITH_METADATA = "path", "metadata"
#: The body shapes of install-application: registry coordinates, or a URL.
_COORDINATES, _URL = "coordinates", "url"

#: ``NodeClient.app_format`` of a node that installs a raw ``.wasm`` as is.
APP_WASM = "wasm"
#: How merod refuses a file that is no bundle, and a signature it cannot verify.
_NOT_A_BUNDLE = "not a signed application bundle"
_BAD_SIGNATURE = "Ed25519 signature verification failed"


@dataclass
class InstalledApp:
    """What :meth:`NodeClient.install_file` installed."""

    application_id: str
    #: ``{package, version, signer_id, path}`` of the dev-signed bundle the client
    #: built for a node that installs only bundles; None when the file went as is.
    bundle: dict[str, Any] | None = None


def _bundle_field(message: str) -> str:
    """The install step key a bundle-building error is about."""
    if "package" in message:
        return "package"
    if "appVersion" in message or "version" in message:
        return "version"
    return "path"


@dataclass
class ExecuteResult:
    """The outcome of a JSON-RPC ``execute``."""

    output: Any
    logs: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def _error_text(payload: Any) -> str:
    if isinstance(payload, dict):
        if "error" in payload:
            err = payload["error"]
            return err if isinstance(err, str) else json.dumps(err)
        if "message" in payload:
            return str(payload["message"])
    return json.dumps(payload) if not isinstance(payload, str) else payload


_RETURNED_ERROR_RE = re.compile(r"^(the method call returned an error: )\[([\d,\s]*)\]$")


def decode_returned_error(message: str) -> tuple[str, Any] | None:
    """merod shows an app's ``Err`` as the Rust Debug form of its JSON bytes
    (``[123, 34, …]``). Decode it to text (and JSON where it parses)."""
    match = _RETURNED_ERROR_RE.match(message.strip())
    if not match:
        return None
    try:
        raw = bytes(int(n) for n in match.group(2).split(",") if n.strip())
        text = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    return match.group(1) + text, value


def describe_rpc_error(error: Any) -> tuple[str, str, Any]:
    """``(type, message, data)`` of a JSON-RPC error object, whatever its shape."""
    if not isinstance(error, dict):
        return "Error", str(error), error
    etype = str(error.get("type") or error.get("code") or "Error")
    data = error.get("data")
    if isinstance(data, str):
        message = data
    elif isinstance(data, dict) and "message" in data:
        message = str(data["message"])
    elif data in (None, {}):
        message = str(error.get("message") or etype)
    else:
        message = json.dumps(data)
    decoded = decode_returned_error(message)
    if decoded is not None:
        message, returned = decoded
        data = {"message": message, "returned_error": returned}
    return etype, message, data


def _denies_field(response: Reply, field: str) -> bool:
    """Whether a JSON-RPC answer is serde's refusal of the unknown ``field``."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return False
    return (
        isinstance(error, dict)
        and error.get("type") == "ParseError"
        and str(error.get("data", "")).startswith(f"unknown field `{field}`")
    )


class NodeClient:
    """Talks to one node. Use as ``async with NodeClient(url, name=…)``.

    A plain ``http://`` node is reached through the small keep-alive client
    of :mod:`calimero_workflow.http1`; an ``https://`` node, or any node when
    ``transport`` is given, through httpx.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.url = url.rstrip("/")
        self.name = name
        self._timeout = timeout
        self._headers: dict[str, str] = {"Authorization": f"Bearer {token}"} if token else {}
        self._plain: ConnectionPool | None = None
        self._http: httpx.AsyncClient | None = None
        if transport is None and self.url.startswith("http://"):
            self._plain = ConnectionPool(self.url)
        else:
            # Loaded only for TLS nodes and given transports: a run of plain
            # HTTP nodes never needs it.
            import httpx

            self._http = httpx.AsyncClient(
                base_url=self.url,
                headers=self._headers,
                timeout=timeout,
                transport=transport,
                trust_env=False,
                verify=_tls_context(),
            )
        self._ids = itertools.count(1)
        #: The install bodies this node was seen to take (None: not yet known).
        self._dev_install_shape: str | None = None
        self._install_shape: str | None = None
        #: How this node installs a raw ``.wasm`` (see :meth:`install_file`): None
        #: while not known, :data:`APP_WASM` as is, or the signing scheme of the
        #: bundles it takes (``bundle.SCHEME_V1``, ``bundle.SCHEME_UNTAGGED``).
        self.app_format: str | None = None
        self._app_format_seen = False

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._plain is not None:
            await self._plain.aclose()
        if self._http is not None:
            await self._http.aclose()

    # -- transport -----------------------------------------------------

    async def _request(
        self, method: str, path: str, *, json_body: Any = None, content: bytes | None = None,
        timeout: float | None = None,
    ) -> Reply:
        route = f"{method} {path}"
        if self._plain is None:
            return await self._request_httpx(method, path, route, json_body, content, timeout)
        headers = self._headers
        body = content
        if body is None and json_body is not None:
            # As httpx encodes json=: compact, UTF-8, no NaN.
            body = json.dumps(
                json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
            headers = {**headers, "Content-Type": "application/json"}
        try:
            return await self._plain.request(
                method, path, headers=headers, body=body,
                timeout=self._timeout if timeout is None else timeout,
            )
        except HttpTimeout as exc:
            raise NodeConnectionError(
                f"node {self.name} did not answer {route} in time ({exc.phase})",
                node=self.name,
                route=route,
            ) from exc
        except HttpError as exc:
            raise NodeConnectionError(
                f"node {self.name} is unreachable at {self.url} ({exc})",
                node=self.name,
                route=route,
            ) from exc

    async def _request_httpx(
        self, method: str, path: str, route: str, json_body: Any, content: bytes | None,
        timeout: float | None,
    ) -> Reply:
        import httpx

        assert self._http is not None
        kwargs: dict[str, Any] = {}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            if content is not None:
                response = await self._http.request(method, path, content=content, **kwargs)
            elif json_body is not None:
                response = await self._http.request(method, path, json=json_body, **kwargs)
            else:
                response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise NodeConnectionError(
                f"node {self.name} did not answer {route} in time ({type(exc).__name__})",
                node=self.name,
                route=route,
            ) from exc
        except httpx.TransportError as exc:
            raise NodeConnectionError(
                f"node {self.name} is unreachable at {self.url} ({exc or type(exc).__name__})",
                node=self.name,
                route=route,
            ) from exc
        return Reply(
            response.status_code, response.reason_phrase, dict(response.headers), response.content
        )

    async def _admin(
        self, method: str, path: str, body: Any = None, *, unwrap: bool = True,
        content: bytes | None = None, timeout: float | None = None,
    ) -> Any:
        full = f"/admin-api{path}"
        response = await self._request(method, full, json_body=body, content=content, timeout=timeout)
        route = f"{method} {full}"
        try:
            payload = response.json() if response.content else None
        except ValueError:
            payload = response.text
        if response.status_code >= 400:
            raise NodeApiError(
                f"{route} failed with HTTP {response.status_code}: "
                f"{_error_text(payload) or response.reason_phrase}",
                node=self.name,
                route=route,
                status=response.status_code,
                data=payload,
            )
        if unwrap and isinstance(payload, dict) and "data" in payload:
            return payload["data"]
        return payload

    # -- authentication ------------------------------------------------------

    async def obtain_token(self, username: str, password: str) -> str:
        """Log in with a user name and password (``POST /auth/token``) and use the token."""
        body = {
            "auth_method": "user_password",
            "public_key": username,
            "client_name": "calimero-workflow",
            "timestamp": int(time.time()),
            "provider_data": {"username": username, "password": password},
        }
        route = "POST /auth/token"
        response = await self._request("POST", "/auth/token", json_body=body)
        try:
            payload = response.json()
        except ValueError:
            payload = response.text
        if response.status_code >= 400:
            raise NodeApiError(
                f"node {self.name} refused the login of {username!r} (HTTP {response.status_code})",
                node=self.name, route=route, status=response.status_code,
            )
        data = payload.get("data", payload) if isinstance(payload, dict) else None
        token = data.get("access_token") if isinstance(data, dict) else None
        if not token:
            raise NodeApiError(
                f"node {self.name} answered the login without an access_token", node=self.name, route=route
            )
        self.set_token(token)
        return token

    def set_token(self, token: str | None) -> None:
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        else:
            self._headers.pop("Authorization", None)
        if self._http is not None:
            self._http.headers = self._headers

    # -- health and peers ------------------------------------------------

    async def health(self, *, timeout: float | None = None) -> dict[str, Any]:
        return await self._admin("GET", "/health", timeout=timeout)

    async def peers_count(self) -> int:
        data = await self._admin("GET", "/peers", unwrap=False)
        if isinstance(data, dict) and "data" in data and isinstance(data["data"], dict):
            data = data["data"]
        return int(data.get("count", 0)) if isinstance(data, dict) else 0

    # -- applications ------------------------------------------------------

    async def install_dev_application(
        self, path: str, *, metadata: bytes = b"", package: str | None = None,
        version: str | None = None,
    ) -> str:
        """Install the wasm at ``path`` on the node's filesystem; returns its id.

        Current merod takes ``{path}`` alone; nodes before 0.11.0-rc.27 require
        ``metadata`` and take ``package`` and ``version``. Without those extras
        the current shape goes first, and the older one when the node says
        ``metadata`` is missing. With them the older shape goes first, since
        only older nodes can record them; a node that refuses them raises
        :class:`NodeUnsupportedError`. The shape that worked is remembered.
        """
        extras = tuple(
            name
            for name, value in (("metadata", metadata), ("package", package), ("version", version))
            if value
        )
        route = "POST /admin-api/install-dev-application"
        if extras and self._dev_install_shape == _PATH_ONLY:
            raise self._dev_extras_refused(extras, route)
        legacy: dict[str, Any] = {"path": path, "metadata": list(metadata)}
        legacy.update((k, v) for k, v in (("package", package), ("version", version)) if v)
        if extras or self._dev_install_shape == _WITH_METADATA:
            try:
                data = await self._admin("POST", "/install-dev-application", legacy)
            except NodeApiError as exc:
                if extras and _refused_field(exc, ("metadata", "package", "version")):
                    self._dev_install_shape = _PATH_ONLY
                    raise self._dev_extras_refused(extras, route, exc) from exc
                raise
            self._dev_install_shape = _WITH_METADATA
            return data["applicationId"]
        try:
            data = await self._admin("POST", "/install-dev-application", {"path": path})
        except NodeApiError as exc:
            if not _wants_field(exc, "metadata"):
                raise
            log.debug("node %s wants metadata on dev installs (merod before 0.11.0-rc.27)", self.name)
            data = await self._admin("POST", "/install-dev-application", legacy)
            self._dev_install_shape = _WITH_METADATA
        else:
            self._dev_install_shape = _PATH_ONLY
        return data["applicationId"]

    def _dev_extras_refused(
        self, extras: tuple[str, ...], route: str, exc: NodeApiError | None = None
    ) -> NodeUnsupportedError:
        names = ", ".join(f"`{e}`" for e in extras)
        return NodeUnsupportedError(
            f"node {self.name} cannot record {names} on a dev install: its "
            "install-dev-application takes the path alone (merod 0.11.0-rc.27 and "
            "later refuse any other field)",
            node=self.name,
            route=route,
            fields=extras,
            hint="remove them from the step; only nodes before 0.11.0-rc.27 record them",
            status=exc.status if exc else None,
            data=exc.data if exc else None,
        )

    def expect_bundles(self, scheme: str) -> None:
        """Say that this node installs only bundles signed under ``scheme`` (the
        engine knows it of the nodes it runs), so :meth:`install_file` bundles a
        raw ``.wasm`` without asking first. What the node answered wins."""
        if not self._app_format_seen:
            self.app_format = scheme

    async def install_file(
        self,
        local: Path,
        *,
        bundle_dir: Path,
        stage: Callable[[Path], Awaitable[str]] | None = None,
        metadata: bytes = b"",
        package: str | None = None,
        version: str | None = None,
    ) -> InstalledApp:
        """Install the ``.wasm`` or ``.mpk`` at ``local`` as a dev application.

        ``stage`` makes a file readable by the node and returns the node's path
        for it (default: the path as is). A ``.mpk`` (recognised by content, as
        merod does) is installed as given. A raw ``.wasm`` goes as is to a node
        that takes it; a node that answers ``not a signed application bundle``
        (merod 0.11.0-rc.31 and later), or that :meth:`expect_bundles` named,
        gets a bundle of it signed with the public dev key, written to
        ``bundle_dir``: ``package`` and ``version`` name it (else they come from
        the file name, :func:`calimero_workflow.bundle.default_coordinates`).
        A node that refuses the signature (``Ed25519 signature verification
        failed``) gets it once more signed as merod signed before core#4307.
        What worked is remembered, so later installs go straight to it.
        """
        from . import bundle as mpk

        if stage is None:
            async def stage(path: Path) -> str:
                return str(path)

        data = read_file(local)  # a FIFO there would hold the run forever
        if mpk.is_bundle(data):
            node_path = await stage(local)
            app_id = await self.install_dev_application(
                node_path, metadata=metadata, package=package, version=version
            )
            return InstalledApp(app_id)
        if self.app_format in (None, APP_WASM):
            try:
                app_id = await self.install_dev_application(
                    await stage(local), metadata=metadata, package=package, version=version
                )
            except NodeUnsupportedError as exc:
                # The node takes the path alone (0.11.0-rc.27 and later): a
                # bundle can still carry `package` and `version`, not `metadata`.
                if self.app_format == APP_WASM or "metadata" in exc.fields:
                    raise
            except NodeApiError as exc:
                if exc.status != 500 or _NOT_A_BUNDLE not in exc.message:
                    raise
                log.info("node %s installs only signed bundles: %s", self.name, exc.message)
            else:
                self.app_format, self._app_format_seen = APP_WASM, True
                return InstalledApp(app_id)
        return await self._install_dev_bundle(local, bundle_dir, stage, metadata, package, version)

    async def _install_dev_bundle(
        self,
        local: Path,
        bundle_dir: Path,
        stage: Callable[[Path], Awaitable[str]],
        metadata: bytes,
        package: str | None,
        version: str | None,
    ) -> InstalledApp:
        from . import bundle as mpk

        route = "POST /admin-api/install-dev-application"
        if metadata:
            raise NodeUnsupportedError(
                f"node {self.name} installs signed bundles only, which record the "
                "metadata of their manifest: `metadata` cannot be given to it",
                node=self.name,
                route=route,
                fields=("metadata",),
                hint="remove `metadata`; `package` and `version` name the bundle built for the node",
            )
        default_package, default_version, _ = mpk.default_coordinates(local)
        package, version = package or default_package, version or default_version
        schemes = [mpk.SCHEME_V1, mpk.SCHEME_UNTAGGED]
        if self.app_format in schemes:
            schemes.remove(self.app_format)
            schemes.insert(0, self.app_format)
            if self._app_format_seen:
                del schemes[1:]
        for scheme in schemes:
            try:
                path = mpk.dev_bundle_for(
                    local, bundle_dir, package=package, version=version, scheme=scheme
                )
            except ValueError as exc:
                raise NodeUnsupportedError(
                    f"cannot bundle {local.name} for node {self.name}, which installs "
                    f"signed bundles only: {exc}",
                    node=self.name,
                    route=route,
                    fields=(_bundle_field(str(exc)),),
                    hint="give `package` (letters, digits, `.`, `-`, `_`) and `version` "
                    "for the bundle, or install a .mpk built with `cargo mero bundle`",
                ) from None
            try:
                app_id = await self.install_dev_application(await stage(path))
            except NodeApiError as exc:
                if _BAD_SIGNATURE in exc.message and scheme != schemes[-1]:
                    log.info(
                        "node %s refused the %s signature of %s; signing it as merod "
                        "before core#4307 did",
                        self.name, scheme, path.name,
                    )
                    continue
                raise
            self.app_format, self._app_format_seen = scheme, True
            log.info(
                "installed %s on node %s as dev bundle %s@%s (signer %s, %s signature): "
                "application %s",
                local.name, self.name, package, version, mpk.DEV_SIGNER_ID, scheme, app_id,
            )
            return InstalledApp(
                app_id,
                bundle={
                    "package": package,
                    "version": version,
                    "signer_id": mpk.DEV_SIGNER_ID,
                    "path": str(path),
                },
            )
        raise AssertionError("unreachable: the last scheme's failure is raised")

    async def install_application(
        self, url: str, *, hash: str | None = None, metadata: bytes = b"",
        package: str | None = None, version: str | None = None,
    ) -> str:
        """Have the node fetch and install the app at ``url``; returns its id.

        Only nodes before 0.11.0-rc.27 fetch URLs. Current merod installs
        registry coordinates instead: with ``package`` and ``version`` given,
        those are installed; without, :class:`NodeUnsupportedError`.
        """
        route = "POST /admin-api/install-application"
        if self._install_shape == _COORDINATES:
            return await self._install_coordinates_for_url(url, package, version, route)
        body: dict[str, Any] = {"url": url, "metadata": list(metadata)}
        if hash:
            body["hash"] = _legacy_hash(hash)
        body.update((k, v) for k, v in (("package", package), ("version", version)) if v)
        try:
            data = await self._admin("POST", "/install-application", body)
        except NodeApiError as exc:
            if _refused_field(exc, ("url",)) is None:
                raise
            self._install_shape = _COORDINATES
            return await self._install_coordinates_for_url(url, package, version, route, exc)
        self._install_shape = _URL
        return data["applicationId"]

    async def _install_coordinates_for_url(
        self, url: str, package: str | None, version: str | None, route: str,
        exc: NodeApiError | None = None,
    ) -> str:
        if package and version:
            log.info(
                "node %s installs no URLs; installing %s@%s from its registry instead of %s",
                self.name, package, version, url,
            )
            return await self.install_from_registry(package, version)
        raise NodeUnsupportedError(
            f"node {self.name} cannot install from a URL: its install-application takes "
            "registry coordinates {package, version} (merod 0.11.0-rc.27 and later)",
            node=self.name,
            route=route,
            fields=("url",),
            hint="give `package` and `version` to install from the node's registry, or "
            "install a local `path` on a node this run starts",
            status=exc.status if exc else None,
            data=exc.data if exc else None,
        )

    async def install_from_registry(self, package: str, version: str) -> str:
        """Install ``package`` at ``version`` from the node's registry; returns its id.

        This is current merod's ``install-application``; a node before
        0.11.0-rc.27 has no registry install and raises :class:`NodeUnsupportedError`.
        """
        route = "POST /admin-api/install-application"
        body = {"package": package, "version": version}
        try:
            data = await self._admin("POST", "/install-application", body)
        except NodeApiError as exc:
            if not _wants_field(exc, "url"):
                raise
            self._install_shape = _URL
            raise NodeUnsupportedError(
                f"node {self.name} cannot install registry coordinates: its "
                "install-application fetches a URL (merod before 0.11.0-rc.27)",
                node=self.name,
                route=route,
                fields=("package", "version"),
                hint="give the app's `url` (or a local `path`) for this node",
                status=exc.status,
                data=exc.data,
            ) from exc
        self._install_shape = _COORDINATES
        return data["applicationId"]

    async def get_application(self, application_id: str) -> dict[str, Any] | None:
        data = await self._admin("GET", f"/applications/{application_id}")
        return data.get("application") if isinstance(data, dict) else None

    async def list_applications(self) -> list[dict[str, Any]]:
        data = await self._admin("GET", "/applications")
        return list(data.get("apps", [])) if isinstance(data, dict) else []

    # -- namespaces --------------------------------------------------------

    async def create_namespace(
        self, application_id: str, *, name: str | None = None, app_key: str | None = None
    ) -> str:
        body: dict[str, Any] = {"applicationId": application_id}
        if name:
            body["name"] = name
        if app_key:
            body["appKey"] = app_key
        data = await self._admin("POST", "/namespaces", body)
        return data["namespaceId"]

    async def get_namespace(self, namespace_id: str) -> dict[str, Any]:
        return await self._admin("GET", f"/namespaces/{namespace_id}")

    async def get_group(self, group_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        """A group's info (``GET /admin-api/groups/:gid``); a namespace is a group too."""
        return await self._admin("GET", f"/groups/{group_id}", timeout=timeout)

    async def group_state_hash(self, group_id: str, *, timeout: float | None = None) -> str:
        """The hash of the group's governance state (members, contexts…), as the node spells it."""
        data = await self.get_group(group_id, timeout=timeout)
        value = data.get("groupStateHash") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            route = f"GET /admin-api/groups/{group_id}"
            raise NodeApiError(
                f"{route} answered without a groupStateHash ({_error_text(data)[:200]}); "
                "the node predates group state hashes",
                node=self.name,
                route=route,
                data=data,
            )
        return value

    async def create_namespace_invitation(
        self, namespace_id: str, *, expiration_timestamp: int | None = None,
        recursive: bool | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if expiration_timestamp is not None:
            body["expirationTimestamp"] = expiration_timestamp
        if recursive is not None:
            body["recursive"] = recursive
        return await self._admin("POST", f"/namespaces/{namespace_id}/invite", body)

    async def join_namespace(
        self, namespace_id: str, invitation: Any, *, group_name: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"invitation": invitation}
        if group_name:
            body["groupName"] = group_name
        return await self._admin("POST", f"/namespaces/{namespace_id}/join", body)

    # -- contexts and identities -------------------------------------------

    async def create_context(
        self, application_id: str, group_id: str, *, params: bytes = b"",
        seed: str | None = None, service_name: str | None = None, name: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "applicationId": application_id,
            "groupId": group_id,
            "initializationParams": list(params),
        }
        if seed:
            body["contextSeed"] = seed
        if service_name:
            body["serviceName"] = service_name
        if name:
            body["name"] = name
        return await self._admin("POST", "/contexts", body)

    async def get_context(self, context_id: str, *, timeout: float | None = None) -> dict[str, Any]:
        data = await self._admin("GET", f"/contexts/{context_id}", timeout=timeout)
        if isinstance(data, dict) and "contextStateHash" not in data and "rootHash" in data:
            data = {**data, "contextStateHash": data["rootHash"]}
        return data

    async def context_state_hash(self, context_id: str, *, timeout: float | None = None) -> str:
        """The context's state hash as the node spells it; see :func:`is_zero_hash`."""
        data = await self.get_context(context_id, timeout=timeout)
        return str(data.get("contextStateHash") or ZERO_HASH)

    async def list_contexts(self) -> list[dict[str, Any]]:
        data = await self._admin("GET", "/contexts")
        return list(data.get("contexts", [])) if isinstance(data, dict) else []

    async def join_context(self, context_id: str) -> dict[str, Any]:
        return await self._admin("POST", f"/contexts/{context_id}/join")

    async def context_identities(self, context_id: str, *, owned: bool = False) -> list[str]:
        suffix = "identities-owned" if owned else "identities"
        data = await self._admin("GET", f"/contexts/{context_id}/{suffix}")
        return list(data.get("identities", [])) if isinstance(data, dict) else []

    async def create_identity(self) -> str:
        data = await self._admin("POST", "/identity/context", {})
        return data["publicKey"]

    async def sync(self, context_id: str | None = None, *, timeout: float | None = None) -> None:
        path = f"/contexts/sync/{context_id}" if context_id else "/contexts/sync"
        await self._admin("POST", path, timeout=timeout)

    # -- blobs -----------------------------------------------------------------

    async def upload_blob(self, content: bytes, *, context_id: str | None = None) -> dict[str, Any]:
        path = f"/blobs?context_id={context_id}" if context_id else "/blobs"
        return await self._admin("PUT", path, content=content)

    async def download_blob(self, blob_id: str, *, context_id: str | None = None) -> bytes:
        path = f"/admin-api/blobs/{blob_id}" + (f"?context_id={context_id}" if context_id else "")
        response = await self._request("GET", path)
        if response.status_code >= 400:
            raise NodeApiError(
                f"GET {path} failed with HTTP {response.status_code}: {response.text[:200]}",
                node=self.name, route=f"GET {path}", status=response.status_code,
            )
        return response.content

    # -- JSON-RPC ----------------------------------------------------------------

    async def _rpc_execute(self, params: dict[str, Any], timeout: float | None) -> Reply:
        envelope = {"jsonrpc": "2.0", "id": next(self._ids), "method": "execute", "params": params}
        return await self._request("POST", "/jsonrpc", json_body=envelope, timeout=timeout)

    async def execute(
        self, context_id: str, method: str, args: Any = None, *,
        executor_public_key: str | None = None, timeout: float | None = None,
    ) -> ExecuteResult:
        params: dict[str, Any] = {
            "contextId": context_id,
            "method": method,
            "argsJson": {} if args is None else args,
        }
        if executor_public_key:
            # Required by 0.10-era nodes; current ones deny the unknown field,
            # so it is dropped and the call sent again when they do.
            params["executorPublicKey"] = executor_public_key
        route = "POST /jsonrpc"
        response = await self._rpc_execute(params, timeout)
        if executor_public_key and _denies_field(response, "executorPublicKey"):
            del params["executorPublicKey"]
            response = await self._rpc_execute(params, timeout)
        try:
            payload = response.json()
        except ValueError:
            raise NodeApiError(
                f"{route} returned HTTP {response.status_code} with a body that is not JSON: "
                f"{response.text[:200]!r}",
                node=self.name, route=route, status=response.status_code,
            ) from None
        if not isinstance(payload, dict):
            raise NodeApiError(f"{route} returned {payload!r}", node=self.name, route=route)
        if payload.get("error") is not None:
            etype, message, data = describe_rpc_error(payload["error"])
            raise NodeApiError(
                f"{method} failed on node {self.name}: {etype}: {message}",
                node=self.name, route=route, status=response.status_code,
                error_type=etype, data=data,
            )
        if response.status_code >= 400:
            raise NodeApiError(
                f"{route} failed with HTTP {response.status_code}: {_error_text(payload)}",
                node=self.name, route=route, status=response.status_code,
            )
        result = payload.get("result") or {}
        return ExecuteResult(
            output=result.get("output"),
            logs=list(result.get("logs") or []),
            events=list(result.get("events") or []),
            raw=payload,
        )

    # -- contexts, applications and the node's identity (later additions) -----

    async def delete_context(self, context_id: str, *, requester: str | None = None) -> dict[str, Any]:
        """Leave and delete a context on this node (``DELETE /admin-api/contexts/:id``).

        ``requester`` is the admin identity merod asks for when the context
        belongs to a group.
        """
        body = {"requester": requester} if requester else None
        data = await self._admin("DELETE", f"/contexts/{context_id}", body)
        return data if isinstance(data, dict) else {}

    async def uninstall_application(self, application_id: str) -> dict[str, Any]:
        """Remove an installed application (``DELETE /admin-api/applications/:id``)."""
        data = await self._admin("DELETE", f"/applications/{application_id}")
        return data if isinstance(data, dict) else {}

    async def node_identity(self) -> dict[str, Any]:
        """Who the node is: ``accountId``, ``deviceId``, ``publicKey``,
        ``accountRootPublicKey`` (``GET /admin-api/identity``)."""
        data = await self._admin("GET", "/identity")
        return data if isinstance(data, dict) else {}
