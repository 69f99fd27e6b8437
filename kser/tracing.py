"""OpenTelemetry spans kser makes itself (``pip install 'kser[otel]'``), whose context
travels in the Kafka record headers, so that one operation is one trace across
workers.

Spans (made when the OpenTelemetry API is installed and a tracer provider is set: by
the application, by ``opentelemetry-instrument``, or by ``kser worker --tracing``):

``send <topic>`` (PRODUCER)
    a record produced: a message sent (``BaseProducer.send``, ``bulk_send``) or an
    outbox message (an operation's next task, a retry, a poke, a sub-operation's end, an
    exit notification). Its context goes into the record's headers as the W3C trace
    context (``traceparent``, ``tracestate``; baggage is not carried). An outbox
    message is produced under the context of what queued it, which the outbox keeps
    with it (``kser_outbox.trace_context``), so a retry sent later by a sweep is still
    in its operation's trace.
``process <topic>`` (CONSUMER)
    a record a worker handles, child of the context its headers carry.
``start <operation entrypoint>``
    an operation stored and its first tasks queued (child of its record's span, or of
    the caller's, e.g. an API request's).
``run <task entrypoint>``
    one attempt of a task, child of its record's span; the current span while its body
    runs (spans the task makes are its children). Attributes ``kser.entrypoint``,
    ``kser.operation_id``, ``kser.task_id``, ``kser.task_name``, ``kser.attempt``,
    ``kser.worker``, ``kser.status``; status ERROR when the attempt failed.

So an operation's trace reads: send (producer) > process > start > send > process >
run (task 1) > send > process > run (task 2) ... A sub-operation is in its parent's
trace. A task sent again by a sweep after its worker died (a takeover) starts a new
trace: nothing of the dead worker's span is left.

Header values are read as text (invalid UTF-8 replaced, at most :data:`MAX_HEADER`
characters each) and given to the W3C propagator, which ignores what is not a valid
context: a forged header makes a span's parent wrong, never an error. Nothing here
raises into the work it traces: a failure of tracing (a span processor's, say) is
logged, and the work goes on untraced.

Without the API, or with no tracer provider set, every function here does nothing
beyond one check.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from kser import __version__
from kser.errors import safe_text

if TYPE_CHECKING:
    from kser.record import Record

logger = logging.getLogger(__name__)

__all__ = ["configure", "enabled"]

#: longest header value read as part of a trace context, characters
MAX_HEADER = 1024
#: what ``--tracing`` / ``KSER_TRACING`` accept ("": kser configures nothing)
EXPORTERS = ("", "console", "otlp")

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    #: the W3C trace context, whatever OTEL_PROPAGATORS says: what a record carries is
    #: read by kser's code alone, and a baggage header is not worth its warnings
    _PROPAGATOR = TraceContextTextMapPropagator()
except ImportError:  # (the extra kser[otel] is not installed)
    trace = None  # type: ignore[assignment]

_cached: tuple[Any, Any] | None = None  # (provider, its tracer)
_failed: set[str] = set()


def _untraced(what: str, exc: Exception) -> None:
    """Log that tracing failed (a warning the first time, then at debug level)."""
    level = logging.DEBUG if what in _failed else logging.WARNING
    _failed.add(what)
    logger.log(level, "tracing: %s failed (%s: %s); the work goes on untraced", what,
               type(exc).__name__, exc)


def enabled() -> bool:
    """True when spans are recorded: the API is installed and a tracer provider set."""
    return trace is not None and not isinstance(trace.get_tracer_provider(),
                                                trace.ProxyTracerProvider)


def _tracer() -> Any:
    global _cached
    provider = trace.get_tracer_provider()
    if _cached is None or _cached[0] is not provider:
        _cached = (provider, provider.get_tracer("kser", __version__))
    return _cached[1]


def configure(exporter: str, service_name: str = "kser") -> Any:
    """Set the process's tracer provider (the SDK's) exporting to ``exporter``:
    ``console`` (one JSON object per span on stdout) or ``otlp`` (OTLP over HTTP, to
    ``OTEL_EXPORTER_OTLP_ENDPOINT``); "" sets nothing. Returns the provider (to shut it
    down, flushing the spans), or None.

    :raises ValueError: an unknown exporter, or what it needs is not installed
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}: {', '.join(filter(None, EXPORTERS))}"
                         " or empty")
    if not exporter:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ValueError("tracing needs the OpenTelemetry SDK: pip install "
                         "'kser[otel]'") from None
    if exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ValueError("the otlp exporter needs opentelemetry-exporter-otlp-proto-http"
                             ": pip install 'kser[otel]'") from None
        span_exporter: Any = OTLPSpanExporter()
    else:
        span_exporter = ConsoleSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    return provider


# -- contexts ------------------------------------------------------------------------

def from_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> Any:
    """The context a record's headers carry (None: none, or tracing is off)."""
    if not headers or not enabled():
        return None
    try:
        fields = _PROPAGATOR.fields
        carrier = {name: bytes(value[:MAX_HEADER]).decode("utf-8", "replace")
                   for name, value in headers
                   if isinstance(name, str) and name in fields
                   and isinstance(value, bytes | bytearray)}
        return _PROPAGATOR.extract(carrier) if carrier else None
    except Exception as exc:
        _untraced("reading a record's trace context", exc)
        return None


