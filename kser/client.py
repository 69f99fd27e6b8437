"""A Python client of kser's REST API (``/api/v1``): start, watch, control and repair
operations from any machine that can reach the API, without the registry's code.

    from kser.client import Client

    kser = Client("http://kser.example:8000", token="s3cret")
    op = kser.start("myapp.ops.Nightly", {"day": "2026-11-23"}, key="nightly-2026-11-23")
    print(kser.wait(op["id"], timeout=600)["status"])

Every call returns the API's JSON: operations as ``GET /operations/{id}`` gives them;
a control (cancel, recover, run_from, run_one) ``{"message": ..., "operation": ...}``.
A refusal is a typed :class:`ClientError` whose message says what to do: 401
:class:`Unauthorized`, 403 :class:`Forbidden`, 404 :class:`NotFound`, 409
:class:`Conflict`, 400/422 :class:`InvalidParams` (with the ``field``), 503
:class:`ServiceUnavailable` (the store or Kafka is down: retry), and
:class:`ServerUnreachable` when no answer came at all. Connections are reused (one
``requests.Session``) and every request has a timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import requests
from cdumay_error.types import ValidationError
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from kser.errors import KserError
from kser.schemas import check_depth
from kser.status import FINAL_STATUSES

#: an operation, task, log line... as the API's JSON gives it
Json = dict[str, Any]
#: (``list`` is a method of the client: the built-in under another name)
JsonList = list[dict[str, Any]]

#: seconds to connect to the API and to wait for each answer (``?wait=`` adds its own)
DEFAULT_TIMEOUT = 30.0
#: the API's path when the URL given names only a host
DEFAULT_PREFIX = "/api/v1"
#: seconds between two polls of :meth:`Client.wait`, growing to the second value
POLL_INTERVAL = (0.2, 2.0)


class ClientError(KserError):
    """The API refused a request, or could not be reached. ``status`` is the HTTP status
    (None when no answer came), ``body`` the JSON answer (when there was one)."""

    def __init__(self, message: str, status: int | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.body = message, status, body or {}


class Unauthorized(ClientError):
    """401: no token, or one the API does not know."""


class Forbidden(ClientError):
    """403: the token's role does not allow this (a ``read`` token on a control)."""


class NotFound(ClientError):
    """404: no such operation, task or route."""


class Conflict(ClientError):
    """409: the operation's state does not allow this control (the message says why)."""


class InvalidParams(ClientError):
    """400/422: the request's input was refused; ``field`` names the first bad one
    (``entrypoint``, ``params.<name>``, ``task``, a query argument...)."""

    def __init__(self, message: str, status: int | None = None,
                 body: dict[str, Any] | None = None, field: str | None = None) -> None:
        super().__init__(message, status, body)
        self.field = field


class ServiceUnavailable(ClientError):
    """503: the API runs but its store or Kafka does not answer; ``retry_after`` is the
    number of seconds it suggests to wait."""

    def __init__(self, message: str, status: int | None = None,
                 body: dict[str, Any] | None = None, retry_after: float | None = None):
        super().__init__(message, status, body)
        self.retry_after = retry_after


class ServerUnreachable(ClientError):
    """No answer: the API is not running at that URL, the network dropped, or it did not
    answer within the timeout."""


class ServerError(ClientError):
    """Another error status (a 500 is a bug of the API: its log says more)."""


_ERRORS: dict[int, type[ClientError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound,
                                         409: Conflict, 400: InvalidParams,
                                         422: InvalidParams, 503: ServiceUnavailable}


def api_url(base_url: str) -> str:
    """``base_url`` as the API's root: a URL naming only a host gets ``/api/v1``."""
    base_url = base_url.strip().rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{base_url!r} is not an http(s) URL: give the API's address, "
                         "e.g. http://localhost:8000 or http://localhost:8000/api/v1")
    return base_url if parts.path not in ("", "/") else base_url + DEFAULT_PREFIX


