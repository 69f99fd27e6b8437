"""Built-in tasks: call a Python function, run a command, call an HTTP endpoint.

    from kser.tasks import HttpTask, PythonTask, ShellTask

They run only as tasks of an operation (what each calls is read from the store, never
from a message); every registry knows them. Defined in
:mod:`kser.sequencing.builtins`; ``kser.tasks.PythonTask`` and its siblings are their
routing paths.
"""

from kser.sequencing.builtins import BUILT_INS as BUILT_INS
from kser.sequencing.builtins import MAX_OUTPUT as MAX_OUTPUT
from kser.sequencing.builtins import HttpTask as HttpTask
from kser.sequencing.builtins import PythonTask as PythonTask
from kser.sequencing.builtins import ShellTask as ShellTask

__all__ = ["BUILT_INS", "MAX_OUTPUT", "HttpTask", "PythonTask", "ShellTask"]
