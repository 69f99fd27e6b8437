"""Operations: tasks run as Kafka messages, in chains, parallel groups and DAGs."""

from kser.sequencing.operation import Operation
from kser.sequencing.rules import TriggerRule
from kser.sequencing.shapes import Branch, Parallel, Sensor, SkipTask
from kser.sequencing.task import Task, TaskCanceled

__all__ = ["Branch", "Operation", "Parallel", "Sensor", "SkipTask", "Task", "TaskCanceled",
           "TriggerRule"]
