"""Where a training run stands and what it is made of.

- :class:`TrainState`: step, epoch, batch position, best score, early-stopping and non-finite
  counters, elapsed time and RNG states, saved and restored whole; :func:`early_stop` reads it;
- :class:`LossMeter`: the training loss and its terms summed over a window of updates;
- :class:`Run`: the fixed parts of a run (config, run dir, data, optimization, monitor) that
  the loop and its helpers read.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from mt.config import Config
from mt.training import distributed
from mt.training.guards import rng_state, set_rng_state
from mt.training.monitor import TrainingMonitor
from mt.training.step import Optimization
from mt.training.training_data import TrainingData


@dataclass
class TrainState:
    """Where training stands, besides weights and optimizer: saved into and restored from each
    checkpoint as one object (top-level checkpoint keys, one per field, plus ``rng``).

    Attributes:
        step: updates done.
        epoch: the current pass over the training data, from 1.
        batches_done: batches of the current epoch already trained on, all ranks together.
        best_bleu: the best validation BLEU so far (-inf before the first validation).
        bad_validations: validations since the best one (early stopping, ``train.patience``).
        nonfinite_steps: updates skipped for a non-finite loss or gradient, in total.
        nonfinite_in_a_row: the current run of such skips (``train.max_nonfinite``).
        elapsed_s: training wall-clock in seconds, validations included, over every session of
            the run (a resumed run continues the count); read it with :meth:`elapsed`.
    """

    step: int = 0
    epoch: int = 1
    batches_done: int = 0
    best_bleu: float = float("-inf")
    bad_validations: int = 0
    nonfinite_steps: int = 0
    nonfinite_in_a_row: int = 0
    elapsed_s: float = 0.0

    def __post_init__(self) -> None:
        self._clock_start = time.perf_counter() - self.elapsed_s

    def elapsed(self) -> float:
        """Seconds of training so far, earlier sessions of a resumed run included."""
        return time.perf_counter() - self._clock_start

    def state_dict(self) -> dict:
        """Every field (``elapsed_s`` as of now) and the Python/NumPy/torch RNG states."""
        return {**dataclasses.asdict(self), "elapsed_s": self.elapsed(), "rng": rng_state()}

    def load_state_dict(self, checkpoint: dict) -> None:
        """Restore from a checkpoint's keys (fields it lacks, from older checkpoints, keep their
        defaults) and set the RNG states it saved."""
        for f in dataclasses.fields(self):
            if f.name in checkpoint:
                setattr(self, f.name, checkpoint[f.name])
        self._clock_start = time.perf_counter() - self.elapsed_s
        set_rng_state(checkpoint["rng"])

    def record_score(self, val_bleu: float) -> bool:
        """Note a validation score; True when it beats the best so far."""
        improved = val_bleu > self.best_bleu
        if improved:
            self.best_bleu, self.bad_validations = val_bleu, 0
        else:
            self.bad_validations += 1
        return improved


def early_stop(state: TrainState, patience: int) -> bool:
    """True when ``patience`` (> 0) validations in a row brought no better val BLEU."""
    return patience > 0 and state.bad_validations >= patience


@dataclass
class LossMeter:
    """The training loss and its named terms summed over target tokens since ``started``."""

    tokens: int = 0
    loss: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def add(self, tokens: int, loss: float, terms: dict[str, float]) -> None:
        self.tokens, self.loss = self.tokens + tokens, self.loss + loss
        for name, value in terms.items():
            self.terms[name] = self.terms.get(name, 0.0) + value

    def per_token(self) -> dict[str, float]:
        """``{"train_loss": …, "{term}_loss": …}`` in nats per target token."""
        tokens = max(self.tokens, 1)
        return {"train_loss": self.loss / tokens, **{f"{k}_loss": v / tokens for k, v in self.terms.items()}}

    def tokens_per_s(self, now: float | None = None) -> float:
        return self.tokens / max((now or time.perf_counter()) - self.started, 1e-9)


@dataclass
class Run:
    """The fixed parts of a training run that the loop and its helpers read.

    Attributes:
        cfg: the root config.
        out_dir: the run directory (rank 0 writes there).
        context: this process's place in a torchrun job.
        data: tokenizer, splits, token ids and validation batches.
        opt: model, objective, optimizer, schedule, scaler.
        monitor: rank 0's learning curves and TensorBoard; None on other ranks.
        static_state: what every checkpoint holds besides weights and training state (model
            config, tokenizer, languages, decoding defaults, the whole config).
        frozen_metrics: with ``train.trainable=alignment``, the translation's validation
            metrics, measured once (:func:`validate_translation`): its weights do not change.
    """

    cfg: Config
    out_dir: Path
    context: distributed.Context
    data: TrainingData
    opt: Optimization
    monitor: TrainingMonitor | None
    static_state: dict
    frozen_metrics: dict | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def checkpoint(self, state: TrainState) -> dict:
        """Everything needed to continue exactly from here (plain data and tensors only)."""
        return {**self.static_state, **self.opt.state_dict(), **state.state_dict()}
