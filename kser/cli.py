"""The ``kser`` command: run workers, send messages, try the demo.

Every error is one line on stderr and a non-zero exit status, not a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from cdumay_error import Error as CdumayError
from cdumay_error.types import ValidationError

from kser import __version__, logs, metrics, tracing
from kser.cli_admin import dlq, keygen, purge, store_commands, topics
from kser.cli_common import (
    KserCliError,
    _apply,
    _connection_options,
    _kafka_errors,
    _store_name,
    _transport,
)
from kser.config import Settings
from kser.controller import Controller
from kser.errors import StoreError, kafka_client_errors
from kser.metrics import MetricsServer, MetricsUnavailableError
from kser.ops_cli import ops
from kser.schemas import Message, load_json
from kser.sequencing.registry import OperationRegistry
from kser.status import FINAL_STATUSES, Status

if TYPE_CHECKING:
    from kser.entry import Entrypoint
    from kser.store import Store

#: the store of ``kser demo``, in the state folder ``.kser`` of the working directory
DEMO_STORE_URL = "sqlite:///.kser/demo.db"
#: how long `kser send --wait` waits for a SQLite store to appear (its workers create it), s
STORE_APPEARS_WITHIN = 30.0
#: what to do before leaving by os._exit (which skips every exit hook)
_exiting: list[Callable[[], object]] = []






def _load_registry(spec: str) -> Controller:
    target = _load_target(spec)
    if isinstance(target, OperationRegistry):
        return target.controller
    if isinstance(target, Controller):
        return target
    if isinstance(target, type) and issubclass(target, Controller):
        return target()
    raise KserCliError(f"'{spec}' is a {type(target).__name__}, not an OperationRegistry "
                       "or a Controller")


def _load_target(spec: str) -> Any:
    """The object ``MODULE:ATTRIBUTE`` names (the module imported from the working
    directory too)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise KserCliError(f"'{spec}' is not MODULE:REGISTRY (e.g. myapp.tasks:registry)")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise KserCliError(f"cannot import module '{module_name}': {exc}") from None
    except CdumayError as exc:  # e.g. a bad KSER_SECRET_KEYS met while building the registry
        raise KserCliError(f"cannot load '{spec}': {exc.message}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise KserCliError(f"module '{module_name}' has no attribute '{attribute}'") from None




class _Commands(click.Group):
    """kser's commands: a store or configuration error in any of them is one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StoreError as exc:
            raise KserCliError(str(exc)) from None
        except CdumayError as exc:  # e.g. a ConfigurationError of a setting
            raise KserCliError(exc.message) from None


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="kser")
@click.option("--log-level", default=None, help="Logging level [env KSER_LOG_LEVEL, INFO].")
@click.option("--log-format", type=click.Choice(logs.FORMATS), default=None,
              help="text, or json: one JSON object a line, with the operation, task, "
              "attempt, entrypoint and worker it is about [env KSER_LOG_FORMAT, text].")
@click.option("--tracing", "tracing_to", type=click.Choice(tracing.EXPORTERS[1:]),
              default=None,
              help="Send kser's OpenTelemetry spans to the console (stdout) or over "
              "OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT); needs kser[otel] [env KSER_TRACING].")
@click.pass_context
def main(ctx: click.Context, log_level: str | None, log_format: str | None,
         tracing_to: str | None) -> None:
    """kser: sequence tasks over Apache Kafka."""
    try:
        settings = Settings()
    except CdumayError as exc:
        raise KserCliError(exc.message) from None
    if log_level:
        settings.log_level = log_level
    if log_format:
        settings.log_format = log_format
    if tracing_to:
        settings.tracing = tracing_to
    try:
        logs.configure(settings.log_level, settings.log_format)
    except ValueError as exc:  # (KSER_LOG_FORMAT)
        raise KserCliError(f"KSER_LOG_FORMAT: {exc}") from None
    if settings.log_level.upper() != "DEBUG":
        # kafka-python logs every reconnection attempt; kser reports what matters itself
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        logging.getLogger("confluent_kafka").setLevel(logging.CRITICAL)
    provider = _configure_tracing(settings, f"kser-{ctx.invoked_subcommand or 'cli'}")
    if provider is not None:
        ctx.call_on_close(provider.shutdown)  # (the spans still buffered are exported)
        _exiting.append(lambda: provider.force_flush(5000))
    ctx.obj = settings






@main.command()
@click.argument("registry")
@click.option("--topic", "topics", multiple=True, required=True,
              help="Topic to consume (repeatable).")
@click.option("--group", default=None, help="Consumer group [env KSER_GROUP, kser].")
@click.option("--dlq-topic", default=None,
              help="Dead-letter topic [env KSER_DLQ_TOPIC; default <topic>.dlq].")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Tasks run at once [env KSER_CONCURRENCY, 1].")
@click.option("--shutdown-timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds a stop waits for the tasks in hand [env KSER_SHUTDOWN_TIMEOUT, 30].")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
              help="Seconds to wait for the broker at start [env KSER_CONNECT_TIMEOUT, 15].")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=None,
              help="Serve Prometheus metrics on this port; the workers of a host given the "
              "same port serve their sum (needs kser[prometheus]) [env KSER_METRICS_PORT; "
              "0: none].")
@_connection_options
@click.pass_obj
def worker(settings: Settings, registry: str, topics: tuple[str, ...], group: str | None,
           dlq_topic: str | None, concurrency: int | None, shutdown_timeout: float | None,
           timeout: float | None, metrics_port: int | None, transport: str | None,
           bootstrap_servers: str | None) -> None:
    """Consume TOPIC(s) and run each message through REGISTRY (MODULE:ATTRIBUTE).

    SIGTERM or SIGINT: tasks in hand finish and are committed, then exit 0; if they
    are not done within --shutdown-timeout, or at a second SIGTERM/SIGINT, exit 1
    without committing them (another worker redoes them).
    SIGUSR1 pauses (no new task; the partitions are kept), SIGUSR2 resumes.
    Before it starts, the worker checks its store and creates its topics and their
    dead-letter topics if they do not exist (KSER_PARTITIONS partitions).
    """
    from kser.worker import WorkerStartError

    settings = _apply(settings, group=group, dlq_topic=dlq_topic, transport=transport,
                      bootstrap_servers=bootstrap_servers, concurrency=concurrency,
                      shutdown_timeout=shutdown_timeout, connect_timeout=timeout,
                      metrics_port=metrics_port)
    # (before the registry's module is imported: it may import prometheus-client)
    metrics_dir = _enable_metrics(settings)
    controller = _load_registry(registry)
    module = _transport(settings.transport)
    consumer_module = importlib.import_module(f"{module.__name__}.consumer")
    config = settings.client_config(settings.group)
    with _kafka_errors(settings):
        consumer = consumer_module.Consumer(config, list(topics), settings=settings)
        consumer.REGISTRY = controller
        logs.set_process_fields(worker=consumer.name)
        server = _serve_metrics(settings, controller, metrics_dir)
        try:
            consumer.run()
        except (WorkerStartError, StoreError) as exc:
            raise KserCliError(f"worker not started: {exc} (Kafka at {settings.bootstrap_servers}"
                               f", store {_store_name(settings.store_url)})") from None
        finally:
            if server is not None:
                server.close()
                metrics.process_ended()
    if consumer.fatal is not None:
        click.echo(f"kser: worker stopped: {consumer.fatal}", err=True)
    if consumer.abandoned:
        # the abandoned task threads never end: leave without waiting for them
        for flush in _exiting:  # (spans still buffered: no exit hook runs after os._exit)
            flush()
        logging.shutdown()
        sys.stderr.flush()
        os._exit(consumer.exit_code)
    sys.exit(consumer.exit_code)


def _configure_tracing(settings: Settings, service: str) -> Any:
    """Set up the OpenTelemetry SDK as ``settings.tracing`` says; its provider, or None."""
    try:
        return tracing.configure(settings.tracing,
                                 os.environ.get("OTEL_SERVICE_NAME") or service)
    except ValueError as exc:
        raise KserCliError(f"KSER_TRACING={settings.tracing}: {exc}") from None


@main.command()
@click.argument("registry")
@click.option("--schedules", "schedules_file", default=None, metavar="FILE",
              help="A TOML file of [[schedule]] tables, run with the registry's own.")
@click.option("--once", is_flag=True, help="One pass (launch what is due), then exit.")
@_connection_options
@click.pass_obj
def scheduler(settings: Settings, registry: str, schedules_file: str | None, once: bool,
              transport: str | None, bootstrap_servers: str | None) -> None:
    """Launch the operations of REGISTRY's schedules (MODULE:ATTRIBUTE, an
    OperationRegistry: @registry.schedule) and of --schedules FILE at their cron times.

    Run two for availability: each fire is launched once (its idempotency key is made
    from the schedule and the fire's time). SIGTERM or SIGINT stops it.
    """
    import signal
    import socket
    import threading

    from kser.sequencing.schedules import Scheduler, load_schedules

    target = _load_target(registry)
    if not isinstance(target, OperationRegistry):
        raise KserCliError(f"'{registry}' is a {type(target).__name__}, not an "
                           "OperationRegistry (schedules belong to a registry)")
    # (the registry's own settings, as its workers', with what the command line says)
    settings = _apply(target.settings, transport=transport, bootstrap_servers=bootstrap_servers)
    try:
        schedules = list(target.schedules)
        if schedules_file:
            schedules += load_schedules(schedules_file)
        runner = Scheduler(target, schedules, name=f"{socket.gethostname()}:{os.getpid()}")
    except ValueError as exc:
        raise KserCliError(str(exc)) from None
    if not schedules:
        raise KserCliError(f"no schedule: declare some with @registry.schedule(...) in "
                           f"{registry}, or give --schedules FILE")
    logs.set_process_fields(worker=runner.name)
    with _kafka_errors(settings):
        if once:
            try:
                runner.tick()
            except StoreError as exc:
                raise KserCliError(f"scheduler: {exc}") from None
            if runner.failures:
                raise KserCliError(f"scheduler: {', '.join(runner.failures)}: a fire could "
                                   "not be launched (the log says why)")
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        runner.run(stop)
    logging.getLogger("kser.sequencing.schedules").info("%s: stopped", runner.name)


def _enable_metrics(settings: Settings) -> str | None:
    """Count metrics in this worker if a metrics port is set; the directory its samples
    share with the other workers of this host serving that port."""
    if not settings.metrics_port:
        return None
    directory = settings.metrics_dir or metrics.default_directory(settings.metrics_port)
    try:
        metrics.enable(directory)
    except (MetricsUnavailableError, OSError) as exc:
        raise KserCliError(f"--metrics-port {settings.metrics_port}: {exc}") from None
    return directory


def _serve_metrics(settings: Settings, controller: Controller, directory: str | None
                   ) -> MetricsServer | None:
    """Serve the metrics (and the store's gauges, if the worker runs operations)."""
    if directory is None:
        return None
    sequencer = controller.sequencer
    store = (lambda: sequencer.store) if sequencer is not None else None
    server = MetricsServer(settings.metrics_port, settings.metrics_host, store)
    try:
        server.start()
    except OSError as exc:
        raise KserCliError(f"--metrics-port {settings.metrics_port}: the port cannot be bound "
                           f"on {settings.metrics_host} ({exc}): choose another one") from None
    return server


@main.command()
@click.argument("entrypoint")
@click.option("--topic", required=True, help="Topic to send to.")
@click.option("--params", default="{}", help="Parameters as a JSON object.")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True,
              help="Messages to send (each its own uuid).")
@click.option("--registry", "registry_spec", default=None, metavar="MODULE:ATTR",
              help="Check ENTRYPOINT and its required params against this registry first.")
@click.option("--wait", is_flag=True,
              help="Wait until the operation(s) ended (in the store workers use, "
                   "KSER_STORE_URL) and print how; exit 1 unless all succeeded.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds the whole command may take: reaching the broker (at most "
                   "KSER_CONNECT_TIMEOUT, 15), the acknowledgement and the --wait.")
@_connection_options
@click.pass_obj
def send(settings: Settings, entrypoint: str, topic: str, params: str, count: int,
         registry_spec: str | None, wait: bool, timeout: float, transport: str | None,
         bootstrap_servers: str | None) -> None:
    """Send a message for ENTRYPOINT (e.g. myapp.tasks.Resize) and print its uuid.

    A TOPIC that does not exist is created with KSER_PARTITIONS partitions.
    """
    started = time.monotonic()
    settings = _apply(settings, transport=transport, bootstrap_servers=bootstrap_servers)
    settings.connect_timeout = min(settings.connect_timeout, timeout)
    try:
        decoded = load_json(params, "--params")
    except ValidationError as exc:
        raise KserCliError(exc.message) from None
    if not isinstance(decoded, dict):
        raise KserCliError("--params must be a JSON object, e.g. '{\"name\": \"x\"}'")
    if registry_spec is not None:
        known = _check_entrypoint(_load_registry(registry_spec), registry_spec, entrypoint,
                                  decoded)
        from kser.sequencing.operation import Operation

        if wait and not issubclass(known, Operation):
            raise KserCliError(f"--wait waits for operations, and {entrypoint} is a "
                               f"{known.__mro__[1].__name__}: nothing of it is stored")
    module = _transport(settings.transport)
    producer_module = importlib.import_module(f"{module.__name__}.producer")
    try:
        producer = producer_module.Producer(settings.producer_config())
    except kafka_client_errors() as exc:
        raise KserCliError(f"cannot reach Kafka at {settings.bootstrap_servers} within "
                           f"{settings.connect_timeout:g} s ({exc}): is the broker running "
                           "and reachable? (KSER_BOOTSTRAP_SERVERS, --bootstrap-servers; "
                           "scripts/kafka-local start prints the export line)") from None
    kmsgs = [Message(uuid=str(uuid.uuid4()), entrypoint=entrypoint, params=decoded)
             for _ in range(count)]
    remaining = max(0.1, timeout - (time.monotonic() - started))
    result = producer.bulk_send(topic, kmsgs, timeout=remaining)
    producer.close()
    if result.retcode >= 300:
        raise KserCliError(f"not sent: {result.stderr}")
    if not wait:
        for kmsg in kmsgs:
            click.echo(kmsg.uuid)
        return
    ended = _wait_for_operations(settings, [k.uuid for k in kmsgs],
                                 started + timeout - time.monotonic())
    for kmsg in kmsgs:
        click.echo(f"{kmsg.uuid} {ended.get(kmsg.uuid, 'NOT ENDED')}")
    if len(ended) < len(kmsgs):
        raise KserCliError(
            f"{len(kmsgs) - len(ended)} operation(s) did not end within {timeout:g} s (--timeout)"
            f" in the store {_store_name(settings.store_url)}: are workers running on "
            f"{topic} with this store (KSER_STORE_URL), and is {entrypoint} an operation?")
    if any(status != Status.SUCCESS for status in ended.values()):
        sys.exit(1)


def _wait_for_operations(settings: Settings, ids: list[str], timeout: float) -> dict[str, str]:
    """The final status of each operation of ``ids`` that ended within ``timeout``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from kser.errors import WorkerFatalError
    from kser.store import Store

    url = make_url(settings.store_url)
    if url.get_backend_name() == "sqlite" and url.database and \
            not url.database.startswith("file:"):
        # workers started just before (in the background) create it as they start
        grace = min(timeout, STORE_APPEARS_WITHIN)
        deadline = time.monotonic() + grace
        while not os.path.exists(url.database):
            if time.monotonic() >= deadline:
                raise KserCliError(
                    f"--wait reads the store the workers use, and "
                    f"{_store_name(settings.store_url)} does not exist (waited {grace:.0f} s "
                    "for a worker to create it): set KSER_STORE_URL to theirs")
            time.sleep(0.1)
    try:
        return _poll_operations(Store(settings.store_url), ids, timeout)
    except (SQLAlchemyError, WorkerFatalError) as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise KserCliError(f"--wait: the store {_store_name(settings.store_url)} failed: "
                           f"{reason}") from None


def _poll_operations(store: Store, ids: list[str], timeout: float) -> dict[str, str]:
    ended: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    try:
        while True:
            with store.transaction() as tx:
                for op_id in ids:
                    op = None if op_id in ended else tx.get_operation(op_id)
                    if op is not None and op.status in FINAL_STATUSES:
                        ended[op_id] = op.status
            if len(ended) == len(ids) or time.monotonic() >= deadline:
                return ended
            time.sleep(0.2)
    finally:
        store.close()


def _check_entrypoint(controller: Controller, spec: str, entrypoint: str,
                      params: dict[str, Any]) -> type[Entrypoint]:
    """The class of ``entrypoint`` in ``controller``; refuse an entrypoint it does not
    know, or params it would refuse."""
    known = controller.ENTRYPOINTS.get(entrypoint)
    if known is None:
        close = difflib.get_close_matches(entrypoint, list(controller.ENTRYPOINTS), n=3)
        raise KserCliError(
            f"{entrypoint} is not registered in {spec}"
            + (f"; did you mean {' or '.join(close)}?" if close else
               f" (it has: {', '.join(sorted(controller.ENTRYPOINTS)) or 'nothing'})"))
    missing = [name for name in known.REQUIRED_FIELDS if name not in params]
    if missing:
        raise KserCliError(f"{entrypoint} requires the param(s) {', '.join(missing)}: give "
                           f"them in --params")
    return known


































@main.command()
@click.option("--dice", default=3, show_default=True, help="Dice to roll.")
@click.option("--store-url", default=None,
              help=f"Store [default {DEMO_STORE_URL}, in the state folder .kser].")
def demo(dice: int, store_url: str | None) -> None:
    """Run the dice example end to end in this process (no broker needed)."""
    from kser.demo import run_demo

    store_url = store_url or DEMO_STORE_URL
    operation = run_demo(dice, store_url)
    click.echo(f"\nOperation {operation['entrypoint']}[{operation['id']}]: {operation['status']}")
    for task in operation["tasks"]:
        result = task["result"] or {}
        click.echo(f"  task {task['position'] + 1} {task['entrypoint']}[{task['id']}]: "
                   f"{task['status']} (attempt {task['attempt']}, worker {task['worker']}): "
                   f"{result.get('stdout', '')}")
    rolls = (operation["result"] or {}).get("retval", {}).get("rolls", [])
    click.echo(f"rolled {len(rolls)} dice: {', '.join(map(str, rolls))} (total {sum(rolls)})")
    click.echo(f"state kept in {_store_name(store_url)}: the operation, its "
               "tasks, their attempts and results (kser purge --store-url ... clears "
               "finished ones)")
    if operation["status"] != Status.SUCCESS:
        sys.exit(1)


def _wsgi_app(spec: str) -> Any:
    """The app ``kser serve`` runs: a Flask app as it is (it hosts the registry with
    ``registry.init_app``), or an OperationRegistry's own (:func:`kser.web.create_app`)."""
    from flask import Flask

    from kser.web import create_app

    target = _load_target(spec)
    if isinstance(target, Flask):
        return target
    if isinstance(target, OperationRegistry):
        return create_app(target)
    raise KserCliError(f"'{spec}' is a {type(target).__name__}, not an OperationRegistry "
                       "or a Flask app")


def _check_app(spec: str) -> None:
    """Build the app of ``spec`` once in a child process, to say in one line what is
    wrong (a module that does not import, a name that is not there, no token) before
    any server process starts. Not here: what a module opens when imported (a store's
    pool, a Kafka client) must not be inherited by the server processes forked from
    this one, which each import it themselves."""
    code = ("import sys\nfrom kser.cli import _wsgi_app\ntry:\n    _wsgi_app(sys.argv[1])\n"
            "except Exception as exc:\n    message = getattr(exc, 'format_message', None)\n"
            "    sys.exit(message() if message else f'{type(exc).__name__}: {exc}')\n")
    try:
        checked = subprocess.run([sys.executable, "-c", code, spec], capture_output=True,
                                 text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise KserCliError(f"importing '{spec}' took more than 120 s: does the module "
                           "connect to something at import time?") from None
    if checked.returncode:
        lines = [line for line in checked.stderr.strip().splitlines() if line.strip()]
        raise KserCliError(f"cannot serve '{spec}': {lines[-1] if lines else 'it failed'}")


@main.command()
@click.argument("registry")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="KSER_API_HOST",
              show_envvar=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
              envvar="KSER_API_PORT", show_envvar=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Server processes.")
@click.option("--threads", type=click.IntRange(min=1), default=8, show_default=True,
              help="Threads per process (a request with ?wait= holds one).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log each request (method, path, status; never the token).")
def serve(registry: str, host: str, port: int, workers: int, threads: int,
          access_log: bool) -> None:
    """Serve the REST API of REGISTRY (MODULE:ATTRIBUTE: an OperationRegistry, or a Flask
    app hosting one) on gunicorn, a production WSGI server.

    The API is at /api/v1 (KSER_API_PREFIX), its docs at /api/v1/docs; tokens come from
    KSER_API_TOKENS (role:token,...), and it refuses to start without one unless
    KSER_API_AUTH=none.
    """
    from gunicorn.app.base import BaseApplication

    from kser.web import AuthConfigError
    from kser.web.auth import Tokens

    settings = Settings()
    try:  # refused here, in one line, rather than by each server process failing to boot
        Tokens.from_settings(settings)
    except AuthConfigError as exc:
        raise KserCliError(str(exc)) from None
    _check_app(registry)

    class Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", 3600)  # ?wait= may hold a request long
            # idle keep-alive connections kept 30 s (gunicorn's 2 s would close them
            # under clients polling every second or two)
            self.cfg.set("keepalive", 30)
            self.cfg.set("graceful_timeout", 30)
            self.cfg.set("proc_name", f"kser-serve {registry}")
            if "control_socket_disable" in self.cfg.settings:
                # (gunicorn >= 25 opens $HOME/.gunicorn/gunicorn.ctl: a HOME that is not
                # writable logs an error, and two servers of one user share one path)
                self.cfg.set("control_socket_disable", True)
            if access_log:
                self.cfg.set("accesslog", "-")
                self.cfg.set("access_log_format", '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss')

        def load(self) -> Any:  # in each server process: its own store and Kafka clients
            return _wsgi_app(registry)

    click.echo(f"kser: serving {registry} at http://{host}:{port}"
               f"/{settings.api_prefix.strip('/')} "
               f"({workers} process(es) x {threads} threads)", err=True)
    Server().run()


for _command in (keygen, dlq, purge, store_commands, topics, ops):  # (kser/cli_admin.py)
    main.add_command(_command)


if __name__ == "__main__":
    main()
