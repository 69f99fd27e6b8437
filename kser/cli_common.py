"""What kser's commands share: one-line errors, the transport, the connection options."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from kser.config import TRANSPORTS, Settings
from kser.errors import KserError, kafka_client_errors

if TYPE_CHECKING:
    pass

#: a click command function (decorators that add options return it as they got it)
F = TypeVar("F", bound=Callable[..., Any])


class KserCliError(KserError, click.ClickException):
    """An error shown as ``kser: <message>`` with exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"kser: {self.format_message()}", err=True)


def _transport(name: str) -> ModuleType:
    try:
        return importlib.import_module(TRANSPORTS[name])
    except ImportError as exc:
        raise KserCliError(f"transport '{name}' is not installed ({exc}); "
                           f"try: pip install 'kser[{name}]'") from None


@contextmanager
def _kafka_errors(settings: Settings) -> Iterator[None]:
    """A Kafka client error in the block is one line: which broker, what, what to check."""
    try:
        yield
    except kafka_client_errors() as exc:
        raise KserCliError(f"Kafka at {settings.bootstrap_servers} failed: {exc}; is the "
                           "broker running and reachable, are the credentials right?") from None


def _connection_options(func: F) -> F:
    func = click.option("--bootstrap-servers", default=None,
                        help="host:port[,...] [env KSER_BOOTSTRAP_SERVERS, 127.0.0.1:9092].")(func)
    func = click.option("--transport", type=click.Choice(sorted(TRANSPORTS)), default=None,
                        help="Client library [env KSER_TRANSPORT, kafka].")(func)
    return func


def _apply(settings: Settings, **overrides: Any) -> Settings:
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    return settings


def _store_name(url: str) -> str:
    """A store URL as shown to people: without its password."""
    from kser.store.store import _hide_password

    return _hide_password(url)
