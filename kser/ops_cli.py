"""``kser ops``: start, watch, control and repair operations over the REST API, from a
terminal or a script (:class:`kser.client.Client` underneath).

Every command takes ``--url`` (env ``KSER_API_URL``) and ``--token`` (env
``KSER_API_TOKEN``); tables are for people, ``--json`` prints the API's JSON for
scripts. Exit status, for scripts to branch on:

==  =============================================================================
0   done; the operation(s) waited for SUCCEEDED
1   an operation waited for FAILED or was CANCELED; the API refused (404, 409)
2   usage error, or the API could not be used (unreachable, token refused, 503)
3   ``wait``/``watch --timeout``: the time ran out, the operation goes on
==  =============================================================================
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import click
from cdumay_error.types import ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Column, Table
from rich.text import Text

from kser.client import (
    Client,
    ClientError,
    Forbidden,
    InvalidParams,
    ServerUnreachable,
    ServiceUnavailable,
    Unauthorized,
)
from kser.errors import KserError
from kser.schemas import load_json
from kser.status import FINAL_STATUSES

F = TypeVar("F", bound=Callable[..., Any])

#: exit status: an operation failed or was canceled, or the API refused the request
EXIT_FAILED = 1
#: exit status: usage error, or the API could not be used
EXIT_USAGE = 2
#: exit status: the time given ran out before the operation ended
EXIT_TIMEOUT = 3
#: how each status is shown
STYLES = {"SUCCESS": "green", "FAILED": "bold red", "CANCELED": "yellow",
          "RUNNING": "cyan", "PENDING": "dim", "SKIPPED": "dim italic"}


class OpsError(KserError, click.ClickException):
    """``kser: <message>``, exit status 1 (the API refused; an operation failed)."""

    exit_code = EXIT_FAILED

    def show(self, file: Any = None) -> None:
        click.echo(f"kser: {self.format_message()}", err=True)


class OpsUsageError(OpsError):
    """``kser: <message>``, exit status 2 (usage, or the API cannot be used)."""

    exit_code = EXIT_USAGE


@contextmanager
def _api_errors() -> Iterator[None]:
    """A client error as one line and its exit status (2 when the API cannot be used)."""
    try:
        yield
    except (ServerUnreachable, Unauthorized, Forbidden, ServiceUnavailable,
            InvalidParams) as exc:
        raise OpsUsageError(exc.message) from None
    except ClientError as exc:
        raise OpsError(exc.message) from None


def _options(func: F) -> F:
    func = click.option("--json", "as_json", is_flag=True,
                        help="Print the API's JSON instead of a table.")(func)
    func = click.option("--token", envvar="KSER_API_TOKEN", default=None, show_envvar=True,
                        help="A token of KSER_API_TOKENS (read, or admin for controls).")(func)
    func = click.option("--url", envvar="KSER_API_URL", default="http://127.0.0.1:8000",
                        show_default=True, show_envvar=True,
                        help="The API: http://host:port (or its full /api/v1 URL).")(func)
    return func


def _client(url: str, token: str | None) -> Client:
    try:
        return Client(url, token=token)
    except ValueError as exc:
        raise OpsUsageError(str(exc)) from None


def _console() -> Console:
    """Stdout's console; piped, 200 columns wide (ids are never cut: they get copied)."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=200)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _status(status: str) -> Text:
    return Text(status, style=STYLES.get(status, ""))


def _plain(value: Any) -> Text:
    """A value of the API's as text, never read as rich markup ("[daily]" stays)."""
    return Text(str(value))


def _when(iso: str | None) -> str:
    """An API timestamp in local time, to the second."""
    if not iso:
        return "-"
    return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _took(start: str | None, end: str | None) -> str:
    if not start:
        return "-"
    finish = datetime.fromisoformat(end) if end else datetime.now().astimezone()
    seconds = (finish - datetime.fromisoformat(start)).total_seconds()
    text = f"{seconds:.2f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return text if end else text + "…"


def _exit_for(statuses: list[str]) -> int:
    return 0 if all(status == "SUCCESS" for status in statuses) else EXIT_FAILED


