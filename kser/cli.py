"""The ``kser`` command: run workers, send messages, try the demo.

Every error is one line on stderr and a non-zero exit status, not a traceback.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import uuid
from contextlib import contextmanager
from types import ModuleType

import click
from cdumay_error import Error as CdumayError

from kser import __version__
from kser.config import TRANSPORTS, Settings
from kser.controller import Controller
from kser.schemas import Message
from kser.sequencing.registry import OperationRegistry

#: log line format of the ``kser`` command (the worker name in messages says which consumer)
LOG_FORMAT = "%(asctime)s %(levelname)-8s %(message)s"


class KserCliError(click.ClickException):
    """An error shown as ``kser: <message>`` with exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"kser: {self.format_message()}", err=True)


def _transport(name: str) -> ModuleType:
    try:
        return importlib.import_module(TRANSPORTS[name])
    except ImportError as exc:
        raise KserCliError(f"transport '{name}' is not installed ({exc}); "
                           f"try: pip install 'kser[{name}]'") from None


def _load_registry(spec: str) -> Controller:
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
        target = getattr(module, attribute)
    except AttributeError:
        raise KserCliError(f"module '{module_name}' has no attribute '{attribute}'") from None
    if isinstance(target, OperationRegistry):
        return target.controller
    if isinstance(target, Controller):
        return target
    if isinstance(target, type) and issubclass(target, Controller):
        return target()
    raise KserCliError(f"'{spec}' is a {type(target).__name__}, not an OperationRegistry "
                       "or a Controller")


def _connection_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = []
    try:
        from kafka.errors import KafkaError
        errors.append(KafkaError)
    except ImportError:  # pragma: no cover - kafka-python is a dependency
        pass
    try:
        from confluent_kafka import KafkaException
        errors.append(KafkaException)
    except ImportError:
        pass
    return tuple(errors)


@contextmanager
def _kafka_errors(settings: Settings):
    """A Kafka client error in the block is one line: which broker, what, what to check."""
    try:
        yield
    except _connection_errors() as exc:
        raise KserCliError(f"Kafka at {settings.bootstrap_servers} failed: {exc}; is the "
                           "broker running and reachable, are the credentials right?") from None


@click.group()
@click.version_option(__version__, prog_name="kser")
@click.option("--log-level", default=None, help="Logging level [env KSER_LOG_LEVEL, INFO].")
@click.pass_context
def main(ctx: click.Context, log_level: str | None) -> None:
    """kser: sequence tasks over Apache Kafka."""
    try:
        settings = Settings()
    except CdumayError as exc:
        raise KserCliError(exc.message) from None
    if log_level:
        settings.log_level = log_level
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    if settings.log_level.upper() != "DEBUG":
        # kafka-python logs every reconnection attempt; kser reports what matters itself
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        logging.getLogger("confluent_kafka").setLevel(logging.CRITICAL)
    ctx.obj = settings


def _connection_options(func):
    func = click.option("--bootstrap-servers", default=None,
                        help="host:port[,...] [env KSER_BOOTSTRAP_SERVERS, 127.0.0.1:9092].")(func)
    func = click.option("--transport", type=click.Choice(sorted(TRANSPORTS)), default=None,
                        help="Client library [env KSER_TRANSPORT, kafka].")(func)
    return func