def current_carrier() -> str | None:
    """The current context, as what the outbox keeps (JSON of the W3C fields); None when
    there is none (or tracing is off)."""
    if not enabled():
        return None
    try:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return json.dumps(carrier, separators=(",", ":")) if carrier else None
    except Exception as exc:
        _untraced("keeping the trace context", exc)
        return None


def _from_carrier(text: str | None) -> Any:
    """The context a :func:`current_carrier` text holds (None: none, or not readable)."""
    if not text or len(text) > 4 * MAX_HEADER:
        return None
    try:
        carrier = json.loads(text)
        if not isinstance(carrier, dict):
            return None
        return _PROPAGATOR.extract({str(k): str(v)[:MAX_HEADER] for k, v in carrier.items()})
    except Exception:  # (a stored text that is not one: no parent)
        return None


@contextmanager
def activated(text: str | None) -> Iterator[None]:
    """Within the block, the context ``text`` (a :func:`current_carrier`) is current
    (nothing changes without one)."""
    with current(_from_carrier(text) if text and enabled() else None):
        yield


@contextmanager
def current(context: Any) -> Iterator[None]:
    """Within the block, ``context`` (e.g. a record's span's) is current (nothing changes
    when it is None)."""
    token = None
    if context is not None:
        try:
            token = otel_context.attach(context)
        except Exception as exc:
            _untraced("making a context current", exc)
    try:
        yield
    finally:
        if token is not None:
            otel_context.detach(token)


# -- spans ---------------------------------------------------------------------------

def produce_headers(topic: str, parent: str | None = None, *, current: bool = False
                    ) -> list[tuple[str, bytes]]:
    """A ``send <topic>`` span (child of ``parent``, a :func:`current_carrier`, or with
    ``current`` of the current context), and the headers carrying its context."""
    if not enabled():
        return []
    context = None if current else _from_carrier(parent)
    if context is None and not current:
        return []  # (a message queued outside any trace starts none)
    try:
        span = _tracer().start_span(f"send {topic}", context=context,
                                    kind=SpanKind.PRODUCER,
                                    attributes={"messaging.system": "kafka",
                                                "messaging.operation.type": "send",
                                                "messaging.destination.name": topic})
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        span.end()
    except Exception as exc:
        _untraced("a send span", exc)
        return []
    return [(name, value.encode()) for name, value in carrier.items()]


@contextmanager
def consuming(records: Sequence[Record], group: str | None, worker: str
              ) -> Iterator[list[Any]]:
    """A ``process <topic>`` span per record, open while they are handled; yields the
    context of each (None: tracing off), to give the spans of what they run a parent."""
    if not enabled():
        yield [None] * len(records)
        return
    with ExitStack() as spans:
        contexts: list[Any] = []
        try:
            for record in records:
                attributes: dict[str, Any] = {
                    "messaging.system": "kafka", "messaging.operation.type": "process",
                    "messaging.destination.name": record.topic,
                    "messaging.destination.partition.id": str(record.partition),
                    "messaging.kafka.offset": record.offset, "kser.worker": worker}
                if group:
                    attributes["messaging.consumer.group.name"] = group
                # (not made current: each record's span is the parent of its own work
                # only; a record without a context starts a trace of its own)
                made = _tracer().start_span(
                    f"process {record.topic}",
                    context=from_headers(record.headers) or otel_context.Context(),
                    kind=SpanKind.CONSUMER, attributes=attributes)
                spans.callback(made.end)
                contexts.append(trace.set_span_in_context(made))
        except Exception as exc:
            _untraced("a process span", exc)
            contexts += [None] * (len(records) - len(contexts))
        yield contexts


@contextmanager
def span(name: str, parent: Any = None, attributes: Mapping[str, Any] | None = None
         ) -> Iterator[Any]:
    """A span current within the block, child of ``parent`` (a context, e.g. a record's)
    or of the current one; yields it (None: tracing off). An exception escaping the
    block is recorded on it."""
    if not enabled():
        yield None
        return
    try:
        opened = _tracer().start_as_current_span(name, context=parent,
                                                 attributes=dict(attributes or {}))
        made = opened.__enter__()
    except Exception as exc:
        _untraced(f"a span {name!r}", exc)
        yield None
        return
    # (an exception of the block is recorded on the span, and raised on)
    with ExitStack() as closing:
        closing.push(opened)
        yield made


def ended(made: Any, status: str, error: str | None = None) -> str | None:
    """Say how a span's attempt ended (``kser.status``; ERROR for FAILED); the span's
    context as the outbox keeps it (what the attempt queues is its child)."""
    if made is None:
        return None
    try:
        made.set_attribute("kser.status", str(status))
        if status == "FAILED":
            made.set_status(StatusCode.ERROR, safe_text(error, 500) if error else None)
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(made))
    except Exception as exc:
        _untraced("ending a span", exc)
        return None
    return json.dumps(carrier, separators=(",", ":")) if carrier else None