@click.group()
def ops() -> None:
    """Start, watch and control operations through the REST API (`kser serve`).

    Exit status: 0 done (what was waited for succeeded), 1 an operation failed or was
    canceled or the API refused, 2 usage or connection error, 3 time ran out.
    """


@ops.command("ls")
@click.option("--status", type=click.Choice(sorted(STYLES)), default=None)
@click.option("--entrypoint", default=None, help="Only operations of this entrypoint.")
@click.option("--search", default=None, help="A part of the id or of the entrypoint.")
@click.option("--since", "created_after", default=None,
              help="Created after (ISO 8601 with a time zone).")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many operations to show (newest first).")
@_options
def ls(url: str, token: str | None, as_json: bool, limit: int, **filters: Any) -> None:
    """List operations, newest first."""
    with _api_errors(), _client(url, token) as kser:
        found = []
        for op in kser.list(page_size=min(limit, 200), **filters):
            found.append(op)
            if len(found) == limit:
                break
    if as_json:
        _print_json(found)
        return
    table = Table("ENTRYPOINT", "STATUS", "CREATED", "TOOK", box=None)
    table.columns.insert(0, Column("ID", no_wrap=True, min_width=36))
    for op in found:
        table.add_row(_plain(op["id"]), _plain(op["entrypoint"]), _status(op["status"]),
                      _when(op["created_at"]), _took(op["created_at"], op["finished_at"]))
    console = _console()
    console.print(table if found else "no operation")
    with _api_errors(), _client(url, token) as kser:
        try:
            scheduled = kser.schedules()
        except ClientError as exc:
            if exc.status != 404:  # (an API older than schedules has none to show)
                raise
            scheduled = []
    if scheduled:
        console.print()
        console.print(_schedule_table(scheduled))


def _schedule_table(scheduled: list[dict[str, Any]]) -> Table:
    table = Table("SCHEDULE", "ENTRYPOINT", "CRON", "NEXT RUNS", "LAST RUN", "OPERATION",
                  box=None)
    for schedule in scheduled:
        table.add_row(_plain(schedule["name"]), _plain(schedule["entrypoint"]),
                      _plain(f"{schedule['cron']} ({schedule['timezone']})"),
                      (", ".join(_when(run) for run in schedule["next_runs"]) or "-")
                      if schedule.get("active", True) else "(no scheduler runs it)",
                      _when(schedule["last_run"]),
                      _plain(schedule["last_operation_id"] or "-"))
    return table


@ops.command("schedules")
@_options
def schedules_command(url: str, token: str | None, as_json: bool) -> None:
    """The cron schedules `kser scheduler` runs, with their next runs."""
    with _api_errors(), _client(url, token) as kser:
        scheduled = kser.schedules()
    if as_json:
        _print_json(scheduled)
        return
    _console().print(_schedule_table(scheduled) if scheduled else "no schedule")


def _task_table(op: dict[str, Any]) -> Table:
    names = {task["id"]: task["name"] for task in op["tasks"]}
    table = Table("TASK", "STATUS", "ATTEMPT", "WORKER", "STARTED", "TOOK", "AFTER", "RESULT",
                  box=None)
    for task in op["tasks"]:
        result = task.get("result") or {}
        summary = (result.get("stderr") or result.get("stdout") or "").strip().splitlines()
        table.add_row(_plain(task["name"]), _status(task["status"]), str(task["attempt"]),
                      _plain(task["worker"] or "-"), _when(task["started_at"]),
                      _took(task["started_at"], task["finished_at"]) if task["started_at"]
                      else "-",
                      _plain(", ".join(names.get(d, d) for d in task["depends_on"]) or "-"),
                      _plain(summary[0][:60] if summary else "-"))
    return table


def _show(op: dict[str, Any]) -> None:
    console = _console()
    console.print(Text.assemble(("operation ", "bold"), op["id"], "  ", _status(op["status"])))
    console.print(f"entrypoint  {op['entrypoint']}\nparams      {json.dumps(op['params'])}\n"
                  f"created     {_when(op['created_at'])}\nfinished    "
                  f"{_when(op['finished_at'])}  (took "
                  f"{_took(op['created_at'], op['finished_at'])})", markup=False)
    if op.get("parent_operation_id"):
        console.print(f"parent      {op['parent_operation_id']}", markup=False)
    console.print(_task_table(op))
    result = op.get("result") or {}
    if op["status"] == "FAILED" and result.get("stderr"):
        console.print(Text(f"error: {result['stderr']}", style="red"))


