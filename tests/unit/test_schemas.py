"""The wire format: decoding errors, and compatibility both ways with kser 0.8.27."""

import json
from pathlib import Path

import pytest
from cdumay_error.types import ValidationError
from cdumay_result import Result

from kser.schemas import Message

GOLDEN = json.loads((Path(__file__).parents[1] / "fixtures" / "kser_0_8_27" / "golden.json")
                    .read_text())


def test_golden_file_was_made_by_kser_0_8_27():
    assert GOLDEN["generator"] == "kser 0.8.27"
    assert len(GOLDEN["cases"]) >= 3


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: c["args"]["entrypoint"])
def test_we_write_what_kser_0_8_27_writes(case):
    kwargs = dict(case["args"])
    if "result" in kwargs:
        kwargs["result"] = Result(**kwargs["result"])
    assert json.loads(Message(**kwargs).dumps()) == json.loads(case["json"])


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: c["args"]["entrypoint"])
def test_we_read_what_kser_0_8_27_writes(case):
    kmsg = Message.loads(case["json"].encode("utf-8"))
    args = case["args"]
    assert (kmsg.uuid, kmsg.entrypoint) == (args["uuid"], args["entrypoint"])
    assert kmsg.params == args.get("params", {})
    assert kmsg.metadata == args.get("metadata", {})
    expected_result = args.get("result", {"uuid": args["uuid"], "retcode": 0, "stdout": "",
                                          "stderr": "", "retval": {}})
    assert Message.MARSHMALLOW_SCHEMA.dump(kmsg)["result"] == expected_result


@pytest.mark.parametrize("read", GOLDEN["reads"], ids=lambda r: json.loads(r["record"])["uuid"])
def test_kser_0_8_27_reads_what_we_write(read):
    record = json.loads(read["record"])
    ours = Message.loads(read["record"]).dump()
    # 0.8.27 decoded our record into the same message we decode it into
    assert ours == read["loaded"]
    assert read["loaded"]["metadata"] == record["metadata"]


def test_sequencing_metadata_lives_under_one_reserved_key():
    kmsg = Message("u", "e", metadata={"kser": {"operation_id": "op"}, "user": 1})
    assert kmsg.kser_metadata == {"operation_id": "op"}
    assert Message("u", "e", metadata={"kser": "not a dict"}).kser_metadata == {}


@pytest.mark.parametrize("raw, expected", [
    (b"", "Empty record"),
    (None, "Empty record"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object, got an array"),
    (b'"text"', "must be a JSON object, got a string"),
    (b"{}", "entrypoint: Missing data for required field"),
    (b'{"uuid": "u", "entrypoint": "e", "params": [1]}', "params: Not a valid mapping"),
    (b'{"uuid": 5, "entrypoint": "e"}', "uuid: Not a valid string"),
    (b'{"uuid": "u", "entrypoint": "e", "result": {"retcode": "x"}}', "result"),
])
def test_loads_says_what_is_wrong(raw, expected):
    with pytest.raises(ValidationError) as info:
        Message.loads(raw)
    assert info.value.code == 400
    assert expected in info.value.message


def test_unknown_fields_are_ignored_and_missing_ones_defaulted():
    kmsg = Message.loads(b'{"uuid": "u", "entrypoint": "e", "future": 1}')
    assert kmsg.params == {} and kmsg.metadata == {}
    assert kmsg.result.uuid == "u" and kmsg.result.retcode == 0


@pytest.mark.parametrize("message", [
    Message("u", "a.B"),
    Message("u", "a.B", params={"x": [1, {"y": None}], 2: "two"},
            result=Result(uuid="r", retcode=3, stdout="o", stderr="e", retval={"k": 1.5}),
            metadata={"kser": {"operation_id": "o", "task_id": "t"}, "user": "me"}),
    Message(7, "a.B", result={"retcode": 500, "stderr": "boom"}),
])
def test_message_dump_is_what_the_schema_dumps(message):
    from kser.schemas import MessageSchema

    assert message.dump() == MessageSchema().dump(message)
    assert list(message.dump()) == list(MessageSchema().dump(message))  # same key order
