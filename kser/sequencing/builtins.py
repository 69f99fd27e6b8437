"""Built-in tasks: call a Python function, run a command, call an HTTP endpoint.

(Their public home is :mod:`kser.tasks`, which is also their routing path; they live in
the engine's package, which looks them up for the operations it runs.)

    from kser.tasks import HttpTask, PythonTask, ShellTask

    class Nightly(Operation):
        def build_tasks(self, **kwargs):
            return [PythonTask(reports.extract, "2026-11-22", name="extract"),
                    ShellTask(["pg_dump", "-f", "/backups/db.sql"], timeout=600),
                    HttpTask("POST", "https://jobs.example/api/run", json={"job": "etl"})]

What each one does is written in the store when its operation is built (the
function's import path, the command, the request), and read from there when it
runs: a Kafka message never chooses what they call. So they run only as tasks of
an operation; a message naming one alone is refused. Every registry knows them.

The options of the task itself (``name``, ``trigger_rule``) are keyword arguments
of each constructor, next to what is called.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser import metrics
from kser.schemas import KSER_METADATA_KEY
from kser.sequencing.task import Task

#: the most characters of a command's or a response's output kept in the result (the end)
MAX_OUTPUT = 64_000
#: what a constructor takes for the task itself rather than for what it calls
_TASK_OPTIONS = ("uuid", "params", "status", "result", "metadata", "name", "trigger_rule")


class _BuiltIn(Task):
    """A built-in task: its params say what to call; it runs only inside an operation."""

    def __init__(self, call: dict[str, Any] | None = None, **options: Any) -> None:
        unknown = set(options) - set(_TASK_OPTIONS)
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword arguments: "
                            f"{', '.join(sorted(unknown))}")
        if call is not None:
            options["params"] = {**call, **(options.get("params") or {})}
        super().__init__(**options)

    def _prerun(self) -> None:
        if not self.metadata.get(KSER_METADATA_KEY, {}).get("task_id"):
            raise ValidationError(
                f"{type(self).path} runs only as a task of an operation (what it calls is "
                "read from the store, never from a message): build it in an Operation")
        super()._prerun()


class PythonTask(_BuiltIn):
    """Call a module-level function with ``args`` and ``kwargs`` (JSON values); its return
    value becomes the result's ``retval`` (a dict as it is, anything else as
    ``{"return": value}``; a ``Result`` as it is)."""

    def __init__(self, func: Callable[..., Any] | None = None, *args: Any, **kwargs: Any
                 ) -> None:
        options = {key: kwargs.pop(key) for key in _TASK_OPTIONS if key in kwargs}
        call = None
        if func is not None:
            call = dict(function=_import_path(func), args=list(args), kwargs=kwargs)
        super().__init__(call, **options)

    def run(self) -> Result:
        func = _load(self.params["function"])
        value = func(*self.params.get("args", []), **self.params.get("kwargs", {}))
        if isinstance(value, Result):
            return value
        retval = value if isinstance(value, dict) else {"return": value}
        return Result(uuid=self.uuid, stdout=f"{self.params['function']} returned",
                      retval=retval)


class ShellTask(_BuiltIn):
    """Run a command: an argv list (a string only with ``shell=True``). Its exit code,
    stdout and stderr (their last 64,000 characters) go into the result; a non-zero exit
    fails the task (retcode 500, ``retval["exit_code"]``). With ``timeout`` seconds, the
    command and every process it started are killed then, and the task fails (504).

    :param env: variables added to the worker's environment
    :param cwd: the working directory
    """

    def __init__(self, command: Sequence[str] | str | None = None, env: Mapping[str, str] |
                 None = None, cwd: str | None = None, timeout: float | None = None,
                 shell: bool = False, **options: Any) -> None:
        call = None
        if command is not None:
            if isinstance(command, str) and not shell:
                raise ValidationError(
                    f"ShellTask({command!r}): a command is an argv list, e.g. "
                    f"{command.split()!r}; pass shell=True to have a shell read a string")
            call = dict(command=command if isinstance(command, str) else list(command),
                        env=dict(env or {}), cwd=cwd, timeout=timeout, shell=shell)
        super().__init__(call, **options)

    def run(self) -> Result:
        params = self.params
        process = subprocess.Popen(
            params["command"], shell=bool(params.get("shell")), cwd=params.get("cwd"),
            env={**metrics.child_environment(), **(params.get("env") or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True)
        timeout = params.get("timeout")
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the command and what it started
            out, err = process.communicate()
            return Result(uuid=self.uuid, retcode=504, stdout=out[-MAX_OUTPUT:], stderr=(
                f"{_shown(params['command'])} killed after its {timeout:g} s timeout; "
                f"{err[-MAX_OUTPUT:]}"), retval={"exit_code": None})
        if process.returncode != 0:
            return Result(uuid=self.uuid, retcode=500, stdout=out[-MAX_OUTPUT:], stderr=(
                f"{_shown(params['command'])} exited with {process.returncode}: "
                f"{err[-MAX_OUTPUT:]}"), retval={"exit_code": process.returncode})
        return Result(uuid=self.uuid, stdout=out[-MAX_OUTPUT:], stderr=err[-MAX_OUTPUT:],
                      retval={"exit_code": 0})


class HttpTask(_BuiltIn):
    """Call an HTTP endpoint (with ``requests``: ``pip install 'kser[http]'``).

    A response whose status is in ``ok_statuses`` succeeds, with ``retval`` ``{"status",
    "json"}`` (the decoded body, or None) and the body's text in stdout; any other status
    fails the task with that status as retcode (so a 5xx is retried per ``MAX_RETRIES``, a
    4xx is not), and a connection error or a timeout is retried as any exception is.
    """

    #: HttpTask retries 5xx responses and connection errors twice by default
    MAX_RETRIES = 2

    def __init__(self, method: str | None = None, url: str | None = None,
                 json: Any = None, headers: Mapping[str, str] | None = None,
                 ok_statuses: Sequence[int] = (200, 201, 202, 204), timeout: float = 30.0,
                 **options: Any) -> None:
        call = None
        if method is not None:
            if not url:
                raise ValidationError("HttpTask needs a url")
            call = dict(method=method.upper(), url=url, json=json, headers=dict(headers or {}),
                        ok_statuses=list(ok_statuses), timeout=timeout)
        super().__init__(call, **options)

    def run(self) -> Result:
        try:
            import requests
        except ImportError:
            raise ImportError("HttpTask needs requests: pip install 'kser[http]'") from None
        params = self.params
        response = requests.request(params["method"], params["url"], json=params.get("json"),
                                    headers=params.get("headers") or None,
                                    timeout=params.get("timeout", 30.0))
        try:
            body = response.json()
        except ValueError:
            body = None
        said = f"{params['method']} {params['url']} answered {response.status_code}"
        if response.status_code not in params.get("ok_statuses", [200]):
            return Result(uuid=self.uuid,
                          retcode=response.status_code if response.status_code >= 300 else 502,
                          stderr=f"{said}, not one of {params['ok_statuses']}: "
                                 f"{response.text[:2000]}",
                          retval={"status": response.status_code, "json": body})
        return Result(uuid=self.uuid, stdout=f"{said}: {response.text[-MAX_OUTPUT:]}",
                      retval={"status": response.status_code, "json": body})


#: the built-in tasks every registry knows
BUILT_INS: tuple[type[Task], ...] = (PythonTask, ShellTask, HttpTask)
for _cls in BUILT_INS:  # their routing path (what stored operations name) is their
    _cls.__module__ = "kser.tasks"  # public home's, kser.tasks, which re-exports them


def _import_path(func: Callable[..., Any]) -> str:
    """``module:qualname`` of a module-level function; a clear error for anything else."""
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    if not module or "<" in qualname or module == "__main__":
        raise ValidationError(
            f"PythonTask needs a function importable by every worker, defined at the top "
            f"level of a module (not a lambda, a nested function or __main__): got {func!r}")
    if _load(f"{module}:{qualname}") is not func:
        raise ValidationError(f"PythonTask: {module}:{qualname} does not lead back to {func!r}")
    return f"{module}:{qualname}"


def _load(path: str) -> Callable[..., Any]:
    module, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    loaded: Callable[..., Any] = target
    return loaded


def _shown(command: Sequence[str] | str) -> str:
    return command if isinstance(command, str) else " ".join(command)