@ops.command()
@click.argument("operation_id")
@_options
def show(url: str, token: str | None, as_json: bool, operation_id: str) -> None:
    """Show an operation and its tasks."""
    with _api_errors(), _client(url, token) as kser:
        op = kser.get(operation_id)
    _print_json(op) if as_json else _show(op)


def _params(params: str | None, pairs: tuple[str, ...]) -> dict[str, Any]:
    try:
        found = load_json(params, "--params") if params else {}
    except ValidationError as exc:
        raise OpsUsageError(f"{exc.message}: give an object, e.g. "
                            "--params '{\"day\": \"2026-11-23\"}'") from None
    if not isinstance(found, dict):
        raise OpsUsageError("--params must be a JSON object")
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise OpsUsageError(f"-p {pair!r}: give NAME=VALUE (VALUE read as JSON, else "
                                "text)")
        try:
            found[name] = load_json(value, f"-p {name}")
        except ValidationError:
            found[name] = value
    return found


@ops.command()
@click.argument("entrypoint")
@click.option("--params", default=None, help="Parameters as a JSON object.")
@click.option("-p", "pairs", multiple=True, metavar="NAME=VALUE",
              help="A parameter (VALUE read as JSON, else as text); repeatable.")
@click.option("--key", default=None, help="Idempotency key: started once whatever the retries.")
@click.option("--wait", "wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Wait up to SECONDS for it to end (exit status from its end).")
@_options
def start(url: str, token: str | None, as_json: bool, entrypoint: str, params: str | None,
          pairs: tuple[str, ...], key: str | None, wait: float | None) -> None:
    """Start ENTRYPOINT (an operation's or a task's path: see `kser ops entrypoints`)."""
    values = _params(params, pairs)
    with _api_errors(), _client(url, token) as kser:
        op = kser.start(entrypoint, values, key=key)
        if wait is not None and op["status"] not in FINAL_STATUSES:
            try:
                op = kser.wait(op["id"], timeout=wait)
            except TimeoutError:
                op = kser.get(op["id"])
    if as_json:
        _print_json(op)
    elif wait is None:
        click.echo(op["id"])
    else:
        _show(op)
    if wait is not None:
        _exit_after_wait(op)


def _exit_after_wait(op: dict[str, Any]) -> None:
    if op["status"] not in FINAL_STATUSES:
        raise SystemExit(EXIT_TIMEOUT)
    raise SystemExit(_exit_for([op["status"]]))


@ops.command("wait")
@click.argument("operation_id")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait at most (exit status 3 when they run out).")
@_options
def wait_(url: str, token: str | None, as_json: bool, operation_id: str,
          timeout: float | None) -> None:
    """Wait for an operation to end: exit 0 if it succeeded, 1 if not."""
    with _api_errors(), _client(url, token) as kser:
        try:
            op = kser.wait(operation_id, timeout=timeout)
        except TimeoutError as exc:
            click.echo(f"kser: {exc}", err=True)
            raise SystemExit(EXIT_TIMEOUT) from None
    if as_json:
        _print_json(op)
    else:
        click.echo(f"{op['id']} {op['status']}")
    _exit_after_wait(op)


def _control_command(name: str, help_text: str, with_task: bool) -> None:
    def run(url: str, token: str | None, as_json: bool, operation_id: str,
            task: str | None = None) -> None:
        with _api_errors(), _client(url, token) as kser:
            method = getattr(kser, name.replace("-", "_"))
            answer = method(operation_id, task) if with_task else method(operation_id)
        _print_json(answer) if as_json else click.echo(answer["message"])

    command: Callable[..., Any] = run
    if with_task:
        command = click.argument("task")(command)
    command = click.argument("operation_id")(command)
    ops.command(name, help=help_text)(_options(command))


_control_command("cancel", "Cancel a running operation (its tasks stop at their next "
                 "checkpoint; pending ones never run).", with_task=False)
_control_command("recover", "Re-run what failed or was canceled in a FAILED operation, and "
                 "what depends on it.", with_task=False)