def _first_field(errors: Any, prefix: str = "") -> tuple[str | None, str | None]:
    """(dotted field, its first message) of flask-smorest's nested ``errors``."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            # the request's location (json, query) is not part of the field's name
            name = "" if not prefix and key in ("json", "query", "path") else (
                f"{prefix}.{key}" if prefix else str(key))
            field, message = _first_field(value, name)
            if field or message:
                return field or name or None, message
    elif isinstance(errors, list) and errors:
        return prefix or None, str(errors[0])
    return None, None


class Client:
    """A client of the API at ``base_url`` (``http://host:port``, or the full prefix
    ``http://host:port/api/v1``), sending ``token`` as ``Authorization: Bearer``.

    :param timeout: seconds to connect and to wait for each answer
    :param session: a ``requests.Session`` to use (proxies, TLS settings); one is made
    """

    def __init__(self, base_url: str, token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT,
                 session: requests.Session | None = None) -> None:
        self.url = api_url(base_url)
        self.timeout = timeout
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # a pooled keep-alive connection the server closes as it is reused ("Remote
            # end closed connection"): a read is sent again on a new one (never a POST)
            retries = Retry(total=2, connect=2, read=2, status=0, backoff_factor=0.1,
                            allowed_methods=frozenset({"GET", "HEAD", "OPTIONS"}),
                            raise_on_status=False)
            session.mount("http://", HTTPAdapter(max_retries=retries))
            session.mount("https://", HTTPAdapter(max_retries=retries))
        self.session = session
        # sent with this client's requests only: a session given may talk to other hosts
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections (of a session the client made: one given to it
        is the caller's to close)."""
        if self._owns_session:
            self.session.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- operations ---------------------------------------------------------------------

    def start(self, entrypoint: str, params: dict[str, Any] | None = None,
              key: str | None = None, wait: float | None = None) -> dict[str, Any]:
        """Start an operation (or a task alone) and return it.

        :param key: an idempotency key: a second start with it returns the first operation
        :param wait: seconds to block until it ends (the answer is then the final
            operation, or the running one when the time ran out)
        """
        try:  # (what the API would refuse, refused before anything is sent)
            check_depth(params, "params")
        except ValidationError as exc:
            raise InvalidParams(exc.message, field="params") from None
        body: dict[str, Any] = {"entrypoint": entrypoint, "params": params or {}}
        if key is not None:
            body["key"] = key
        query = {} if wait is None else {"wait": wait}
        found: dict[str, Any] = self._call("POST", "/operations", json=body, params=query,
                                           extra_time=wait or 0)
        return found

    def get(self, operation_id: str) -> dict[str, Any]:
        """The operation, with its tasks."""
        found: dict[str, Any] = self._call("GET", f"/operations/{_seg(operation_id)}")
        return found

    def list(self, *, page_size: int = 100, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every operation matching ``filters`` (``status``, ``entrypoint``, ``search``,
        ``created_after``, ``created_before``: ISO 8601 with a time zone), newest first,
        fetched page by page as the iteration goes."""
        query = {k: v for k, v in filters.items() if v is not None}
        query["limit"] = page_size
        while True:
            page = self._call("GET", "/operations", params=query)
            yield from page["items"]
            if not page.get("next_cursor"):
                return
            query["cursor"] = page["next_cursor"]

    def wait(self, operation_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Poll the operation until it ends; the final operation.

        :raises TimeoutError: ``timeout`` seconds passed first (the operation goes on)
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = POLL_INTERVAL[0]
        while True:
            op = self.get(operation_id)
            if op["status"] in FINAL_STATUSES:
                return op
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"operation {operation_id} is still {op['status']} after "
                                   f"{timeout:g} s: it goes on (wait again, or cancel it)")
            pause = delay if deadline is None else min(delay, deadline - time.monotonic())
            time.sleep(max(pause, 0))
            delay = min(delay * 1.5, POLL_INTERVAL[1])

    def cancel(self, operation_id: str) -> dict[str, Any]:
        """Cancel it: running tasks stop at their next checkpoint, pending ones never run."""
        return self._control(operation_id, "cancel")

    def recover(self, operation_id: str) -> dict[str, Any]:
        """Re-run what failed or was canceled, and what depends on it (a FAILED one)."""
        return self._control(operation_id, "recover")

    def run_from(self, operation_id: str, task: str) -> dict[str, Any]:
        """Re-run ``task`` (its name or id) and every task after it."""
        return self._control(operation_id, "run-from", task)

    def run_one(self, operation_id: str, task: str) -> dict[str, Any]:
        """Re-run ``task`` (its name or id) alone."""
        return self._control(operation_id, "run-one", task)

    def delete(self, operation_id: str) -> None:
        """Delete an ended operation with its tasks, logs and attempts."""
        self._call("DELETE", f"/operations/{_seg(operation_id)}")

    def logs(self, operation_id: str, task: str,
             attempt: int | None = None) -> JsonList:
        """The log lines of ``task`` (its name or id), of one attempt or of all."""
        query = {} if attempt is None else {"attempt": attempt}
        found = self._call("GET", f"/operations/{_seg(operation_id)}/tasks/{_seg(task)}/logs",
                           params=query)
        lines: JsonList = found["lines"]
        return lines

    def attempts(self, operation_id: str, task: str) -> JsonList:
        """The attempts of ``task``: which worker ran each, when, and how it ended."""
        found = self._call(
            "GET", f"/operations/{_seg(operation_id)}/tasks/{_seg(task)}/attempts")
        attempts: JsonList = found["attempts"]
        return attempts

    def entrypoints(self) -> JsonList:
        """What can be started: path, kind, docstring, required params."""
        found: JsonList = self._call("GET", "/entrypoints")
        return found

    def schedules(self) -> JsonList:
        """The cron schedules the schedulers run: cron, time zone, last launch, next runs."""
        found: JsonList = self._call("GET", "/schedules")
        return found

    def health(self) -> dict[str, Any]:
        """``GET /health``: the API process answers."""
        found: dict[str, Any] = self._call("GET", "/health")
        return found

    def ready(self) -> dict[str, Any]:
        """``GET /ready``: its store and Kafka answer (:class:`ServiceUnavailable` if not)."""
        found: dict[str, Any] = self._call("GET", "/ready")
        return found

    # -- plumbing -----------------------------------------------------------------------

    def _control(self, operation_id: str, control: str, task: str | None = None) -> dict[str, Any]:
        body = None if task is None else {"task": task}
        found: dict[str, Any] = self._call(
            "POST", f"/operations/{_seg(operation_id)}/{control}", json=body)
        return found

    def _call(self, method: str, path: str, *, extra_time: float = 0, **kwargs: Any) -> Any:
        url = self.url + path
        try:
            response = self.session.request(method, url, headers=self._headers, timeout=(
                self.timeout, self.timeout + extra_time), **kwargs)
        except requests.Timeout as exc:
            raise ServerUnreachable(f"the kser API at {self.url} did not answer {method} "
                                    f"{path} within {self.timeout + extra_time:g} s "
                                    f"({type(exc).__name__}): is it overloaded or stuck? "
                                    "its log says more") from exc
        except requests.RequestException as exc:
            raise ServerUnreachable(f"cannot reach the kser API at {self.url} ({exc}): is "
                                    "`kser serve` running there? check the URL (--url, "
                                    "KSER_API_URL)") from exc
        if response.status_code >= 400:
            raise self._error(method, path, response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:  # (a proxy's login page, a URL that is not the API's)
            raise ServerError(f"{method} {path}: {response.status_code}, but not the kser "
                              f"API's JSON ({response.headers.get('Content-Type')}): is "
                              f"{self.url} the API's URL?", response.status_code) from None

    def _error(self, method: str, path: str, response: requests.Response) -> ClientError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        status = response.status_code
        message = str(body.get("message") or response.reason or "error")
        cls = _ERRORS.get(status, ServerError)
        where = f"{method} {path}: {status}"
        if cls is Unauthorized:
            return Unauthorized(f"{where}, {message} (give a token: --token or "
                                "KSER_API_TOKEN; one of KSER_API_TOKENS on the server)",
                                status, body)
        if cls is InvalidParams:
            field, detail = _first_field(body.get("errors"))
            text = f"{where}, {field}: {detail}" if field and detail else f"{where}, {message}"
            return InvalidParams(text, status, body, field=field)
        if cls is ServiceUnavailable:
            retry = response.headers.get("Retry-After")
            return ServiceUnavailable(f"{where}, {message}", status, body,
                                      retry_after=float(retry) if retry and retry.isdigit()
                                      else None)
        if cls is ServerError and status >= 500:
            message += " (a bug or an outage of the API: its log says more)"
        return cls(f"{where}, {message}", status, body)


def _seg(value: str) -> str:
    """A path segment, quoted (a task name may hold any character)."""
    return quote(str(value), safe="")
