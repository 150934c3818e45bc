"""Decoded device traces: what a driver and a device said to each other, record by record.

A device (or its transport) asks its :class:`~pyvmm.events.EventSink` whether a category is
traced (``sink.tracing("io")``: one set lookup, so tracing costs nothing when off) and then
publishes a record with ``sink.trace("io", "complete", stream=0, ...)``. The
:class:`Tracer` the VMM built from ``--trace-dev``/``--trace-file`` stamps it with the time
since the VM started and hands it to its writers: a console line and/or a JSON line
(:mod:`pyvmm.trace.schema` documents the fields). ``pyvmm trace summary|plot`` read the
JSON lines back (:mod:`pyvmm.trace.summary`, :mod:`pyvmm.trace.plot`).
"""

from pyvmm.trace.tracer import CATEGORIES, TraceRecord, Tracer, TraceSpec, parse_trace_specs

__all__ = ["CATEGORIES", "TraceRecord", "Tracer", "TraceSpec", "parse_trace_specs"]
