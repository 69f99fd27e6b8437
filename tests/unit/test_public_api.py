"""The public face of kser: what ``import kser`` gives, the one error root, and the import
paths of kser 0.8 and of earlier docs that must keep working."""

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import kser


def test_every_public_name_loads_from_the_package():
    for name in kser.__all__:
        assert getattr(kser, name) is not None, name
    assert "OperationRegistry" in dir(kser)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        kser.Nope  # noqa: B018


def test_import_kser_loads_no_kafka_client_flask_or_store():
    code = ("import sys, kser; heavy = [m for m in ('flask', 'kafka', 'sqlalchemy', "
            "'kser.sequencing') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "[]"


def _kser_modules():
    for info in pkgutil.walk_packages(kser.__path__, "kser."):
        if info.name.startswith(("kser.confluent", "kser.web.static")):
            continue  # (confluent-kafka is optional; its errors are checked below)
        yield importlib.import_module(info.name)


def test_every_exception_kser_defines_has_the_one_root():
    defined = {cls for module in _kser_modules()
               for _, cls in inspect.getmembers(module, inspect.isclass)
               if issubclass(cls, BaseException) and cls.__module__.startswith("kser")}
    assert len(defined) > 25
    assert sorted(c.__qualname__ for c in defined if not issubclass(c, kser.KserError)) == []


@pytest.mark.parametrize(("path", "names"), [
    ("kser.sequencing.sequencer", ["Sequencer", "EXIT_ENTRYPOINT", "CHILD_ENDED"]),
    ("kser.sequencing.controls", ["Controls", "control", "ControlRefusedError"]),
    ("kser.sequencing.outbox", ["Outbox"]), ("kser.sequencing.leases", ["Leases"]),
    ("kser.sequencing.group", ["GroupCommit"]),
])
def test_the_engine_s_former_module_paths_still_work(path, names):
    module = importlib.import_module(path)
    engine = importlib.import_module(path.replace("kser.sequencing.", "kser.sequencing.engine."))
    for name in names:
        assert getattr(module, name) is getattr(engine, name)


def test_what_left_the_controller_is_still_there():
    from kser import controller, hooks, pace

    assert controller.Pace is pace.Pace and controller.BaseController is hooks.BaseController


@pytest.mark.parametrize(("path", "name"), [
    ("kser.controller", "BaseProducer"),
    ("kser.controller", "RedoError"), ("kser.controller", "UndeliverableError"),
    ("kser.controller", "MessageTooLargeError"),
    ("kser.codec", "MessageTooLargeError"), ("kser.timelimit", "TimeLimitExceeded"),
    ("kser.worker", "WorkerStartError"), ("kser.topics", "TopicNotFoundError"),
    ("kser.metrics", "MetricsUnavailableError"), ("kser.web.auth", "AuthConfigError"),
    ("kser.web", "AuthConfigError"),
    ("kser.sequencing.controls", "ControlRefusedError"),
    ("kser.sequencing.registry", "OperationRegistry"), ("kser.sequencing.task", "Task"),
    ("kser.sequencing.operation", "Operation"), ("kser.sequencing", "Parallel"),
    ("kser.sequencing.retries", "Retry"), ("kser.schemas", "Message"),
])
def test_the_former_import_paths_still_work(path, name):
    assert getattr(importlib.import_module(path), name) is getattr(kser, name)


def test_errors_keep_the_kind_existing_code_catches():
    from cdumay_error.types import NotFound, ValidationError

    assert issubclass(kser.UndeliverableError, NotFound)
    assert issubclass(kser.MessageTooLargeError, ValidationError)
    assert issubclass(kser.OperationGoneError, LookupError)
    assert issubclass(kser.TopicNotFoundError, LookupError)
    assert issubclass(kser.AuthConfigError, ValueError)
    error = kser.UndeliverableError("refused", extra=dict(uuid="u"), code=404)
    assert (error.code, error.extra, error.message) == (404, {"uuid": "u"}, "refused")


def test_registry_init_app_is_the_web_package_s_init_app():
    flask = pytest.importorskip("flask")
    from kser.web import init_app

    app, other = flask.Flask("a"), flask.Flask("b")
    registry = kser.OperationRegistry(settings=kser.Settings(api_auth="none"))
    registry.init_app(app)
    init_app(other, registry)
    for each in (app, other):
        assert each.extensions["kser"] is registry
        assert {rule.rule for rule in each.url_map.iter_rules()} >= {"/api/v1/health", "/ui/"}
