"""kser: sequence tasks over Apache Kafka.

A producer sends one :class:`kser.schemas.Message`; whichever consumer of the
group receives it runs it through its registry. See ``docs/`` for the design.
"""

__version__ = "1.0.0.dev0"
