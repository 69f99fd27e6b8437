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
    if plain["result"] and not plain["result"].get("uuid"):
        del fast["result"]["uuid"], slow["result"]["uuid"]  # Result draws a random one
    assert fast == slow
