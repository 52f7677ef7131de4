"""Prometheus metrics for Relay (docs/design.md section 8): definitions, HTTP middleware, /metrics.

`relay.observability.metrics` holds the metric objects and the record_* helpers the hot path
calls (in-memory counters only, no I/O); `middleware` labels HTTP traffic by route pattern;
`views.metrics` serves the exposition text; `multiproc` handles several worker processes.
"""
