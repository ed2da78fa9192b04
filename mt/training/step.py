"""One update, as a function a test or a benchmark can call on a few batches.

- :class:`Optimization`: model, objective (:mod:`mt.training.objective`), AdamW, schedule
  (:mod:`mt.training.schedule`) and GradScaler, built by :func:`build_optimization`;
- :func:`train_step`: one update (accumulation, DDP ``no_sync``, autocast, GradScaler,
  clipping, the non-finite skip);
- :func:`epoch_updates`: an epoch's batches cut into updates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mt.config import TrainConfig
from mt.data import batching
from mt.device import autocast
from mt.model.transformer import Transformer
from mt.training import distributed
from mt.training.objective import Objective
from mt.training.schedule import build_optimizer


@dataclass
class Optimization:
    """What one update touches.

    Attributes:
        model: the parameters being trained (gradients are clipped over them).
        objective: ``(src_ids, tgt_in, tgt_out) → (total, terms, n_tokens)`` (an
            :class:`~mt.training.objective.Objective`, possibly inside DistributedDataParallel or
            ``torch.compile``).
        optimizer, scheduler: AdamW and its learning-rate schedule (:func:`build_optimizer`).
        scaler: fp16's GradScaler (disabled, a pass-through, for fp32/bf16).
        device, precision: where and how the forward runs (``fp32``, ``bf16``, ``fp16``).
        clip_norm: gradient-norm clipping threshold (0 = off).
        world_size: processes sharing each update (DDP averages their gradients).
        no_sync: DDP's ``no_sync`` (gradients of all but an update's last batch stay local).
    """

    model: torch.nn.Module
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    clip_norm: float
    world_size: int = 1
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if "scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["scaler"])


def build_optimization(
    model: Transformer,
    cfg: TrainConfig,
    device: torch.device,
    precision: str,
    context: distributed.Context = distributed.Context(),
    objective: torch.nn.Module | None = None,
    partner: Transformer | None = None,
) -> Optimization:
    """The trainer's objective (DDP-wrapped under torchrun, compiled with ``train.compile``),
    AdamW, schedule and GradScaler for ``model`` (already on ``device``).

    Args:
        objective: None = ``Objective(model, train.label_smoothing)``; another module of the
            same call signature (e.g. a reference model's, in ``scripts/bench_train.py``).
        partner: the other direction's aligner stage, for ``train.agreement_weight``
            (:func:`mt.training.init_from.agreement_partner`).
    """
    optimizer, scheduler = build_optimizer(list(model.parameters()), cfg)
    if objective is None:
        alignment = model.cfg.alignment
        objective = Objective(
            model, cfg.label_smoothing, cfg.alignment_weight, alignment.layer, alignment.heads, alignment.full_context,
            frozen=cfg.trainable == "alignment", partner=partner, agreement_weight=cfg.agreement_weight,
        )  # fmt: skip
    no_sync = contextlib.nullcontext
    if context.distributed:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
        no_sync = objective.no_sync
    if cfg.compile:
        objective = torch.compile(objective, dynamic=True)
    return Optimization(
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"),  # fp16 gradients underflow unscaled
        device=device,
        precision=precision,
        clip_norm=cfg.clip_norm,
        world_size=context.world_size,
        no_sync=no_sync,
    )


@dataclass
class StepResult:
    """One update's outcome on this process.

    Attributes:
        loss: the objective's total summed over this process's batches (nats).
        terms: each named term summed likewise.
        finite: False when the gradient norm was not finite and the update was skipped.
        grad_norm: the gradient norm before clipping.
    """

    loss: float
    terms: dict[str, float]
    finite: bool
    grad_norm: float


def train_step(opt: Optimization, batches: Sequence[batching.Batch], update_tokens: int) -> StepResult:
    """One update from this process's share of the update's batches.

    Gradients of the batches are summed (DDP all-reduces once, after the last) and scaled so
    that the update is the gradient of the loss summed over all its target tokens divided by
    ``update_tokens``: accumulated batches and processes give the update of their union. The
    update is skipped (``finite`` False; the GradScaler still updates its scale) when the
    gradient norm is not finite: one bad batch must not poison the weights.

    Args:
        opt: model, objective, optimizer, schedule and scaler.
        batches: this process's batches of the update (on any device; moved to ``opt.device``).
        update_tokens: target tokens (EOS included) of the whole update, every process's
            batches together.

    Returns: the summed loss and terms of these batches, whether the update was applied, and
        the gradient norm.
    """
    opt.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, torch.Tensor] = {}  # "total" and each named term, summed over the batches
    for k, batch in enumerate(batches):
        batch = batch.to(opt.device)
        with contextlib.nullcontext() if k == len(batches) - 1 else opt.no_sync():  # all-reduce once
            with autocast(opt.device, opt.precision):
                total, batch_terms, _ = opt.objective(batch.src_ids, batch.tgt_in, batch.tgt_out, batch.alignment)
            # DDP averages over processes: scale so the update is the mean over all its tokens
            opt.scaler.scale(total * (opt.world_size / update_tokens)).backward()
        for name, value in {"total": total, **batch_terms}.items():
            sums[name] = sums[name] + value.detach() if name in sums else value.detach()
    loss, *term_values = torch.stack(list(sums.values())).tolist()  # one host sync for all of them
    terms = dict(zip(list(sums)[1:], term_values))
    opt.scaler.unscale_(opt.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(opt.model.parameters(), opt.clip_norm or float("inf"))
    finite = bool(torch.isfinite(norm))
    if finite:
        opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    if finite:
        opt.scheduler.step()
    return StepResult(loss, terms, finite, float(norm))


def epoch_updates(
    src_lens: Sequence[int], tgt_lens: Sequence[int], cfg: TrainConfig, epoch: int, group_size: int
) -> list[list[list[int]]]:
    """The epoch's token-budget batches (shuffled with ``train.seed + epoch``) cut into updates
    of ``group_size`` consecutive batches (processes × ``train.accum_steps``).

    A last update of fewer batches is dropped, whatever the process count, so that one process
    accumulating ``group_size`` batches and ``group_size`` processes see the same updates.

    Returns: updates → batches → indices of training pairs.
    """
    batches = batching.token_batches(src_lens, tgt_lens, cfg.batch_tokens, True, cfg.seed + epoch)
    return [batches[i : i + group_size] for i in range(0, len(batches) - group_size + 1, group_size)]
