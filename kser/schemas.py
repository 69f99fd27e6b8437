"""The wire format: :class:`Message` and its marshmallow schema.

One Kafka record holds one JSON object, compatible both ways with kser 0.8.x::

    {"uuid", "entrypoint", "params", "result": {uuid, retcode, stdout, stderr, retval},
     "metadata"}

kser's own bookkeeping (operation id, task id, attempt...) lives under the
reserved key :data:`KSER_METADATA_KEY` inside ``metadata``, so a message from an
old producer still runs and an old consumer ignores what it does not know.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cdumay_error.types import ValidationError
from cdumay_result import Result, ResultSchema
from marshmallow import EXCLUDE, Schema, fields
from marshmallow import ValidationError as MarshmallowValidationError

from kser.errors import KserError

#: the key of ``metadata`` that kser reserves for its own bookkeeping
KSER_METADATA_KEY = "kser"
#: longest message, operation or task id, characters (the store's id columns)
MAX_ID_LENGTH = 64
#: longest entrypoint name, characters (the store's entrypoint columns)
MAX_ENTRYPOINT_LENGTH = 255
#: the range of a result's retcode and an attempt number (the store's 32-bit integers)
MIN_INT32, MAX_INT32 = -(2 ** 31), 2 ** 31 - 1
#: deepest nesting of objects and arrays a message's params, result or metadata may have
#: (Python's own recursion stops near 1,000 levels: the encoders of the store, of the
#: API's answers and of the next message would fail on a value the decoder took)
MAX_JSON_DEPTH = 100


def dump_result(result: Result | None) -> dict[str, Any] | None:
    """``ResultSchema().dump(result)`` without marshmallow: the dumps of a hop cost more
    than its task (tests/unit/test_sequencing.py checks they agree)."""
    if result is None:
        return None

    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    return dict(uuid=text(result.uuid),
                retcode=None if result.retcode is None else int(result.retcode),
                stdout=text(result.stdout), stderr=text(result.stderr),
                retval=None if result.retval is None else dict(result.retval))


def wire_digest(text: str | bytes | bytearray) -> str:
    """The digest of a message's text as kser wrote it (before sealing): what the store
    keeps of each task message it queues (``kser_tasks.message_digest``), to know a copy
    that was changed (its forwarded result, its params...) from the message itself. (A
    hash of bytes already there: about a microsecond.)"""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _string_keys(value: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else {str(key): item for key, item in value.items()}


class BaseSchema(Schema):
    """Fields every entrypoint message has; unknown fields are ignored."""

    class Meta:
        unknown = EXCLUDE

    uuid = fields.String(required=True)
    entrypoint = fields.String(required=True)
    params = fields.Dict(keys=fields.String(), load_default=dict, dump_default=dict)


class Base:
    """An entrypoint call: ``uuid``, ``entrypoint`` path and ``params``."""

    MARSHMALLOW_SCHEMA: Schema = BaseSchema()

    def __init__(self, uuid: str, entrypoint: str, params: dict[str, Any] | None = None):
        self.uuid = uuid
        self.entrypoint = entrypoint
        self.params = params if params else dict()

    def dump(self) -> dict[str, Any]:
        """This message as a JSON-compatible ``dict``."""
        dumped: dict[str, Any] = self.MARSHMALLOW_SCHEMA.dump(self)
        return dumped

    def dumps(self) -> str:
        """This message as a JSON string."""
        dumped: str = self.MARSHMALLOW_SCHEMA.dumps(self)
        return dumped

    def __str__(self) -> str:
        return str(self.dump())


class MessageSchema(BaseSchema):
    """Schema of :class:`Message`."""

    result = fields.Nested(ResultSchema, load_default=None, allow_none=True)
    metadata = fields.Dict(keys=fields.String(), load_default=dict, dump_default=dict)


class Message(Base):
    """One Kafka record: which entrypoint to run, with what, and what came before.

    :param uuid: message (and entrypoint run) identifier
    :param entrypoint: registered path of the entrypoint, e.g. ``"app.tasks.Resize"``
    :param params: keyword parameters of the entrypoint
    :param result: result forwarded from a previous step (a ``Result`` or its dict)
    :param metadata: context; the ``"kser"`` key is reserved for sequencing
    """

    MARSHMALLOW_SCHEMA = MessageSchema()
    #: (a consumed message) the trace context of its record's span (see kser.tracing);
    #: never sent
    trace_parent: Any = None
    #: (a decoded message) the text it was decoded from (see :func:`wire_digest`)
    wire: str | bytes | bytearray | None = None

    def dump(self) -> dict[str, Any]:
        """This message as a JSON-compatible ``dict`` (what :class:`MessageSchema` dumps,
        built directly: tests/unit/test_schemas.py checks they agree)."""
        if type(self.MARSHMALLOW_SCHEMA) is not MessageSchema:
            return super().dump()
        return dict(uuid=None if self.uuid is None else str(self.uuid),
                    entrypoint=None if self.entrypoint is None else str(self.entrypoint),
                    params=_string_keys(self.params), result=dump_result(self.result),
                    metadata=_string_keys(self.metadata))

    def __init__(
        self,
        uuid: str,
        entrypoint: str,
        params: dict[str, Any] | None = None,
        result: Result | dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        Base.__init__(self, uuid, entrypoint, params)
        if isinstance(result, Result):
            self.result = result
        elif result:
            self.result = Result(**result)
        else:
            self.result = Result(uuid=uuid)
        self.metadata = metadata or dict()

    @property
    def kser_metadata(self) -> dict[str, Any]:
        """kser's own bookkeeping stored under ``metadata["kser"]`` (may be empty)."""
        value = self.metadata.get(KSER_METADATA_KEY)
        return value if isinstance(value, dict) else {}

    @property
    def is_task(self) -> bool:
        """True for the message of an operation's task (``metadata.kser.task_id``: kser
        queued it, and the stored task decides what it may do)."""
        return "task_id" in self.kser_metadata

    @classmethod
    def loads(cls, json_data: str | bytes | bytearray | None) -> Message:
        """Decode a record value.

        :raises cdumay_error.types.ValidationError: (code 400) with a message that
            says what was wrong: empty record, invalid UTF-8, invalid JSON, not an
            object, or which fields are missing or of the wrong type.
        """
        kmsg = cls.from_dict(_decode_json(json_data))
        kmsg.wire = json_data
        return kmsg

    @classmethod
    def from_dict(cls, data: Any) -> Message:
        """Build a message from already decoded JSON (see :meth:`loads`), checking the
        limits every part of kser relies on (see :func:`check_limits`)."""
        if not isinstance(data, dict):
            raise ValidationError(
                f"Message must be a JSON object, got {_json_type(data)}",
                extra=dict(reason="not-an-object"),
            )
        if type(cls.MARSHMALLOW_SCHEMA) is MessageSchema:
            plain = _plain_message(data)
            if plain is not None:
                kmsg = cls(**plain)
                check_limits(kmsg)
                return kmsg
        try:
            kmsg = cls(**cls.MARSHMALLOW_SCHEMA.load(data))
        except MarshmallowValidationError as exc:
            # (marshmallow 3 leaves normalized_messages unannotated)
            problems: dict[str, Any] = exc.normalized_messages()  # type: ignore[no-untyped-call]
            fields_in_error = "; ".join(
                f"{name}: {' '.join(map(str, msgs)) if isinstance(msgs, list) else msgs}"
                for name, msgs in sorted(problems.items())
            )
            raise ValidationError(
                f"Message does not match the kser schema ({fields_in_error})",
                extra=dict(reason="schema", fields=problems),
            ) from None
        check_limits(kmsg)
        return kmsg

    def __repr__(self) -> str:
        return (f"Message<uuid='{self.uuid}', entrypoint='{self.entrypoint}', "
                f"result={self.result!r}>")


