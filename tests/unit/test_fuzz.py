"""Property-based fuzzing of the decoder, the controller and the consume loop (hypothesis).

Whatever the bytes: never an exception out of them, always a Result with a
clear error, the bad record dead-lettered and the next record processed.
"""

import json

from cdumay_error.types import ValidationError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kser.memory.broker import drop_broker, get_broker
from kser.memory.consumer import Consumer
from kser.schemas import Message
from tests.unit import tasks

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)

VALID = {"uuid": "u-1", "entrypoint": tasks.Echo.path, "params": {"text": "hi"},
         "result": {"uuid": "r", "retcode": 0, "stdout": "", "stderr": "", "retval": {}},
         "metadata": {}}


@st.composite
def mutated_messages(draw):
    message = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "delete", "add", "nest"]))
        key = draw(st.sampled_from([*sorted(VALID), "kser", "extra"]))
        if action == "replace":
            message[key] = draw(json_values)
        elif action == "delete":
            message.pop(key, None)
        elif action == "add":
            message[draw(st.text(max_size=6))] = draw(json_values)
        elif isinstance(message.get("result"), dict):
            message["result"][draw(st.sampled_from(["retcode", "retval", "uuid"]))] = \
                draw(json_values)
    return json.dumps(message).encode()


records = st.one_of(st.binary(max_size=200),
                    json_values.map(lambda v: json.dumps(v).encode()),
                    mutated_messages())


@given(records)
@settings(max_examples=300, deadline=None)
def test_loads_raises_only_a_clear_validation_error(raw):
    try:
        kmsg = Message.loads(raw)
    except ValidationError as exc:
        assert exc.code == 400 and exc.message
    else:
        assert isinstance(kmsg.uuid, str) and isinstance(kmsg.params, dict)


@given(records)
@settings(max_examples=300, deadline=None)
def test_controller_always_returns_a_result(raw):
    outcome = tasks.registry.controller.handle(raw)
    result = outcome.result
    assert isinstance(result.retcode, int)
    if outcome.undeliverable:
        assert result.retcode >= 300 and result.stderr


@given(st.lists(records, min_size=1, max_size=8))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_loop_dead_letters_bad_records_and_processes_the_next(raws):
    name = "fuzz"
    drop_broker(name)
    broker = get_broker(name)
    good = json.dumps({"uuid": "good", "entrypoint": tasks.Echo.path,
                       "params": {"text": "after"}}).encode()
    for raw in raws:
        broker.produce("jobs", raw)
        broker.produce("jobs", good)
    tasks.CALLS.clear()
    consumer = Consumer({"broker": name, "group_id": "g"}, ["jobs"])
    consumer.REGISTRY = tasks.registry.controller
    consumer.run()
    assert broker.lag("g", ["jobs"]) == 0
    assert tasks.CALLS.count("after") >= len(raws)  # every good record after a bad one ran
    decodable = 0
    for raw in raws:
        outcome = tasks.registry.controller.handle(raw)
        decodable += not outcome.undeliverable
    assert len(broker.records("jobs.dlq")) == len(raws) - decodable
    drop_broker(name)


@given(st.one_of(mutated_messages(), st.just(json.dumps(VALID).encode())))
@example(json.dumps({**VALID, "result": {**VALID["result"], "uuid": ""}}).encode())
@settings(max_examples=400, deadline=None)
def test_the_fast_decoder_agrees_with_the_schema(raw):
    """Message.loads skips marshmallow for messages of exactly the right types: what it
    builds then is what the schema would have built."""
    from kser.schemas import MessageSchema, _plain_message

    data = json.loads(raw)
    if not isinstance(data, dict):
        return
    plain = _plain_message(data)
    if plain is None:
        return  # left to the schema
    assert plain == MessageSchema().load(data)
    fast, slow = Message(**plain).dump(), Message(**MessageSchema().load(data)).dump()
    if not (plain["result"] or {}).get("uuid"):  # no result, or one without a uuid:
        del fast["result"]["uuid"], slow["result"]["uuid"]  # Result draws a random one
    assert fast == slow


header_names = st.one_of(st.text(max_size=8), st.binary(max_size=8), st.integers(), st.none())
header_values = st.one_of(st.binary(max_size=16), st.text(max_size=8), st.none(), st.integers())
edge_numbers = st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", str(2 ** 31),
                                str(-(2 ** 31) - 1), str(10 ** 30), "0", "-0.0", "1e-400"])


@st.composite
def hostile_values(draw):
    """Record values a hostile producer could send: random bytes, null, or a message with
    edge numbers, lone surrogates, long or control-character ids in any field."""
    kind = draw(st.sampled_from(["bytes", "none", "message", "big"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "none":
        return None
    if kind == "big":
        return b"x" * draw(st.integers(1_000, 40_000))
    text = draw(st.sampled_from(['"\\ud800"', '"\\udfff"', '"ok"', '"a\\u0000b"',
                                 '"' + "i" * 70 + '"', '"\\ud83d\\ude00"']))
    number = draw(edge_numbers)
    field = draw(st.sampled_from(["uuid", "entrypoint", "params", "retcode", "kser"]))
    parts = {"uuid": '"u"', "entrypoint": f'"{tasks.Echo.path}"',
             "params": '{"text": "t"}', "retcode": "0", "kser": "{}"}
    parts[field] = {"uuid": text, "entrypoint": text,
                    "params": f'{{"text": {text}, "n": {number}}}', "retcode": number,
                    "kser": f'{{"operation_id": {text}, "task_id": {text}}}'}[field]
    return (f'{{"uuid": {parts["uuid"]}, "entrypoint": {parts["entrypoint"]}, '
            f'"params": {parts["params"]}, "result": {{"retcode": {parts["retcode"]}}}, '
            f'"metadata": {{"kser": {parts["kser"]}}}}}').encode()


hostile_records = st.tuples(hostile_values(), st.one_of(st.none(), st.binary(max_size=16)),
                            st.lists(st.tuples(header_names, header_values), max_size=4))


@given(st.lists(hostile_records, min_size=1, max_size=6))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_loop_accounts_for_every_hostile_record_and_never_raises(records):
    """Whatever a record's value, key and headers: the loop returns, every record is
    processed or dead-lettered (as it was: value and key unchanged), nothing is left."""
    from kser.config import Settings

    name = "hostile-fuzz"
    drop_broker(name)
    broker = get_broker(name)
    for value, key, headers in records:
        broker.produce("jobs", value, key, headers)
    consumer = Consumer({"broker": name, "group_id": "g"}, ["jobs"],
                        settings=Settings(max_message_bytes=20_000, redo_backoff=0.01))
    consumer.REGISTRY = tasks.registry.controller
    consumer.run()
    assert broker.lag("g", ["jobs"]) == 0
    dead = broker.records("jobs.dlq")
    assert consumer.processed == len(records)
    for letter in dead:
        source = broker.records("jobs")[int(dict(letter.headers)["kser-source-offset"])]
        if b"kser-value-trimmed" not in b"".join(n.encode() for n, _ in letter.headers):
            assert (letter.value, letter.key) == (source.value, source.key)
        dict(letter.headers)["kser-error"].decode("utf-8")
    drop_broker(name)
