"""The process's memory: how much it holds, and the two settings that keep a CPU training run's
resident set flat (measured in README's performance section, issue 12).

Training on token-budget batches gives every update a new tensor shape. Two things then grow
without bound on CPU:

- glibc's heap: freed activations stay in the heap as free chunks between live ones (glibc
  returns only the free top of the heap to the system), so the resident set creeps up by hundreds
  of MB a minute on the default recipe. :func:`release_free_memory` asks glibc to hand whole
  free pages back (``malloc_trim(0)``, man 3 malloc_trim); the trainer calls it every
  ``train.release_memory_every`` updates.
- oneDNN's primitive cache (bf16 matmuls run through oneDNN): up to 1,024 primitives, one per
  shape, about 1 GB on the default recipe. :func:`set_onednn_cache_capacity` sets oneDNN's own
  ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` before the first primitive is built.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import resource
import sys


def process_memory_mb() -> dict[str, float]:
    """The process's resident memory now and at its peak, in MiB (2**20 bytes).

    Linux: ``VmRSS`` and ``VmHWM`` of ``/proc/self/status``; elsewhere both are ``ru_maxrss``
    (``resource``; KiB on Linux, bytes on macOS), which only knows the peak.

    Returns: ``{"rss_mb": …, "peak_rss_mb": …}``.
    """
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
        return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "peak_rss_mb": int(fields["VmHWM"].split()[0]) / 1024}
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
        return {"rss_mb": peak, "peak_rss_mb": peak}


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library is not glibc (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (glibc ``malloc_trim(0)``); live memory is
    untouched. A no-op where the C library is not glibc.

    Returns: whether glibc released any memory.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def set_onednn_cache_capacity(capacity: int) -> None:
    """Cap oneDNN's primitive cache at ``capacity`` primitives (oneDNN's default: 1,024) unless
    the user set ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` themselves.

    oneDNN reads the variable when it builds its first primitive, so call this before the first
    bf16 matmul or convolution of the process; later calls change nothing.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))
