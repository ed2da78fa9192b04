"""The process's memory: how much it holds, the settings that keep a CPU training run's resident
set flat, and the allocator it runs on (measured in README's performance section, issue 12).

Training on token-budget batches gives every update a new tensor shape. Two things then grow
without bound on CPU:

- glibc's heap: freed activations stay in the heap as free chunks between live ones (glibc
  returns only the free top of the heap to the system), so the resident set creeps up by hundreds
  of MB a minute on the default recipe. :func:`release_free_memory` asks glibc to hand whole
  free pages back (``malloc_trim(0)``, man 3 malloc_trim); the trainer calls it every
  ``train.release_memory_every`` updates.
- the caches of PyTorch's oneDNN layer (bf16 matmuls run through oneDNN): oneDNN keeps up to
  1,024 compiled primitives, one per shape, and ideep (PyTorch's C++ wrapper of oneDNN) up to
  1,024 more computations, each holding buffers: about 1 GB, and 270 MB already after the first
  100 updates of the default recipe (glibc's ``mallinfo2``: 558 vs 287 MB in use between updates).
  :func:`set_onednn_cache_capacity` sets their own ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` and
  ``LRU_CACHE_CAPACITY`` before the first primitive is built.

glibc's heap also fragments: with a new shape every update, its resident set at the peak is
up to twice the memory in use. :func:`relaunch_with_allocator` restarts ``mt-train`` on tcmalloc
or jemalloc where one is installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import resource
import sys

from mt.errors import ConfigError


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


class _Mallinfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc ≥ 2.33, man 3 mallinfo2), every field a size_t."""

    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]  # fmt: skip


@functools.cache
def _libc_function(name: str, argtypes: tuple | None, restype):
    """The C library's function ``name`` with its signature set, or None where the C library
    has none (not glibc: macOS, musl; ``mallinfo2`` also needs glibc ≥ 2.33)."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):
        return None
    if argtypes is not None:
        function.argtypes = argtypes
    function.restype = restype
    return function


def heap_mb() -> dict[str, float] | None:
    """glibc's heap in MiB: ``heap_mb``, what it holds from the system (its arenas and mmapped
    blocks), and ``in_use_mb``, what of it is allocated now; the difference is free memory that
    fragmentation keeps. None on another allocator (tcmalloc, jemalloc, macOS), whose figures
    glibc does not know.
    """
    mallinfo2 = _libc_function("mallinfo2", None, _Mallinfo2)
    if mallinfo2 is None or loaded_allocator() != "glibc":
        return None
    info = mallinfo2()
    return {"heap_mb": (info.arena + info.hblkhd) / 2**20, "in_use_mb": (info.uordblks + info.hblkhd) / 2**20}


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (glibc ``malloc_trim(0)``); live memory is
    untouched. A no-op where the C library is not glibc.

    Returns: whether glibc released any memory.
    """
    trim = _libc_function("malloc_trim", (ctypes.c_size_t,), ctypes.c_int)
    return bool(trim(0)) if trim is not None else False


def set_onednn_cache_capacity(capacity: int) -> None:
    """Cap oneDNN's primitive cache at ``capacity`` primitives and ideep's computation cache at
    ``max(capacity, 1)`` entries (both default to 1,024), unless the user set
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` or ``LRU_CACHE_CAPACITY`` themselves.

    ideep (PyTorch's layer over oneDNN, in ``torch/csrc`` and ``third_party/ideep``) caches one
    computation per matmul shape on top of oneDNN's primitive, with its own buffers: about 1.2 MB
    for each new row count through a (256 → 1,024) bf16 linear layer, forward and backward
    (``tests/test_memory.py``). Its capacity 0 crashes the process, hence at least 1. Both
    libraries read their variable when they first build something, so call this before the
    first bf16 matmul or convolution of the process; later calls change nothing.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(max(capacity, 1)))


# ------------------------------------------------------------------------------ the allocator
ALLOCATORS = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}  # library names, best first
ALLOCATOR_VARIABLE = "MT_ALLOCATOR"  # auto (default), tcmalloc, jemalloc or glibc
_RELAUNCHED = "MT_ALLOCATOR_RELAUNCHED"


def find_allocator(name: str) -> str | None:
    """The shared library of allocator ``name`` (a key of :data:`ALLOCATORS`), as the dynamic
    linker's cache knows it (``ctypes.util.find_library``: ``libtcmalloc_minimal.so.4`` from
    Debian's ``libtcmalloc-minimal4``) or as a file in the environment's own ``lib`` folder
    (venv, conda); None where it is not installed."""
    for library in ALLOCATORS[name]:
        found = ctypes.util.find_library(library)
        if found:
            return found
        for prefix in dict.fromkeys(filter(None, (sys.prefix, os.environ.get("CONDA_PREFIX")))):
            files = sorted(glob.glob(os.path.join(prefix, "lib", f"lib{library}.so*")))
            if files:
                return files[0]
    return None


@functools.cache
def loaded_allocator() -> str:
    """Which ``malloc`` this process runs on: ``tcmalloc`` or ``jemalloc`` when one of their
    libraries is mapped into it (``/proc/self/maps``, read once: a preload acts only at the
    process's start), else ``glibc``."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "glibc"
    return next((name for name in ALLOCATORS if f"lib{name}" in maps), "glibc")


def allocator_environment(choice: str) -> dict[str, str] | None:
    """The environment that starts a process on allocator ``choice`` (``LD_PRELOAD``), or None
    when the process should keep glibc's ``malloc``.

    ``auto`` takes tcmalloc, else jemalloc, else glibc; a named allocator must be installed.

    Raises:
        ConfigError: an unknown ``choice``, or a named allocator that is not installed.
    """
    if choice not in ("auto", "glibc", *ALLOCATORS):
        raise ConfigError(f"{ALLOCATOR_VARIABLE}={choice}: allowed: auto, glibc, {', '.join(ALLOCATORS)}")
    if choice == "glibc" or not sys.platform.startswith("linux"):
        return None
    for name in ALLOCATORS if choice == "auto" else (choice,):
        library = find_allocator(name)
        if library:
            preload = " ".join(filter(None, (os.environ.get("LD_PRELOAD"), library)))
            # tcmalloc reports every allocation over 1 GB on stderr; a big corpus's arrays are legitimate
            return dict(os.environ, LD_PRELOAD=preload, TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD=str(2**40))
    if choice != "auto":
        raise ConfigError(f"{ALLOCATOR_VARIABLE}={choice}: lib{ALLOCATORS[choice][0]} is not installed")
    return None


def relaunch_with_allocator() -> None:
    """Restart this process (``os.execve``: same PID, arguments and environment) with tcmalloc or
    jemalloc preloaded, as ``MT_ALLOCATOR`` (default ``auto``) asks; return at once when the
    process already runs on it, has been restarted once, or keeps glibc.

    Why: on token-budget batches glibc's heap fragments, so the trainer's resident set at its
    peak is about twice the memory it uses (README, "Memory over a run"); tcmalloc and jemalloc
    keep it close. PyTorch's own CPU launcher (``torch.backends.xeon.run_cpu``) preloads the
    same libraries for the same reason. Call it first thing in an entry point, before anything
    is printed or written.

    Raises:
        ConfigError: see :func:`allocator_environment`.
    """
    choice = os.environ.get(ALLOCATOR_VARIABLE, "auto")
    loaded = loaded_allocator()
    if os.environ.get(_RELAUNCHED) or loaded == choice or (choice == "auto" and loaded != "glibc"):
        return
    env = allocator_environment(choice)
    if env is None:
        return
    env[_RELAUNCHED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # could not restart: train on glibc, as without the library
        return