_RESULT_TYPES = {"uuid": str, "retcode": int, "stdout": str, "stderr": str, "retval": dict}


def _string_keyed(value: Any) -> bool:
    return type(value) is dict and all(type(key) is str for key in value)


def _plain_message(data: dict[str, Any]) -> dict[str, Any] | None:
    """What ``MessageSchema().load(data)`` returns, for a message whose every field has
    exactly the type the schema wants (the messages kser writes); None for any other,
    which the schema then loads or explains. The schema's cost was most of a decode."""
    uuid, entrypoint = data.get("uuid"), data.get("entrypoint")
    if type(uuid) is not str or type(entrypoint) is not str:
        return None
    fields_: dict[str, Any] = {}
    for name in ("params", "metadata"):
        value = data.get(name, _MISSING)
        if value is _MISSING:
            fields_[name] = {}
        elif _string_keyed(value):
            fields_[name] = dict(value)
        else:
            return None
    result = data.get("result")
    if result is not None:
        if type(result) is not dict:
            return None
        loaded = {}
        for name, kind in _RESULT_TYPES.items():
            if name in result:
                if type(result[name]) is not kind:
                    return None
                loaded[name] = dict(result[name]) if kind is dict else result[name]
        result = loaded
    return dict(uuid=uuid, entrypoint=entrypoint, params=fields_["params"], result=result,
                metadata=fields_["metadata"])


