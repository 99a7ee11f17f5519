"""The data model every concern shares: models, protocol limits, events, pipeline protocols.

Nothing here imports anything else of seenn but ``seenn.errors`` and
``seenn._version``: instrumentation, exporters, the REST client and the server
all build on it.
"""
