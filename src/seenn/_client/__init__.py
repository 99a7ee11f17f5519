"""The REST client: ``SeennClient`` and ``AsyncSeennClient`` over the wire protocol."""