_MISSING = object()


def _limit_error(message: str, reason: str) -> ValidationError:
    return ValidationError(f"Message refused: {message}", extra=dict(reason=reason))


def _check_id(value: Any, what: str, limit: int = MAX_ID_LENGTH) -> None:
    if not isinstance(value, str):
        raise _limit_error(f"{what} must be a string, got {_json_type(value)}", "limits")
    if not value or len(value) > limit:
        raise _limit_error(f"{what} must have 1 to {limit} characters, not {len(value)}",
                           "limits")
    if not value.isprintable():
        raise _limit_error(f"{what} {value.encode('unicode_escape').decode()[:80]!r} holds "
                           "control or non-character code points", "limits")


def check_limits(kmsg: Message) -> None:
    """Refuse what the store, headers or logs could not hold, before anything runs.

    Ids (``uuid``, kser's ``operation_id``, ``task_id``, ``exit_of``) are printable
    strings of at most :data:`MAX_ID_LENGTH` characters, the entrypoint of at most
    :data:`MAX_ENTRYPOINT_LENGTH`; ``result.retcode`` and kser's ``attempt`` fit 32
    bits; params, result and metadata are nested at most :data:`MAX_JSON_DEPTH` levels;
    ``metadata.kser`` holds only what kser writes, or what a producer may request (see
    :func:`check_kser_metadata`). (Non-finite numbers and lone surrogates were refused
    while decoding.)

    :raises cdumay_error.types.ValidationError: (400) saying which limit and where
    """
    _check_id(kmsg.uuid, "uuid")
    _check_id(kmsg.entrypoint, "entrypoint", MAX_ENTRYPOINT_LENGTH)
    retcode = kmsg.result.retcode if kmsg.result is not None else 0
    if not isinstance(retcode, int) or not MIN_INT32 <= retcode <= MAX_INT32:
        raise _limit_error(f"result.retcode {retcode} is not a 32-bit integer", "limits")
    check_depth(kmsg.params, "params")
    for name, value in kmsg.metadata.items():  # (kser's own: of bounded types, below)
        if name != KSER_METADATA_KEY:
            check_depth(value, f"metadata.{safe_key(name)}", MAX_JSON_DEPTH - 1)
    if kmsg.result is not None:
        check_depth(kmsg.result.retval, "result.retval")
    own = kmsg.metadata.get(KSER_METADATA_KEY)
    if own is None:
        return
    if not isinstance(own, dict):
        raise _limit_error(f"metadata.{KSER_METADATA_KEY} is kser's own and must be an object,"
                           f" got {_json_type(own)}", "limits")
    check_kser_metadata(own)


#: what kser writes in the message of a task it queued: each is checked against the store
#: when the message comes back (kser/sequencing/sequencer.py, ``_judge``)
TASK_KEYS = frozenset({"operation_id", "task_id", "queued", "ready_at", "mode", "attempt"})
#: what kser writes in the message announcing an operation's end
EXIT_KEYS = frozenset({"exit_of"})
#: what a producer may *request* in an operation (or lone task) message: nothing else of
#: ``metadata.kser`` is taken from a message
REQUEST_KEYS = frozenset({"idempotency_key", "ttl_strategy"})
#: prefixes of the idempotency keys kser makes itself (a schedule's fires; a key a message
#: requested, stored under ``message:``): no producer may ask for one
RESERVED_KEY_PREFIXES = ("schedule:", "message:", "kser:")
#: longest idempotency key a producer may ask for, characters (the store's column holds
#: 255: room for kser's prefixes)
MAX_KEY_LENGTH = 200
#: the retention a producer may request: seconds after an operation's end, per outcome
TTL_KEYS = frozenset({"seconds_after_success", "seconds_after_failure",
                      "seconds_after_completion"})
#: longest retention a producer may request, seconds (100 years)
MAX_TTL = 100 * 365 * 86400.0


