"""``train(cfg, out_dir)``: data → tokenizer → model → the training loop → test scores.

The pieces, in the order a run meets them:

- :class:`TrainState`: where training stands (step, epoch, batch position, best score,
  early-stopping and non-finite counters, elapsed time, RNG states), saved and restored whole;
- :class:`Optimization`: model, objective (:mod:`mt.training.objective`), AdamW, schedule and GradScaler;
- :func:`epoch_updates`: an epoch's batches cut into updates;
- :func:`train_step`: one update (accumulation, DDP ``no_sync``, autocast, GradScaler, clipping,
  the non-finite skip);
- :func:`validate`: the validation metrics, no I/O; :func:`record_validation` and
  :func:`save_checkpoints` write them; :func:`early_stop` decides;
- :func:`training_loop`: the loop that ties them together; :func:`train`: the whole run.

Everything a run produces goes into ``out_dir``:

- ``sentencepiece.model`` (joint) or ``sentencepiece.{src,tgt}.model``;
- ``checkpoints/best.pt`` (best val BLEU) and ``checkpoints/last.pt`` (latest validation, or the
  update a SIGINT/SIGTERM stopped at: everything needed to resume);
- ``checkpoints/step-S.pt``: the last max(``train.keep_checkpoints``, ``train.average_last``)
  validation checkpoints and the ``train.average_best`` with the highest val BLEU;
  ``checkpoints/averaged.pt`` (``train.average_last``) and ``averaged_best.pt``
  (``train.average_best``), their averages;
- ``metrics.jsonl``: one JSON object per validation with step, epoch, train_loss (the label
  smoothed objective per target token), ``{term}_loss`` for each named term of the objective
  (``xent_loss``), val_loss (plain cross-entropy per target token) and ``val_{term}_loss``,
  val_bleu, val_chrf, lr, tokens_per_s (target tokens per second of training since the previous
  validation), elapsed_s (wall-clock since training started, validations included) and
  nonfinite_steps (updates skipped for a non-finite loss or gradient, in total), rss_mb and
  peak_rss_mb (the training process's resident memory now and at its peak, MiB); with
  ``data.alignment_gold`` also ``aer`` (default method and layer; the aligner's, also as
  ``aer_aligner``, when the model has one) and ``aer_by_layer`` ({method: [AER per decoder
  layer]}), and with ``train.alignment_weight`` > 0 ``imitation_aer`` (against the training
  links, :func:`mt.alignment.align.imitation_aer`), rates in [0, 1];
- ``{test_split}.hyp.{tgt_lang}`` and ``test_scores.json`` (BLEU, chrF, signatures).

Under ``torchrun`` every rank trains on its own share of each update's batches
(DistributedDataParallel, :mod:`mt.training.distributed`) and rank 0 alone validates and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from mt.data import batching
from mt.data import corpora
from mt.training import distributed
from mt.alignment.align import aer_report, imitation_aer
from mt.model.aligner import LEXICON_PREFIXES, WordLexicon
from mt.training.average import average_run, best_checkpoints, step_checkpoints
from mt.model.checkpoint import load_checkpoint, save_checkpoint
from mt.config import Config, TrainConfig, to_dict
from mt.device import autocast, resolve_device, resolve_precision
from mt.errors import CheckpointError, ConfigError
from mt.inference.evaluate import score, translate
from mt.training.init_from import init_config
from mt.training.guards import (
    StopSignal,
    TrainingFailed,
    TrainingInterrupted,
    check_free_space,
    check_writable,
    rng_state,
    set_rng_state,
)
from mt.training.memory import loaded_allocator, process_memory_mb, release_free_memory, set_onednn_cache_capacity
from mt.model.transformer import Transformer
from mt.training.monitor import TrainingMonitor, read_metrics, validation_heatmaps
from mt.training.objective import Objective, validation_losses
from mt.data.tokenizer import Tokenizer
from mt.training.training_data import TrainingData, prepare_data

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ state
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


# ------------------------------------------------------------------------------ optimisation
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
) -> Optimization:
    """The trainer's objective (DDP-wrapped under torchrun, compiled with ``train.compile``),
    AdamW, schedule and GradScaler for ``model`` (already on ``device``).

    Args:
        objective: None = ``Objective(model, train.label_smoothing)``; another module of the
            same call signature (e.g. a reference model's, in ``scripts/bench_train.py``).
    """
    optimizer, scheduler = build_optimizer(list(model.parameters()), cfg)
    if objective is None:
        alignment = model.cfg.alignment
        objective = Objective(
            model, cfg.label_smoothing, cfg.alignment_weight, alignment.layer, alignment.heads, alignment.full_context,
            frozen=cfg.trainable == "alignment", rdrop_alpha=cfg.rdrop_alpha,
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


# ------------------------------------------------------------------------------- validation
def validate(
    model: Transformer,
    data: TrainingData,
    cfg: Config,
    device: torch.device,
    precision: str,
    translation_metrics: dict | None = None,
) -> dict:
    """Validation metrics of ``model``; writes nothing and leaves the model in eval mode.

    Args:
        translation_metrics: :func:`validate_translation`'s result for this model's translation
            weights, when they cannot have changed (``train.trainable=alignment``); None =
            compute them.

    Returns: ``val_loss`` (plain cross-entropy per target token), ``val_{term}_loss`` per
        objective term, ``val_bleu`` and ``val_chrf`` (sacreBLEU, ``train.valid_beam_size``), with a gold
        alignment set ``aer`` and ``aer_by_layer`` (:func:`mt.alignment.align.aer_report`), and with
        alignment targets ``imitation_aer`` (:func:`mt.alignment.align.imitation_aer`).
    """
    metrics = dict(translation_metrics or validate_translation(model, data, cfg, device, precision))
    model.eval()
    guided = cfg.train.alignment_weight > 0
    with autocast(device, precision):
        if data.gold is not None:
            supervised = guided and model.aligner is None  # the weight trains the aligner where there is one
            metrics.update(aer_report(model, data.gold_segmentations, data.gold, cfg.decoding.batch_size, device, supervised))
        if guided and data.imitation is not None:
            metrics["imitation_aer"] = round(
                imitation_aer(model, data.imitation_segmentations, data.imitation, cfg.decoding.batch_size, device), 5
            )
    return metrics


def validate_translation(model: Transformer, data: TrainingData, cfg: Config, device: torch.device, precision: str) -> dict:
    """``val_loss``, ``val_{term}_loss``, ``val_bleu`` and ``val_chrf`` of :func:`validate`."""
    losses = validation_losses(model, data.valid_batches, device, precision)
    valid_decoding = dataclasses.replace(cfg.decoding, beam_size=cfg.train.valid_beam_size)
    with autocast(device, precision):
        hypotheses = translate(model, data.tokenizer, data.splits["valid"]["src"], valid_decoding, device)
    scores = score(hypotheses, data.splits["valid"]["tgt"])
    return {
        "val_loss": losses["xent"],
        **{f"val_{name}_loss": value for name, value in losses.items()},
        "val_bleu": scores["bleu"],
        "val_chrf": scores["chrf"],
    }


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


def record_validation(run: Run, record: dict, improved: bool) -> None:
    """Append ``record`` to ``metrics.jsonl``, redraw the curves (and TensorBoard), log one line."""
    with (run.out_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    heatmaps = None
    if run.monitor.tensorboard and run.cfg.train.heatmap_sentences:
        n, valid, device = run.cfg.train.heatmap_sentences, run.data.splits["valid"], run.opt.device
        with autocast(device, run.opt.precision):
            heatmaps = validation_heatmaps(run.opt.model, run.data.tokenizer, valid["src"][:n], valid["tgt"][:n], device)
    run.monitor.log_validation(record, heatmaps)
    log.info(
        "step %d epoch %d | train_loss %.3f val_loss %.3f val_bleu %.2f%s%s | lr %.2e | %.0f tok/s",
        record["step"], record["epoch"], record["train_loss"], record["val_loss"], record["val_bleu"],
        " (best)" if improved else "", f" AER {100 * record['aer']:.1f}" if "aer" in record else "",
        record["lr"], record["tokens_per_s"],
    )  # fmt: skip


def save_checkpoints(run: Run, checkpoint: dict, step: int, improved: bool) -> None:
    """``last.pt``; ``best.pt`` when improved; ``step-S.pt`` keeping the newest
    max(``train.keep_checkpoints``, ``train.average_last``) and the ``train.average_best`` with
    the highest val BLEU (``checkpoint`` holds ``val_bleu``)."""
    save_checkpoint(checkpoint, run.checkpoint_dir / "last.pt")
    if improved:
        save_checkpoint(checkpoint, run.checkpoint_dir / "best.pt")
    newest, best = max(run.cfg.train.keep_checkpoints, run.cfg.train.average_last), run.cfg.train.average_best
    if not newest and not best:
        return
    save_checkpoint(checkpoint, run.checkpoint_dir / f"step-{step}.pt")
    existing = step_checkpoints(run.out_dir)
    keep = set(existing[-newest:]) if newest else set()
    if best:
        try:
            keep.update(best_checkpoints(run.out_dir, best))
        except CheckpointError as error:  # a step-S.pt not written by this trainer: delete nothing
            log.warning("%s; keeping every step checkpoint", error)
            return
    for old in existing:
        if old not in keep:
            old.unlink()


def validation_round(run: Run, state: TrainState, interval: LossMeter) -> bool:
    """Rank 0 validates, records and checkpoints; every rank returns whether to stop early."""
    stop = None
    if run.context.is_main:
        train_seconds = time.perf_counter() - interval.started
        metrics = validate(run.opt.model, run.data, run.cfg, run.opt.device, run.opt.precision, run.frozen_metrics)
        record = {
            "step": state.step,
            "epoch": state.epoch,
            **interval.per_token(),
            **metrics,
            "lr": run.opt.scheduler.get_last_lr()[0],
            "tokens_per_s": interval.tokens / max(train_seconds, 1e-9),
            "elapsed_s": state.elapsed(),
            "nonfinite_steps": state.nonfinite_steps,
            **process_memory_mb(),
        }
        # a frozen translation model scores the same each time: the newest aligner is the best
        improved = run.frozen_metrics is not None or state.record_score(metrics["val_bleu"])
        record_validation(run, record, improved)
        save_checkpoints(run, {**run.checkpoint(state), "val_bleu": metrics["val_bleu"]}, state.step, improved)
        stop = early_stop(state, run.cfg.train.patience)
    set_train_mode(run.opt.model, run.cfg.train.trainable)
    return distributed.broadcast(run.context, stop)


def set_train_mode(model: Transformer, trainable: str) -> None:
    """Training mode for what learns: with ``trainable=alignment`` only the aligner (dropout on);
    the frozen translation model stays in eval mode, so the aligner learns from the states it
    will read at inference."""
    model.train(trainable == "all")
    if trainable == "alignment":
        model.aligner.train()


# ------------------------------------------------------------------------------------ the loop
def skip_nonfinite(state: TrainState, cfg: TrainConfig, checkpoint_dir: Path) -> None:
    """Count a skipped update.

    Raises:
        TrainingFailed: ``train.max_nonfinite`` skips in a row.
    """
    state.nonfinite_steps, state.nonfinite_in_a_row = state.nonfinite_steps + 1, state.nonfinite_in_a_row + 1
    log.warning("non-finite loss or gradient at step %d: update skipped", state.step + 1)
    if state.nonfinite_in_a_row >= cfg.max_nonfinite:
        raise TrainingFailed(
            f"{state.nonfinite_in_a_row} non-finite losses in a row (train.max_nonfinite) at step {state.step}; "
            f"stopped without saving, {checkpoint_dir / 'last.pt'} holds the last good state (try a lower train.lr)"
        )


def limit_reached(cfg: TrainConfig, state: TrainState, time_up: bool) -> str | None:
    """Why training stops after this update (``train.max_steps``, ``train.max_minutes``), or None."""
    if cfg.max_steps and state.step >= cfg.max_steps:
        return f"reached train.max_steps={cfg.max_steps}"
    if time_up:
        return f"reached train.max_minutes={cfg.max_minutes}"
    return None


def training_loop(run: Run, state: TrainState) -> str:
    """Update, validate and checkpoint until a stop condition; returns the reason.

    Raises:
        TrainingInterrupted: SIGINT/SIGTERM (after saving ``last.pt`` at the update it stopped).
        TrainingFailed: too many non-finite updates in a row.
    """
    cfg, context, data = run.cfg.train, run.context, run.data
    if cfg.max_steps and state.step >= cfg.max_steps:  # resumed a run that had already finished training
        return f"reached train.max_steps={cfg.max_steps}"
    # one update = world_size x accum_steps consecutive batches of the epoch's order; rank r takes
    # every world_size-th of them, so 2 processes see what 1 process with accum_steps=2 sees
    group_size = context.world_size * cfg.accum_steps
    window, interval = LossMeter(), LossMeter()  # progress-bar and validation windows
    progress = tqdm(initial=state.step, total=cfg.max_steps or None, desc="train", unit="step",
                    disable=None if context.is_main else True, dynamic_ncols=True)  # fmt: skip
    set_train_mode(run.opt.model, cfg.trainable)
    first_epoch = True
    with StopSignal() as stop_signal, contextlib.closing(progress):
        while True:
            if data.sampling is not None:  # subword regularization: this epoch's segmentation
                started = time.perf_counter()
                ratio = data.resample(cfg.seed + state.epoch, context)
                log.log(logging.INFO if first_epoch else logging.DEBUG,
                        "epoch %d: subwords sampled in %.1f s, %.2f× the target pieces of the best segmentation",
                        state.epoch, time.perf_counter() - started, ratio)  # fmt: skip
                first_epoch = False
            updates = epoch_updates(data.src_lens, data.tgt_lens, cfg, state.epoch, group_size)
            epoch_batches = sum(len(group) for group in updates)
            for group in updates[state.batches_done // group_size :]:
                update_tokens = sum(data.tgt_lens[i] + 1 for indices in group for i in indices)  # EOS included
                mine = [data.batch(indices) for indices in group[context.rank :: context.world_size]]
                result = train_step(run.opt, mine, update_tokens)
                state.batches_done += len(group)
                elapsed = state.elapsed() if context.is_main else 0.0  # rank 0's clock
                time_up = context.is_main and cfg.max_minutes and elapsed / 60 >= cfg.max_minutes
                loss, time_up, signalled, elapsed, *terms = distributed.sum_across(
                    context, [result.loss, float(bool(time_up)), float(bool(stop_signal.received)), elapsed, *result.terms.values()], run.opt.device
                )  # fmt: skip
                stop_reason = None
                if not result.finite:
                    skip_nonfinite(state, cfg, run.checkpoint_dir)
                else:
                    state.step, state.nonfinite_in_a_row = state.step + 1, 0
                    if isinstance(run.opt.scheduler, AnnealedLR):  # every rank anneals by rank 0's clock
                        epochs_done = state.epoch - 1 + state.batches_done / epoch_batches
                        run.opt.scheduler.set_progress(budget_progress(cfg, state.step, elapsed, epochs_done))
                    terms = dict(zip(result.terms, terms))
                    window.add(update_tokens, loss, terms)
                    interval.add(update_tokens, loss, terms)
                    progress.update(1)
                    if cfg.release_memory_every and state.step % cfg.release_memory_every == 0:
                        release_free_memory()  # new batch shapes would otherwise grow the heap for good
                    if state.step % cfg.log_every == 0:
                        now = time.perf_counter()
                        align = {"align": f"{window.terms['align'] / window.tokens:.3f}"} if "align" in window.terms else {}
                        progress.set_postfix(loss=f"{window.loss / window.tokens:.3f}", **align, lr=f"{run.opt.scheduler.get_last_lr()[0]:.2e}",
                                             tok_s=f"{window.tokens_per_s(now):.0f}", epoch=state.epoch)  # fmt: skip
                        window = LossMeter(started=now)
                    stop_reason = limit_reached(cfg, state, bool(time_up))
                    if state.step % cfg.valid_every == 0 or stop_reason:
                        if validation_round(run, state, interval) and stop_reason is None:
                            stop_reason = f"no better val BLEU in {cfg.patience} validations (train.patience)"
                        interval = LossMeter()
                if signalled:
                    if context.is_main:
                        save_checkpoint(run.checkpoint(state), run.checkpoint_dir / "last.pt")
                    raise TrainingInterrupted(stop_signal.received or signal.SIGTERM, state.step, run.out_dir)
                if stop_reason:
                    return stop_reason
            if cfg.max_epochs and state.epoch >= cfg.max_epochs:  # the epoch is complete
                if state.step % cfg.valid_every:
                    validation_round(run, state, interval)
                return f"reached train.max_epochs={cfg.max_epochs}"
            state.epoch, state.batches_done = state.epoch + 1, 0


# ------------------------------------------------------------------------------------ the run
def train(cfg: Config, out_dir: str | Path, command_line_keys: Sequence[str] = ()) -> dict:
    """Train a model as configured and score it on the test split.

    Args:
        cfg: the validated root config.
        out_dir: the run directory (Hydra's output dir); created if missing. Under torchrun only
            rank 0 writes into it.
        command_line_keys: the config keys the command line set
            (:func:`mt.config.command_line_keys`): with ``train.init_from`` a model key among them
            must agree with the checkpoint.

    Returns: the test scores (as written to ``test_scores.json``); ``{}`` on ranks other than 0.

    Raises:
        DataError: corpus files missing or inconsistent; the run dir not writable or too full.
        ConfigError: ``train.resume`` names no checkpoint, or one trained with another
            ``train.lr_schedule``; a model key contradicts ``train.init_from``'s checkpoint.
        CheckpointError: ``train.init_from`` is not a checkpoint whose weights fit the model.
        TrainingInterrupted, TrainingFailed: see :func:`training_loop`.
    """
    out_dir = Path(out_dir)
    context, device = distributed.setup(resolve_device(cfg.train.device))
    monitor = None
    try:
        if not context.is_main:  # one log, one progress bar: rank 0's
            logging.getLogger("mt").setLevel(logging.WARNING)
        if context.is_main:
            check_writable(out_dir / "checkpoints")
        resume = load_resume(cfg.train.resume, out_dir / "checkpoints")
        saved_schedule = resume["scheduler"].get("shape", "inverse_sqrt") if resume else None  # AnnealedLR keeps its shape
        if saved_schedule not in (None, cfg.train.lr_schedule):  # before any data work
            raise ConfigError(
                f"config key 'train.lr_schedule' = {cfg.train.lr_schedule!r}: the run being resumed used "
                f"{saved_schedule!r}; resume with train.lr_schedule={saved_schedule}, or start a new run from its "
                "weights with train.init_from"
            )
        initial = None
        if resume is not None and cfg.train.init_from:  # a resumed stage: the model and data it saved
            cfg = init_config(resume, cfg, command_line_keys, cfg.train.resume)
        elif cfg.train.init_from:
            try:
                initial = load_checkpoint(cfg.train.init_from, mmap=True)
            except CheckpointError as error:
                raise CheckpointError(f"train.init_from: {error}") from None
            cfg = init_config(initial, cfg, command_line_keys, cfg.train.init_from)
            log.info("starting from the weights of %s (step %s)", cfg.train.init_from, initial.get("step"))
        if context.is_main:  # built before data work, to fail early
            records = read_metrics(out_dir / "metrics.jsonl", max_step=resume["step"]) if resume else ()
            monitor = TrainingMonitor(out_dir, tensorboard=cfg.train.tensorboard, records=records,
                                      start_step=resume["step"] if resume else 0)  # fmt: skip
        datasets.disable_progress_bars()  # our own tqdm bar is the one to watch
        if cfg.train.onednn_cache_capacity >= 0:  # before the first bf16 matmul builds a primitive
            set_onednn_cache_capacity(cfg.train.onednn_cache_capacity)
        allocator = loaded_allocator()
        log.info("memory allocator: %s%s", allocator, "" if allocator != "glibc" or device.type != "cpu" else
                 " (tcmalloc or jemalloc lowers the peak memory; README, Memory)")  # fmt: skip
        seed_everything(cfg.train.seed)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        precision = resolve_precision(cfg.train.precision, device)

        data = prepare_data(cfg, context, resume or initial)
        tokenizer = data.tokenizer
        model = Transformer(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).to(device)
        if initial is not None:
            load_initial_weights(model, initial, cfg.train.init_from)
            del initial
        if cfg.train.trainable == "alignment":  # only the aligner learns
            for _, parameter in model.translation_parameters():
                parameter.requires_grad_(False)
        if model.aligner is not None and (cfg.model.aligner.lexicon or cfg.model.aligner.word_lexicon) and resume is None:
            fill_lexicon(model, data, cfg)
        log.info(
            "model: %.2fM parameters (%.2fM trained), device %s, precision %s, %d process(es) × %d accumulated batch(es) per update",
            sum(p.numel() for p in model.parameters()) / 1e6, sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
            device, precision, context.world_size, cfg.train.accum_steps,
        )  # fmt: skip
        opt = build_optimization(model, cfg.train, device, precision, context)
        static_state = {
            "model_config": to_dict(cfg.model),
            "tokenizer": tokenizer.state(),
            "data": {"src_lang": cfg.data.src_lang, "tgt_lang": cfg.data.tgt_lang},
            "decoding": to_dict(cfg.decoding),
            "config": to_dict(cfg),
        }
        run = Run(cfg, out_dir, context, data, opt, monitor, static_state)
        if cfg.train.trainable == "alignment" and context.is_main:
            run.frozen_metrics = validate_translation(model, data, cfg, device, precision)
        if context.is_main:
            data.write_tokenizer(out_dir, cfg.data.src_lang, cfg.data.tgt_lang)
            check_free_space(
                run.checkpoint_dir, model, max(cfg.train.keep_checkpoints, cfg.train.average_last) + cfg.train.average_best
            )
            if resume is None:
                (out_dir / "metrics.jsonl").write_text("")
        state = TrainState()
        if resume is not None:
            opt.load_state_dict(resume)
            state.load_state_dict(resume)
            if state.batches_done % (context.world_size * cfg.train.accum_steps):
                log.warning("resumed with another world size × train.accum_steps: the epoch restarts at a nearby batch")
            log.info("resumed at step %d (epoch %d, batch %d)", state.step, state.epoch, state.batches_done)

        stop_reason = training_loop(run, state)
        training_seconds = state.elapsed()
        log.info("stopped after %d steps, %.1f min: %s", state.step, training_seconds / 60, stop_reason)
        if monitor is not None:
            monitor.close()
            monitor = None
        return score_test(run, state.step, training_seconds) if context.is_main else {}
    finally:
        if monitor is not None:
            monitor.close()
        distributed.teardown(context)


def fill_lexicon(model: Transformer, data: TrainingData, cfg: Config) -> None:
    """Count the teacher's links of the training pairs into the aligner's lexicon
    (:func:`mt.model.aligner.count_links`; the config's validation made sure there are links)."""
    tokenizer = data.tokenizer
    for lexicon in (model.aligner.lexicon, model.aligner.word_lexicon):
        if lexicon is None:
            continue
        started = time.perf_counter()
        if isinstance(lexicon, WordLexicon):
            pieces = [side.id_to_piece(list(range(side.get_piece_size()))) for side in (tokenizer.src, tokenizer.tgt)]
            lexicon.set_word_starts(*pieces)
        n_entries = lexicon.count(data.train_src, data.train_tgt, data.train_links, tokenizer.eos_id, cfg.model.aligner.null)
        log.info("aligner lexicon: %d %s pairs counted in %.1f s", n_entries, lexicon.unit, time.perf_counter() - started)


def load_initial_weights(model: Transformer, state: dict, source: str) -> None:
    """``train.init_from``: the checkpoint's weights into ``model``; an aligner the checkpoint
    lacks keeps its fresh initialisation.

    Raises:
        CheckpointError: weights missing or of another shape (``source`` named).
    """
    own, saved = model.state_dict(), state["model"]
    misfits = [key for key in own if key not in saved and not key.startswith("aligner.")]
    misfits += [
        key
        for key, tensor in saved.items()
        if key not in own or (own[key].shape != tensor.shape and not key.startswith(LEXICON_PREFIXES))  # any size
    ]
    if misfits:
        raise CheckpointError(f"train.init_from={source}: its weights do not fit the model ({', '.join(misfits[:4])})")
    model.load_state_dict(saved, strict=False)


def load_resume(resume: str | None, checkpoint_dir: Path) -> dict | None:
    """The checkpoint ``train.resume`` names (``auto`` = ``checkpoint_dir/last.pt``), or None.

    Raises:
        ConfigError: no such file.
    """
    if not resume:
        return None
    path = checkpoint_dir / "last.pt" if resume == "auto" else Path(resume)
    if not path.is_file():
        hint = " (auto continues hydra.run.dir=<the run dir>)" if resume == "auto" else ""
        raise ConfigError(f"config key 'train.resume' = {resume!r}: {path} not found{hint}")
    log.info("resuming from %s", path)
    return load_checkpoint(path)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------ test scores
def score_test(run: Run, steps: int, training_seconds: float) -> dict:
    """Score ``best.pt`` on the test split, and the averages of the last ``train.average_last``
    (``averaged``) and of the ``train.average_best`` best (``averaged_best``) validation
    checkpoints; write the hypotheses and ``test_scores.json`` (with the run's peak resident
    memory, ``peak_rss_mb``).

    Returns: what ``test_scores.json`` holds.
    """
    cfg, out_dir, model = run.cfg, run.out_dir, run.opt.model
    test, label = run.data.splits["test"], corpora.split_label(cfg.data.test_split)
    best = load_checkpoint(run.checkpoint_dir / "best.pt", run.opt.device)
    result = {
        "split": cfg.data.test_split,
        "src_lang": cfg.data.src_lang,
        "tgt_lang": cfg.data.tgt_lang,
        "checkpoint_step": best["step"],
        "beam_size": cfg.decoding.beam_size,
        "training_seconds": training_seconds,
        "steps": steps,
        **score_checkpoint(model, best, run.data.tokenizer, test, cfg, run.opt.precision, run.opt.device,
                           out_dir / f"{label}.hyp.{cfg.data.tgt_lang}"),
    }  # fmt: skip
    for select, key, wanted in (
        ("last", "averaged", cfg.train.average_last), ("best", "averaged_best", cfg.train.average_best)
    ):  # fmt: skip
        n_average = min(wanted, len(step_checkpoints(out_dir)))
        if n_average < wanted:
            log.warning("train.average_%s=%d but only %d validations: averaging those", select, wanted, n_average)
        if not n_average:
            continue
        averaged_path = run.checkpoint_dir / f"{key}.pt"
        try:
            averaged = average_run(out_dir, n_average, averaged_path, select)
        except CheckpointError as error:  # e.g. step checkpoints of another run in this folder: keep the scores
            log.warning("no %s.pt: %s", key, error)
            continue
        result[key] = {
            "checkpoint": str(averaged_path),
            "averaged_from": averaged["averaged_from"],
            **score_checkpoint(model, averaged, run.data.tokenizer, test, cfg, run.opt.precision, run.opt.device,
                               out_dir / f"{label}.{key}.hyp.{cfg.data.tgt_lang}"),
        }  # fmt: skip
        log.info("average of the %s %d checkpoints: %s", select, n_average, result[key]["bleu_line"])
    result["peak_rss_mb"] = process_memory_mb()["peak_rss_mb"]  # of the whole run, test scoring included
    log.info("peak resident memory of the run: %.0f MB", result["peak_rss_mb"])
    (out_dir / "test_scores.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def score_checkpoint(
    model: Transformer,
    state: dict,
    tokenizer: Tokenizer,
    test: datasets.Dataset,
    cfg: Config,
    precision: str,
    device: torch.device,
    hyp_path: Path,
) -> dict:
    """Load ``state``'s weights into ``model``, translate the test split, write the hypotheses to
    ``hyp_path`` and return sacreBLEU's scores (see :func:`mt.inference.evaluate.score`)."""
    model.load_state_dict(state["model"])
    model.eval()
    with autocast(device, precision):
        hypotheses = translate(model, tokenizer, test["src"], cfg.decoding, device)
    hyp_path.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    scores = score(hypotheses, test["tgt"])
    log.info("%s: %s", cfg.data.test_split, scores["bleu_line"])
    log.info("%s: %s", cfg.data.test_split, scores["chrf_line"])
    log.info("signatures: %s | %s", scores["bleu_signature"], scores["chrf_signature"])
    return scores