def _apply(settings: Settings, **overrides) -> Settings:
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    return settings


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
@_connection_options
@click.pass_obj
def worker(settings: Settings, registry: str, topics: tuple[str, ...], group: str | None,
           dlq_topic: str | None, concurrency: int | None, shutdown_timeout: float | None,
           transport: str | None, bootstrap_servers: str | None) -> None:
    """Consume TOPIC(s) and run each message through REGISTRY (MODULE:ATTRIBUTE).

    SIGTERM or SIGINT: tasks in hand finish and are committed, then exit 0; if they
    are not done within --shutdown-timeout, or at a second SIGTERM/SIGINT, exit 1
    without committing them (another worker redoes them).
    SIGUSR1 pauses (no new task; the partitions are kept), SIGUSR2 resumes.
    Before it starts, the worker checks its store and creates its topics and their
    dead-letter topics if they do not exist (KSER_PARTITIONS partitions).
    """
    from kser.store.store import StoreError
    from kser.worker import WorkerStartError

    settings = _apply(settings, group=group, dlq_topic=dlq_topic, transport=transport,
                      bootstrap_servers=bootstrap_servers, concurrency=concurrency,
                      shutdown_timeout=shutdown_timeout)
    controller = _load_registry(registry)
    module = _transport(settings.transport)
    consumer_module = importlib.import_module(f"{module.__name__}.consumer")
    config = settings.client_config(settings.group)
    with _kafka_errors(settings):
        consumer = consumer_module.Consumer(config, list(topics), settings=settings)
        consumer.REGISTRY = controller
        try:
            consumer.run()
        except (WorkerStartError, StoreError) as exc:
            raise KserCliError(f"worker not started: {exc}") from None
    if consumer.fatal is not None:
        click.echo(f"kser: worker stopped: {consumer.fatal}", err=True)
    if consumer.abandoned:
        # the abandoned task threads never end: leave without waiting for them
        logging.shutdown()
        sys.stderr.flush()
        os._exit(consumer.exit_code)
    sys.exit(consumer.exit_code)