_control_command("run-from", "Re-run TASK (its name or id) and every task after it.",
                 with_task=True)
_control_command("run-one", "Re-run TASK (its name or id) alone.", with_task=True)


@ops.command()
@click.argument("operation_id")
@click.argument("task")
@click.option("--attempt", type=click.IntRange(min=1), default=None,
              help="Only this attempt's lines.")
@_options
def logs(url: str, token: str | None, as_json: bool, operation_id: str, task: str,
         attempt: int | None) -> None:
    """Print the log lines of TASK (its name or id) of an operation."""
    with _api_errors(), _client(url, token) as kser:
        lines = kser.logs(operation_id, task, attempt=attempt)
    if as_json:
        _print_json(lines)
        return
    for line in lines:
        click.echo(f"{_when(line['at'])} {line['level']:<8} [attempt {line['attempt']}] "
                   f"{line['message']}")
    if not lines:
        click.echo("no log line", err=True)


@ops.command()
@_options
def entrypoints(url: str, token: str | None, as_json: bool) -> None:
    """List what can be started, with its required parameters."""
    with _api_errors(), _client(url, token) as kser:
        found = kser.entrypoints()
    if as_json:
        _print_json(found)
        return
    table = Table("ENTRYPOINT", "KIND", "REQUIRED", "DOC", box=None)
    for entry in found:
        doc = (entry.get("doc") or "").strip().splitlines()
        table.add_row(_plain(entry["path"]), entry["kind"],
                      _plain(", ".join(entry["required_fields"]) or "-"),
                      _plain(doc[0] if doc else ""))
    _console().print(table)


def _progress_of(ops_by_id: dict[str, dict[str, Any]]) -> Group:
    """A bar per operation: tasks ended out of all, and the tasks running now."""
    progress = Progress(TextColumn("{task.fields[status]}"),
                        TextColumn("{task.description}", markup=False), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[now]}", markup=False))
    for op in ops_by_id.values():
        tasks = op.get("tasks", [])
        running = [t["name"] for t in tasks if t["status"] == "RUNNING"]
        progress.add_task(f"{op['id'][:8]} {op['entrypoint'].rsplit('.', 1)[-1]}",
                          total=len(tasks) or 1,
                          completed=sum(t["status"] in FINAL_STATUSES for t in tasks),
                          status=_status(op["status"]).markup,
                          now=", ".join(running) if running else "")
    return Group(progress)


@ops.command()
@click.argument("operation_ids", nargs=-1)
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between two refreshes.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Stop watching after this many seconds (exit status 3).")
@_options
def watch(url: str, token: str | None, as_json: bool, operation_ids: tuple[str, ...],
          interval: float, timeout: float | None) -> None:
    """Watch operations live: a bar per operation with its running tasks.

    Without OPERATION_IDS, the RUNNING operations (and those started meanwhile). Ends
    when every watched operation ended: exit 0 if all succeeded, 1 if not.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    watched: dict[str, dict[str, Any]] = {}
    console = _console()
    with _api_errors(), _client(url, token) as kser:
        def refresh() -> None:
            ids = set(operation_ids) or {op["id"] for op in kser.list(status="RUNNING")}
            for op_id in ids | {i for i, op in watched.items()
                                if op["status"] not in FINAL_STATUSES}:
                watched[op_id] = kser.get(op_id)

        def running() -> bool:
            return any(op["status"] not in FINAL_STATUSES for op in watched.values()) and (
                deadline is None or time.monotonic() < deadline)

        refresh()
        if as_json:  # nothing but the JSON on stdout
            while running():
                time.sleep(interval)
                refresh()
        else:
            with Live(_progress_of(watched), console=console, auto_refresh=False) as live:
                while running():
                    time.sleep(interval)
                    refresh()
                    live.update(_progress_of(watched), refresh=True)
    if as_json:
        _print_json(list(watched.values()))
    if not watched:
        click.echo("no running operation", err=True)
    if any(op["status"] not in FINAL_STATUSES for op in watched.values()):
        raise SystemExit(EXIT_TIMEOUT)
    raise SystemExit(_exit_for([op["status"] for op in watched.values()]))
