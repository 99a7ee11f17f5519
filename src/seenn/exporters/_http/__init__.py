"""``HTTPExporter`` and its ``DeliveryStats``: job events delivered to a REST backend.

``exporter`` is the public face and lifecycle, ``delivery`` the per-job queues,
scheduling and retries behind it, ``wire`` the REST mapping of an event,
``outbox`` the durable SQLite store and ``state`` the records they share.
"""

from seenn.exporters._http.exporter import HTTPExporter
from seenn.exporters._http.state import DeliveryStats

__all__ = ["DeliveryStats", "HTTPExporter"]
