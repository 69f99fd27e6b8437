"""The OpenAPI document, property-tested with schemathesis against the app (memory
transport, SQLite): every operation it documents, with generated valid and invalid
input, never answers a 500, and every answer matches the schema documented for it.

(Schemathesis' pytest plugin does not run on pytest 9: the operations are driven here
with its strategies, one hypothesis run per operation and per generation mode.)"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, reject, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from kser.web import create_app
from tests.unit.test_api import ADMIN, h  # noqa: F401 (the fixture)

#: generated cases per operation and mode (a fifth for the dead letters, each call of
#: which reads a topic to its end)
EXAMPLES = 25


def operations(app):
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def capped_wait(read):
    """``read`` (of kser.dlq) waiting a hundredth of a second for the end of a topic."""
    def fast(*args):
        args = [min(a, 0.01) if isinstance(a, float) else a for a in args]
        return read(*args)
    return fast


def contract_check(operation, mode):
    """A hypothesis test calling ``operation`` with generated cases of ``mode``."""
    query = {p.name for p in operation.query}
    # ?wait= holds a request up to a minute: its least is enough here (the dead letters'
    # own is a tenth of a second, cut by capped_wait)
    pinned = ({"wait": 0.1 if "dead-letters" in operation.path else 0.01}
              if "wait" in query else None)
    # what the schema cannot say, checked by the API (422, which the positive-data check
    # would call a rejection): a cursor is opaque (only those the API gave are valid), an
    # entrypoint must be in the registry and its params are its own
    excluded = ([positive_data_acceptance] if "cursor" in query or operation.label ==
                "POST /api/v1/operations" else None)

    @given(case=operation.as_strategy(generation_mode=mode, query=pinned))
    @settings(max_examples=EXAMPLES // 5 if "dead-letters" in operation.path else EXAMPLES,
              deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        # a query argument with a blank name, or without a value (None, []), is not sent
        # at all: the request would be valid, and its acceptance taken for a failure
        if any(not str(name).strip() or value is None or value == [] or (
                isinstance(value, list) and all(v is None for v in value))
               for name, value in (case.query or {}).items()):
            reject()
        case.call_and_validate(headers=ADMIN, excluded_checks=excluded)
    return check


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])
def test_every_documented_operation_keeps_its_contract(h, mode, monkeypatch):  # noqa: F811
    monkeypatch.setattr(h.registry.settings, "transport", "memory")  # (dead letters)
    import kser.dlq

    for name in ("list_dead_letters", "replay"):  # a body's wait is up to a minute
        monkeypatch.setattr(kser.dlq, name, capped_wait(getattr(kser.dlq, name)))
    app = create_app(h.registry)
    found = operations(app)
    assert len(found) >= 15, [op.label for op in found]
    failures = {}
    for operation in found:
        check = contract_check(operation, mode)
        try:
            check()
        except Unsatisfiable:  # (invalid mode: nothing about it can be made invalid)
            continue
        except Exception as exc:  # every operation is tried; all failures are reported
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