#: ``metadata.kser``, and its ids with their names in errors (built once: this runs on
#: every record)
_OWN = f"metadata.{KSER_METADATA_KEY}"
_OWN_IDS = tuple((name, f"{_OWN}.{name}") for name in ("operation_id", "task_id", "exit_of"))


def check_kser_metadata(own: dict[str, Any]) -> None:
    """Refuse a ``metadata.kser`` that names what kser decides for itself.

    A message's ``metadata.kser`` is one of three shapes, by its keys: a task message
    kser queued (:data:`TASK_KEYS`, each checked against the store when it comes
    back), an exit notification (:data:`EXIT_KEYS`), or what a producer may request
    (:data:`REQUEST_KEYS`: an idempotency key outside kser's prefixes, a retention).
    Anything else (an exit notification's topic or entrypoint, a key of kser's own)
    is refused here, once, with what to change.

    :raises cdumay_error.types.ValidationError: (400) naming the key and why
    """
    where = _OWN
    if "task_id" in own:
        allowed, shape = TASK_KEYS, "a task message kser queued"
    elif "exit_of" in own:
        allowed, shape = EXIT_KEYS, "an exit notification"
    else:
        allowed, shape = REQUEST_KEYS, "a producer's request"
    if not own.keys() <= allowed:
        name = safe_key(sorted(set(own) - allowed)[0])
        raise _limit_error(
            f"{where}.{name} is kser's own: a message cannot set it (in {shape}, "
            f"{where} may hold only {', '.join(sorted(allowed))}; an operation's exit "
            "notification is its class's ON_EXIT_NOTIFY)", "kser-metadata")
    for name, what in _OWN_IDS:
        if name in own:
            _check_id(own[name], what)
    attempt = own.get("attempt", 1)
    if type(attempt) is not int or not 0 <= attempt <= MAX_INT32:
        raise _limit_error(f"{where}.attempt must be a 32-bit non-negative integer", "limits")
    if own.get("mode") not in (None, "one", "child_ended"):
        raise _limit_error(f"{where}.mode must be absent, \"one\" or \"child_ended\"",
                           "limits")
    if "task_id" in own and "operation_id" not in own:
        raise _limit_error(f"{where} names a task_id without its operation_id", "limits")
    queued = own.get("queued")
    if queued is not None and not (
            type(queued) is list and len(queued) == 2 and type(queued[0]) is int
            and type(queued[1]) is int and 0 <= queued[0] <= MAX_INT32
            and 0 <= queued[1] <= MAX_INT32):
        raise _limit_error(f"{where}.queued must be two 32-bit non-negative integers",
                           "limits")
    if "ready_at" in own and type(own["ready_at"]) not in (int, float):
        raise _limit_error(f"{where}.ready_at must be a number", "limits")
    if "idempotency_key" in own:
        check_idempotency_key(own["idempotency_key"], f"{where}.idempotency_key")
    if "ttl_strategy" in own:
        check_ttl_strategy(own["ttl_strategy"], f"{where}.ttl_strategy")


class KserKey(str):
    """An idempotency key kser's own code made (a schedule's fire, the namespaced key a
    message requested): the only kind that may start with a reserved prefix. No value
    decoded from a message or a request is one."""

    __slots__ = ()


def check_idempotency_key(key: Any, what: str = "the idempotency key") -> str:
    """``key`` if a producer may ask for it: 1 to :data:`MAX_KEY_LENGTH` printable
    characters, not starting with one of kser's :data:`RESERVED_KEY_PREFIXES` (unless
    kser made it: a :class:`KserKey`).

    :raises cdumay_error.types.ValidationError: (400) saying what to change
    """
    _check_id(key, what, MAX_KEY_LENGTH)
    if key.startswith(RESERVED_KEY_PREFIXES) and type(key) is not KserKey:
        raise _limit_error(f"{what} {safe_key(key)!r} starts with {key.split(':')[0]}:, "
                           f"which kser keeps for its own keys "
                           f"({', '.join(RESERVED_KEY_PREFIXES)}): choose another", "key")
    return str(key)


