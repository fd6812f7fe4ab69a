"""Capture file reading: ``reader`` (formats, chunked streaming, error reporting),
``boundary`` (where the next plausible record starts, from any byte offset: the rules the
reader resynchronises by after damage) and ``decode`` (numba kernels that walk records
and decode L2-L4 fields in bulk)."""
