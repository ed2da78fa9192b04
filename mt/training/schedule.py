"""The learning-rate schedule and the optimizer it drives.

- :func:`build_optimizer`: AdamW and the schedule ``train.lr_schedule`` names:
  :func:`inverse_sqrt_schedule` (warm-up, then lr·sqrt(warmup/step)), or :class:`AnnealedLR`
  (warm-up, then a cosine or linear decay to ``train.min_lr`` over the run's budget,
  :func:`budget_progress`);
- :func:`check_resumable`: a resumed run continues its saved schedule, so the settings that
  shape it must be the run's.
"""

from __future__ import annotations

import math

import torch

from mt.config import TrainConfig
from mt.errors import ConfigError

# the train keys a saved schedule carries: a resumed run continues it, so they cannot change
RESUMED_SCHEDULE_KEYS = ("lr_schedule", "lr", "min_lr", "warmup_steps")


def inverse_sqrt_schedule(warmup_steps: int):
    """LR factor: linear warm-up to 1 over ``warmup_steps``, then (warmup/step)^0.5 (Vaswani et al. 2017, §5.3)."""
    warmup = max(warmup_steps, 1)

    def factor(step: int) -> float:
        step = step + 1
        return min(step / warmup, math.sqrt(warmup / step))

    return factor


class AnnealedLR(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up over ``warmup_steps`` updates, then a decay from the peak (``train.lr``)
    to ``min_lr`` over the rest of the run's budget: ``cosine``, half a cosine period (SGDR
    without restarts, Loshchilov & Hutter 2017), or ``linear``.

    The budget is not a step count. The trainer reports the fraction of it used so far
    (:meth:`set_progress`: the largest of updates / ``train.max_steps``, minutes /
    ``train.max_minutes`` and epochs / ``train.max_epochs``), so a run bounded by
    ``train.max_minutes`` reaches ``min_lr`` at its time limit however fast its host.
    :meth:`step` (once per applied update) advances the warm-up. ``state_dict`` holds the
    progress and where the decay began, so a resumed run goes on along the same curve.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, shape: str, min_lr: float):
        self.warmup_steps, self.shape, self.min_lr = warmup_steps, shape, min_lr
        self.progress = 0.0  # fraction of the budget used, in [0, 1]
        self.decay_start: float | None = None if warmup_steps else 0.0  # the progress when the warm-up ended
        super().__init__(optimizer)

    def set_progress(self, progress: float) -> None:
        """Record the fraction of the budget used (clipped to [0, 1]) and set the next update's lr."""
        self.progress = min(max(progress, 0.0), 1.0)
        if self.decay_start is None and self.last_epoch >= self.warmup_steps:
            self.decay_start = self.progress
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        warm = min(1.0, (self.last_epoch + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.decay_start is None:
            done = 0.0
        else:
            done = (self.progress - self.decay_start) / (1 - self.decay_start) if self.decay_start < 1 else 1.0
        decay = 0.5 * (1 + math.cos(math.pi * done)) if self.shape == "cosine" else 1 - done
        return [self.min_lr + (base - self.min_lr) * warm * decay for base in self.base_lrs]


def budget_progress(cfg: TrainConfig, step: int, elapsed_s: float, epochs_done: float) -> float:
    """The fraction of the run's budget used: the largest of ``step / train.max_steps``,
    ``elapsed_s / (60 · train.max_minutes)`` and ``epochs_done / train.max_epochs`` (unset
    limits do not count; 0 when none is set).

    Args:
        step: updates applied.
        elapsed_s: training wall-clock in seconds, validations included.
        epochs_done: completed epochs plus the fraction of the current one.
    """
    used = [step / cfg.max_steps] if cfg.max_steps else []
    used += [elapsed_s / 60 / cfg.max_minutes] if cfg.max_minutes else []
    used += [epochs_done / cfg.max_epochs] if cfg.max_epochs else []
    return max(used, default=0.0)


def build_optimizer(
    parameters: list[torch.nn.Parameter], cfg: TrainConfig
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only (not on biases and
    layer-norm gains), and the schedule ``train.lr_schedule`` names: ``inverse_sqrt``
    (:func:`inverse_sqrt_schedule`), or ``cosine`` / ``linear`` (:class:`AnnealedLR`).

    ``train.optimizer_impl`` picks PyTorch's kernel: ``fused`` (one kernel for all parameters),
    ``foreach`` (batched per tensor list) or ``for-loop``.
    """
    decay = [p for p in parameters if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in parameters if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        fused=cfg.optimizer_impl == "fused",
        foreach=cfg.optimizer_impl == "foreach",
    )
    if cfg.lr_schedule == "inverse_sqrt":
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt_schedule(cfg.warmup_steps))
    return optimizer, AnnealedLR(optimizer, cfg.warmup_steps, cfg.lr_schedule, cfg.min_lr)


def check_resumable(checkpoint: dict, cfg: TrainConfig) -> None:
    """Refuse a resume whose schedule settings differ from the run's: the optimizer and schedule
    continue from their saved state (base rates, ``min_lr``, warm-up, progress), so a new
    ``train.lr``, ``train.min_lr``, ``train.warmup_steps`` or ``train.lr_schedule`` could not
    take effect.

    Args:
        checkpoint: the checkpoint being resumed (its ``config``, or for ``lr_schedule`` its
            ``scheduler`` state when it holds no config).
        cfg: the resumed run's ``train`` node.

    Raises:
        ConfigError: one line naming the first key whose value differs from the run's, with
            the two ways on: resume with the run's value, or start a new run from its weights
            with ``train.init_from``.
    """
    saved = dict(checkpoint.get("config", {}).get("train", {}))
    # AnnealedLR keeps its shape in its state; LambdaLR (inverse_sqrt) keeps none
    saved.setdefault("lr_schedule", checkpoint["scheduler"].get("shape", "inverse_sqrt"))
    for key in RESUMED_SCHEDULE_KEYS:
        value = getattr(cfg, key)
        if key in saved and saved[key] != value:
            raise ConfigError(
                f"config key 'train.{key}' = {value!r}: the run being resumed used {saved[key]!r}, and its schedule "
                f"continues as saved; resume with train.{key}={saved[key]}, or start a new run from its weights with "
                "train.init_from"
            )