def check_ttl_strategy(ttl: Any, what: str = "ttl_strategy") -> dict[str, float] | None:
    """``ttl`` if it is a retention kser can apply: None, or an object of
    :data:`TTL_KEYS` whose values are numbers of seconds from 0 to :data:`MAX_TTL`.

    :raises cdumay_error.types.ValidationError: (400) saying what to change
    """
    if ttl is None:
        return None
    if type(ttl) is not dict:
        raise _limit_error(f"{what} must be an object of {', '.join(sorted(TTL_KEYS))}, "
                           f"got {_json_type(ttl)}", "ttl")
    for name, seconds in ttl.items():
        if name not in TTL_KEYS:
            raise _limit_error(f"{what}.{safe_key(name)} is not a retention (known: "
                               f"{', '.join(sorted(TTL_KEYS))})", "ttl")
        if type(seconds) not in (int, float) or not 0 <= seconds <= MAX_TTL:
            raise _limit_error(f"{what}.{name} must be a number of seconds from 0 to "
                               f"{MAX_TTL:.0f}, got {safe_key(repr(seconds))}", "ttl")
    return dict(ttl)


def check_depth(value: Any, what: str = "the value", limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse objects and arrays nested deeper than ``limit`` levels.

    :raises cdumay_error.types.ValidationError: (400) naming ``what`` and the limit
    """
    if type(value) is dict:  # (the common case, a flat object: one pass, no list built)
        for child in value.values():
            if type(child) is dict or type(child) is list:
                break
        else:
            return
    level: list[Any] = [value]
    for _ in range(limit):
        level = [child for item in level if type(item) in (dict, list)
                 for child in (item.values() if type(item) is dict else item)
                 if type(child) in (dict, list)]
        if not level:
            return
    raise _too_deep(what)


def safe_key(value: Any) -> str:
    """A name taken from a message, fit for an error (escaped, cut at 80 characters)."""
    return str(value).encode("unicode_escape").decode()[:80]


def _decode_json(raw: str | bytes | bytearray | None) -> Any:
    if raw is None or len(raw) == 0:
        raise ValidationError("Empty record: a kser message is a JSON object",
                              extra=dict(reason="empty"))
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(
                f"Record is not valid UTF-8 (byte {exc.start}): a kser message is UTF-8 JSON",
                extra=dict(reason="encoding"),
            ) from None
    try:
        data = _DECODER.decode(raw)
    except _NotFiniteError as exc:
        raise ValidationError(f"Record holds the number {exc}, which is not finite: JSON "
                              "numbers in a kser message must be finite",
                              extra=dict(reason="number")) from None
    except RecursionError:
        raise _too_deep("the record") from None
    except ValueError as exc:
        raise ValidationError(f"Record is not valid JSON: {exc}",
                              extra=dict(reason="json")) from None
    if "\\ud" in raw or "\\uD" in raw:  # an escaped surrogate: is it a lone one?
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValidationError(
                f"Record holds a lone surrogate ({exc.object[exc.start]!a}), which is not "
                "valid Unicode: kser messages must be valid Unicode text",
                extra=dict(reason="encoding")) from None
        except (ValueError, RecursionError):
            pass  # nothing more to check here; the schema says what is wrong
    return data


def load_json(text: str | bytes, what: str = "the JSON") -> Any:
    """Decode JSON a person or a program gave kser (an API body, a form's params, a
    command's ``--params``), refusing what kser could not carry on: numbers that are not
    finite, and objects and arrays nested deeper than :data:`MAX_JSON_DEPTH` levels (the
    decoders and encoders after this one would fail on them).

    :raises cdumay_error.types.ValidationError: (400) saying what is wrong with ``what``
        and what to change
    """
    try:
        data = _DECODER.decode(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{what} is not UTF-8 (byte {exc.start})",
                              extra=dict(reason="encoding")) from None
    except _NotFiniteError as exc:
        raise ValidationError(f"{what} holds the number {exc}, which is not finite: give "
                              "finite numbers", extra=dict(reason="number")) from None
    except RecursionError:
        raise _too_deep(what) from None
    except ValueError as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc}",
                              extra=dict(reason="json")) from None
    check_depth(data, what)
    return data


def _too_deep(what: str) -> ValidationError:
    return ValidationError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels of objects "
                           "and arrays: flatten it (or send a reference to the data instead)",
                           extra=dict(reason="depth"))


class _NotFiniteError(KserError, ValueError):
    """A JSON number that is not finite (NaN, Infinity): refused."""


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NotFiniteError(text[:40])
    return value


def _refuse_constant(name: str) -> float:
    raise _NotFiniteError(name)


#: the decoder of every record: built once (json.loads with hooks builds one per call)
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
