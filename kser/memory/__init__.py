"""In-process transport: for unit tests and the embedded default (``kser demo``).

``{"broker": NAME}`` in a config picks a named in-process broker shared by
every producer and consumer of that name in the process.
"""
