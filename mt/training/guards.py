"""What keeps a training run safe: signals, random states, output-folder checks, failure errors.

Used by ``mt.training.train``: SIGINT/SIGTERM only raise a flag so the loop can finish its update and
save; random states are stored as checkpoint-safe data so a resumed run continues exactly;
the output folder is checked for write access and free space before any training is done.
"""

from __future__ import annotations

import random
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import torch

from mt.errors import DataError, MtError


class TrainingInterrupted(MtError):
    """SIGINT/SIGTERM during training: the step finished and ``last.pt`` was written."""

    def __init__(self, signum: int, step: int, out_dir: Path):
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step}; {out_dir / 'checkpoints' / 'last.pt'} written. "
            f"Resume with the same overrides plus: train.resume=auto hydra.run.dir={out_dir}"
        )
        self.exit_code = 128 + signum


class TrainingFailed(MtError):
    """Training cannot go on (e.g. too many non-finite losses in a row)."""


class StopSignal:
    """Context manager: SIGINT/SIGTERM only set ``received`` (the signal number), so the loop can
    finish its step and save; the previous handlers come back on exit."""

    def __init__(self):
        self.received = 0
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> StopSignal:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) random states as checkpoint-safe data."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy_key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(numpy_state["state"]["pos"]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(("MT19937", state["numpy_key"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove a file can be written there.

    Raises:
        DataError: naming the folder, before any training work is done.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise DataError(f"output folder {folder} is not writable: {error.strerror or error}") from None


def check_free_space(folder: Path, model: torch.nn.Module, kept: int = 0) -> None:
    """Refuse to start when the disk cannot hold the run's checkpoints: best, last, ``kept``
    step checkpoints and one temporary copy.

    A checkpoint holds the parameters and AdamW's two moments: about 3 x parameter bytes.

    Raises:
        DataError: with the bytes needed and free.
    """
    needed = (3 + kept) * 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DataError(f"{folder}: {free / 2**20:.0f} MiB free, checkpoints need about {needed / 2**20:.0f} MiB")
