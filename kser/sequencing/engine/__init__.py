"""The engine that runs operations: internal, no stable API (its modules change as the
engine grows; what users need is on the :mod:`kser` package, and the paths kser 0.8 and
earlier docs named keep working: ``kser.sequencing.sequencer``, ``.controls``,
``.outbox``, ``.leases``, ``.group``).

In one direction, each part taking only those after it: ``sequencer`` (wires the parts,
routes messages) → ``submit``, ``runner``, ``children``, ``sweep``, ``controls`` →
``ends`` → ``transitions`` (the store layer applying decisions) → ``decisions`` (pure) ;
``context`` (what every part shares), ``outbox``, ``leases``, ``group`` underneath.
"""