@main.command()
@click.argument("entrypoint")
@click.option("--topic", required=True, help="Topic to send to.")
@click.option("--params", default="{}", help="Parameters as a JSON object.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the ack.")
@_connection_options
@click.pass_obj
def send(settings: Settings, entrypoint: str, topic: str, params: str, timeout: float,
         transport: str | None, bootstrap_servers: str | None) -> None:
    """Send one message for ENTRYPOINT (e.g. myapp.tasks.Resize) and print its uuid."""
    settings = _apply(settings, transport=transport, bootstrap_servers=bootstrap_servers)
    try:
        decoded = json.loads(params)
    except ValueError as exc:
        raise KserCliError(f"--params is not valid JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise KserCliError("--params must be a JSON object, e.g. '{\"name\": \"x\"}'")
    module = _transport(settings.transport)
    producer_module = importlib.import_module(f"{module.__name__}.producer")
    config = settings.client_config()
    config["max_message_bytes"] = settings.max_message_bytes
    try:
        producer = producer_module.Producer(config)
    except CdumayError as exc:
        raise KserCliError(exc.message) from None
    except _connection_errors() as exc:
        raise KserCliError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from None
    kmsg = Message(uuid=str(uuid.uuid4()), entrypoint=entrypoint, params=decoded)
    result = producer.send(topic, kmsg, timeout=timeout)
    producer.close()
    if result.retcode >= 300:
        raise KserCliError(result.stderr)
    click.echo(kmsg.uuid)


@main.command()
def keygen() -> None:
    """Print a new random key for KSER_SECRET_KEYS (needs kser[crypto])."""
    from kser.crypto import new_key

    try:
        click.echo(new_key())
    except ImportError:
        raise KserCliError("PyNaCl is not installed: pip install 'kser[crypto]'") from None


@main.group()
def dlq() -> None:
    """Inspect dead-lettered messages and send them back once fixed."""


def _dlq_tools(settings: Settings):
    module = _transport(settings.transport)
    consumer_module = importlib.import_module(f"{module.__name__}.consumer")
    producer_module = importlib.import_module(f"{module.__name__}.producer")

    def make_consumer(group: str, topic: str):
        return consumer_module.Consumer(settings.client_config(group), [topic],
                                        settings=settings)

    def make_producer():
        return producer_module.Producer(settings.client_config())

    return make_consumer, make_producer


def _dlq_store(settings: Settings, store_url: str | None):
    """The store whose kser_dead_letters table is read too (None: it cannot be opened)."""
    from kser.store.store import Store, StoreError

    try:
        return Store(store_url or settings.store_url)
    except StoreError as exc:
        click.echo(f"kser: dead letters in the store not read: {exc}", err=True)
        return None


def _dlq_options(func):
    func = click.option("--store-url", default=None,
                        help="Store whose dead letters are read too "
                             "[env KSER_STORE_URL, sqlite:///kser.db].")(func)
    func = click.option("--wait", default=10.0, show_default=True,
                        help="Seconds without a new record after which the end is reached.")(func)
    func = click.option("--dlq-topic", default=None,
                        help="Dead-letter topic [env KSER_DLQ_TOPIC; default TOPIC.dlq].")(func)
    return _connection_options(func)


@dlq.command("list")
@click.argument("topic")
@_dlq_options
@click.pass_obj
def dlq_list(settings: Settings, topic: str, wait: float, store_url: str | None,
             dlq_topic: str | None, transport: str | None,
             bootstrap_servers: str | None) -> None:
    """List the dead letters of TOPIC (its dead-letter topic, then the store): where,
    source, error, value."""
    from kser.dlq import list_dead_letters

    settings = _apply(settings, dlq_topic=dlq_topic, transport=transport,
                      bootstrap_servers=bootstrap_servers)
    make_consumer, _ = _dlq_tools(settings)
    store = _dlq_store(settings, store_url)
    with _kafka_errors(settings):
        letters = list_dead_letters(make_consumer, settings.dlq_for(topic), wait, store, topic)
    for letter in letters:
        record = letter.record
        where = (f"store #{letter.stored_id}" if letter.stored_id is not None
                 else f"{record.topic}[{record.partition}]@{record.offset}")
        click.echo(f"{where} from "
                   f"{letter.headers.get('kser-source-topic', '?')}"
                   f"[{letter.headers.get('kser-source-partition', '?')}]"
                   f"@{letter.headers.get('kser-source-offset', '?')}: {letter.error}\n"
                   f"    {letter.preview()}")
    click.echo(f"{len(letters)} dead letter(s) in {settings.dlq_for(topic)}"
               + (" and the store" if store is not None else ""))


@dlq.command("replay")
@click.argument("topic")
@_dlq_options
@click.pass_obj
def dlq_replay(settings: Settings, topic: str, wait: float, store_url: str | None,
               dlq_topic: str | None, transport: str | None,
               bootstrap_servers: str | None) -> None:
    """Send the dead letters of TOPIC not replayed yet (from its dead-letter topic and
    the store) back to their source topic."""
    from kser.dlq import replay

    settings = _apply(settings, dlq_topic=dlq_topic, transport=transport,
                      bootstrap_servers=bootstrap_servers)
    make_consumer, make_producer = _dlq_tools(settings)
    store = _dlq_store(settings, store_url)
    with _kafka_errors(settings):
        producer = make_producer()
        letters = replay(make_consumer, producer, settings.dlq_for(topic), topic, wait, store)
        producer.close()
    click.echo(f"replayed {len(letters)} dead letter(s) from {settings.dlq_for(topic)}"
               + (" and the store" if store is not None else ""))


@main.command()
@click.option("--store-url", default=None, help="Store [env KSER_STORE_URL, sqlite:///kser.db].")
@click.pass_obj
def purge(settings: Settings, store_url: str | None) -> None:
    """Delete finished operations whose retention (TTL_STRATEGY) has expired."""
    from sqlalchemy.exc import SQLAlchemyError

    from kser.store import Store
    from kser.store.store import StoreError

    url = store_url or settings.store_url
    try:
        store = Store(url)
        with store.transaction() as tx:
            count = tx.purge(time.time())
        store.close()
    except StoreError as exc:
        raise KserCliError(str(exc)) from None
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise KserCliError(f"the store {url} failed: {reason}") from None
    click.echo(f"purged {count} operation(s)")


@main.command()
@click.option("--dice", default=3, show_default=True, help="Dice to roll.")
@click.option("--store-url", default=None, help="Store [env KSER_STORE_URL, sqlite:///kser.db].")
def demo(dice: int, store_url: str | None) -> None:
    """Run the dice example end to end in this process (no broker needed)."""
    from kser.demo import run_demo

    operation = run_demo(dice, store_url)
    click.echo(f"\nOperation {operation['entrypoint']}[{operation['id']}]: {operation['status']}")
    for task in operation["tasks"]:
        result = task["result"] or {}
        click.echo(f"  task {task['position'] + 1} {task['entrypoint']}[{task['id']}]: "
                   f"{task['status']} (attempt {task['attempt']}, worker {task['worker']}): "
                   f"{result.get('stdout', '')}")
    rolls = (operation["result"] or {}).get("retval", {}).get("rolls", [])
    click.echo(f"rolled {len(rolls)} dice: {', '.join(map(str, rolls))} (total {sum(rolls)})")
    if operation["status"] != "SUCCESS":
        sys.exit(1)


if __name__ == "__main__":
    main()
