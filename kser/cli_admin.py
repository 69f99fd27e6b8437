"""kser's administration commands: ``kser topics``, ``kser dlq``, ``kser store``,
``kser purge``, ``kser keygen`` (added to the ``kser`` group by :mod:`kser.cli`)."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from kser.config import DEFAULT_STORE_URL, Settings
from kser.errors import StoreError, kafka_client_errors

if TYPE_CHECKING:
    from kser.producer import BaseProducer
    from kser.store import Store
    from kser.topics import TopicAdmin, TopicInfo
    from kser.worker import BaseConsumer

from kser.cli_common import (
    F,
    KserCliError,
    _apply,
    _connection_options,
    _kafka_errors,
    _store_name,
    _transport,
)


@click.command()
def keygen() -> None:
    """Print a new random key for KSER_SECRET_KEYS (needs kser[crypto])."""
    from kser.crypto import new_key

    try:
        click.echo(new_key())
    except ImportError:
        raise KserCliError("PyNaCl is not installed: pip install 'kser[crypto]'") from None


@click.group()
def dlq() -> None:
    """Inspect dead-lettered messages and send them back once fixed."""


def _dlq_tools(settings: Settings) -> tuple[Callable[[str, str], BaseConsumer | None],
                                           Callable[[], BaseProducer]]:
    from kser.dlq import clients

    _transport(settings.transport)  # (a clear error for a transport not installed)
    return clients(settings)


def _dlq_store(settings: Settings, store_url: str | None) -> Store | None:
    """The store whose kser_dead_letters table is read too (None: it cannot be opened)."""
    from kser.store import Store

    try:
        return Store(store_url or settings.store_url)
    except StoreError as exc:
        click.echo(f"kser: dead letters in the store not read: {exc}", err=True)
        return None


def _dlq_options(func: F) -> F:
    func = click.option("--store-url", default=None,
                        help="Store whose dead letters are read too "
                             f"[env KSER_STORE_URL, {DEFAULT_STORE_URL}].")(func)
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
        click.echo(f"{letter.where} from "
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


@click.command()
@click.option("--store-url", default=None, help=f"Store [env KSER_STORE_URL, {DEFAULT_STORE_URL}].")
@click.pass_obj
def purge(settings: Settings, store_url: str | None) -> None:
    """Delete finished operations whose retention (TTL_STRATEGY) has expired."""
    from sqlalchemy.exc import SQLAlchemyError

    from kser.store import Store

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


@click.group("store")
def store_commands() -> None:
    """The store of operations: its schema."""


@store_commands.command("migrate")
@click.option("--store-url", default=None,
              help=f"Store [env KSER_STORE_URL, {DEFAULT_STORE_URL}].")
@click.pass_obj
def store_migrate(settings: Settings, store_url: str | None) -> None:
    """Bring the store's schema to this kser's version (workers also do it when they
    start, and log it)."""
    from kser.store import Store

    url = store_url or settings.store_url
    store = Store(url)
    before, after = store.migrated
    store.close()
    if before == after:
        click.echo(f"store {_store_name(url)}: already at schema version {after}")
    else:
        click.echo(f"store {_store_name(url)}: migrated from schema version {before} to "
                   f"{after}")


@click.group()
def topics() -> None:
    """Create and describe topics (partitions, replicas, who reads what)."""


def _admin(settings: Settings) -> TopicAdmin:
    if settings.transport == "memory":
        raise KserCliError("the memory transport lives inside one process: kser topics "
                           "needs a Kafka cluster (--transport kafka or confluent)")
    module = _transport(settings.transport)
    admin_module = importlib.import_module(f"{module.__name__}.admin")
    try:
        admin: TopicAdmin = admin_module.Admin(settings.client_config(),
                                               **settings.admin_options())
        return admin
    except kafka_client_errors() as exc:
        raise KserCliError(f"cannot reach Kafka at {settings.bootstrap_servers} within "
                           f"{settings.connect_timeout:g} s ({exc}): is the broker running "
                           "and reachable?") from None


@topics.command("create")
@click.argument("names", nargs=-1, required=True, metavar="TOPIC...")
@click.option("--partitions", type=click.IntRange(min=1), default=None,
              help="Partitions: how many workers of a group can share each topic "
                   "[env KSER_PARTITIONS, 12].")
@click.option("--replication-factor", type=click.IntRange(min=-1), default=None,
              help="Replicas of each partition (-1: the broker's default) "
                   "[env KSER_REPLICATION_FACTOR, auto: min(3, brokers)].")
@click.option("--min-insync-replicas", type=click.IntRange(min=1), default=None,
              help="Replicas that must hold a record before it is acknowledged "
                   "[env KSER_MIN_INSYNC_REPLICAS, auto: 2 for 3 replicas or more].")
@click.option("--dlq/--no-dlq", default=True, show_default=True,
              help="Create each topic's dead-letter topic too.")
@_connection_options
@click.pass_obj
def topics_create(settings: Settings, names: tuple[str, ...], partitions: int | None,
                  replication_factor: int | None, min_insync_replicas: int | None, dlq: bool,
                  transport: str | None, bootstrap_servers: str | None) -> None:
    """Create TOPIC(s) (and their dead-letter topics) unless they exist."""
    settings = _apply(settings, partitions=partitions, replication_factor=replication_factor,
                      min_insync_replicas=min_insync_replicas, transport=transport,
                      bootstrap_servers=bootstrap_servers)
    wanted = list(dict.fromkeys(
        [*names, *((settings.dlq_for(name) for name in names) if dlq else ())]))
    with _kafka_errors(settings), _admin(settings) as admin:
        created = admin.ensure(wanted)
        infos = admin.describe(wanted, created=created)
    for info in infos:
        state = "created" if info.name in created else "exists"
        line = f"{info.name}: {state}, {_replication(info)}"
        if info.name not in created and len(info.partitions) < settings.partitions:
            line += (f" (fewer than {settings.partitions}: at most {len(info.partitions)} "
                     "worker(s) of a group work on it; Kafka can add partitions: "
                     "kafka-topics.sh --alter --partitions N)")
        click.echo(line)


@topics.command("describe")
@click.argument("names", nargs=-1, required=True, metavar="TOPIC...")
@click.option("--group", default=None, help="Consumer group [env KSER_GROUP, kser].")
@_connection_options
@click.pass_obj
def topics_describe(settings: Settings, names: tuple[str, ...], group: str | None,
                    transport: str | None, bootstrap_servers: str | None) -> None:
    """Show TOPIC(s): partitions, replicas, and per partition the group's owner and lag."""
    from kser.topics import TopicNotFoundError

    settings = _apply(settings, group=group, transport=transport,
                      bootstrap_servers=bootstrap_servers)
    try:
        with _kafka_errors(settings), _admin(settings) as admin:
            infos = admin.describe(list(names), settings.group)
    except TopicNotFoundError as exc:
        raise KserCliError(str(exc)) from None
    for info in infos:
        click.echo(f"{info.name}: {_replication(info)}; group {info.group}: {info.members} "
                   f"member(s), lag {info.lag}")
        for part in info.partitions:
            isr = "-" if part.isr is None else ",".join(map(str, part.isr))
            click.echo(f"  partition {part.partition:>3}: leader {part.leader}, in sync "
                       f"{isr}, end {part.end_offset}, committed "
                       f"{'-' if part.committed is None else part.committed}, lag {part.lag}, "
                       f"owner {part.owner or '-'}")


def _replication(info: TopicInfo) -> str:
    """A topic's partitions and replication, and what is short of it."""
    text = (f"{len(info.partitions)} partition(s), replication factor "
            f"{info.replication_factor}, min.insync.replicas "
            f"{'-' if info.min_insync_replicas is None else info.min_insync_replicas}")
    if info.under_replicated:
        text += (f" ({len(info.under_replicated)} partition(s) under-replicated: a broker is "
                 "down or catching up)")
    if info.min_insync_replicas and info.replication_factor > 1 and \
            info.min_insync_replicas >= info.replication_factor:
        text += " (no replica may be down: any broker's loss stops its partitions' writes)"
    return text
