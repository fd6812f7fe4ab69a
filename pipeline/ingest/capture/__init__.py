"""Capture file reading: ``reader`` (formats, chunked streaming, error reporting) and
``decode`` (numba kernels that walk records and decode L2-L4 fields in bulk)."""
