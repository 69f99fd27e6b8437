"""Helpers that turn failures into :class:`cdumay_result.Result` values.

Every failure inside kser becomes a ``Result`` with ``retcode >= 300`` and a
``stderr`` a person can act on; these helpers keep that wording in one place.
"""

from __future__ import annotations

from cdumay_error import Error, from_exc
from cdumay_result import Result

from kser.errors import safe_text

#: retcodes below this value mean success, as in kser 0.8.x
SUCCESS_LIMIT = 300


def is_success(result: Result | None) -> bool:
    """True when ``result`` exists and its retcode is below 300."""
    return result is not None and result.retcode < SUCCESS_LIMIT


#: most characters of a result's text in kser's log line about it
LOGGED_TEXT = 500


def loggable(result: Result) -> str:
    """What kser's end lines log of a result, as kser 0.8 did: its ``stdout`` (success)
    or ``stderr`` (failure), the task's own words, cut at :data:`LOGGED_TEXT`
    characters. Params, metadata and retval are a task's data, which may be secret or
    large: never logged."""
    text = result.stdout if is_success(result) else result.stderr
    return safe_text(text, LOGGED_TEXT) if text else ""


def error_result(error: Error, uuid: str | None = None) -> Result:
    """A failed ``Result`` for a cdumay ``Error``, bound to ``uuid``."""
    result = Result.from_error(error)
    if uuid:
        result.uuid = uuid
    return result


def exception_result(exc: BaseException, uuid: str | None = None) -> Result:
    """A failed ``Result`` for any exception.

    cdumay errors keep their code (400, 404...); anything else is a 500 whose
    stderr names the exception type, because ``str(KeyError('x'))`` alone
    tells nobody what went wrong.
    """
    if isinstance(exc, Error):
        return error_result(exc, uuid)
    error = from_exc(exc)
    if not str(exc):  # (cdumay says "Internal Error" then: the type says more)
        error.message = type(exc).__name__
    elif error.message == str(exc):  # a bare str(exc); marshmallow errors have their own
        error.message = f"{type(exc).__name__}: {exc}"
    return error_result(error, uuid)
