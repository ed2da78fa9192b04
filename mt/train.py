"""``train(cfg, out_dir)``: data → tokenizer → model → the training loop → test scores.

Everything a run produces goes into ``out_dir``:

- ``sentencepiece.model`` (joint) or ``sentencepiece.{src,tgt}.model``;
- ``checkpoints/best.pt`` (best val BLEU) and ``checkpoints/last.pt`` (latest validation, or the
  update a SIGINT/SIGTERM stopped at: everything needed to resume);
- ``checkpoints/step-S.pt``: the last ``train.keep_checkpoints`` validation checkpoints, and
  ``checkpoints/averaged.pt`` with ``train.average_last``;
- ``metrics.jsonl``: one JSON object per validation with step, epoch, train_loss (label
  smoothed, per target token), val_loss (plain cross-entropy per target token), val_bleu,
  val_chrf, lr, tokens_per_s (target tokens per second of training since the previous validation)
  elapsed_s (wall-clock since training started, validations included) and nonfinite_steps
  (updates skipped for a non-finite loss or gradient, in total); with ``data.alignment_gold``
  also ``aer`` (default method and layer) and ``aer_by_layer`` ({method: [AER per decoder
  layer]}), rates in [0, 1];
- ``{test_split}.hyp.{tgt_lang}`` and ``test_scores.json`` (BLEU, chrF, signatures).

Under ``torchrun`` every rank trains on its own share of each update's batches
(DistributedDataParallel, :mod:`mt.distributed`) and rank 0 alone validates and writes.
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
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mt import batching
from mt import corpora
from mt import distributed
from mt.align import aer_report
from mt.average import average_run, step_checkpoints
from mt.checkpoint import load_checkpoint, save_checkpoint
from mt.config import Config, TrainConfig, to_dict
from mt.errors import ConfigError
from mt.guards import (
    StopSignal,
    TrainingFailed,
    TrainingInterrupted,
    check_free_space,
    check_writable,
    rng_state,
    set_rng_state,
)
from mt.evaluate import score, translate
from mt.model import Transformer
from mt.monitor import TrainingMonitor, read_metrics, validation_heatmaps
from mt.tokenizer import Tokenizer
from mt.training_data import prepare_data

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def inverse_sqrt_schedule(warmup_steps: int):
    """LR factor: linear warm-up to 1 over ``warmup_steps``, then (warmup/step)^0.5 (Vaswani et al. 2017, §5.3)."""
    warmup = max(warmup_steps, 1)

    def factor(step: int) -> float:
        step = step + 1
        return min(step / warmup, math.sqrt(warmup / step))

    return factor


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` where the device runs bf16 matmuls natively (CUDA with bf16 support;
    a CPU with AVX-512 BF16 or AMX, as oneDNN reports it), else ``fp32``; anything else as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bf16" if native else "fp32"


def build_optimizer(
    parameters: list[torch.nn.Parameter], cfg: TrainConfig
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only (not on biases and
    layer-norm gains), and the inverse-square-root schedule of :func:`inverse_sqrt_schedule`.

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
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt_schedule(cfg.warmup_steps))


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast context for the forward pass, or a no-op for fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def sequence_loss(
    model: Transformer, batch: batching.Batch, label_smoothing: float
) -> tuple[torch.Tensor, int]:
    """Summed label-smoothed cross-entropy over the batch's real target tokens.

    The vocabulary projection runs only on non-pad positions.

    Returns: (loss summed over tokens, number of target tokens).
    """
    memory, src_mask = model.encode(batch.src_ids)
    hidden, _ = model.decode(batch.tgt_in, memory, src_mask)  # (batch, tgt_len, d_model)
    real = batch.tgt_out != model.pad_id  # (batch, tgt_len)
    logits = model.logits(hidden[real])  # (n_tokens, tgt_vocab)
    loss = F.cross_entropy(logits.float(), batch.tgt_out[real], label_smoothing=label_smoothing, reduction="sum")
    return loss, int(real.sum())


class TranslationLoss(torch.nn.Module):
    """The training objective as a module, so that DistributedDataParallel and torch.compile
    can wrap one ``forward``: (src_ids, tgt_in, tgt_out) → (summed loss, target tokens)."""

    def __init__(self, model: Transformer, label_smoothing: float):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(self, src_ids: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor) -> tuple[torch.Tensor, int]:
        return sequence_loss(self.model, batching.Batch(src_ids, tgt_in, tgt_out, []), self.label_smoothing)


@torch.inference_mode()
def validation_loss(model: Transformer, batches: list[batching.Batch], device: torch.device, precision: str) -> float:
    """Plain (unsmoothed) cross-entropy per target token over the validation batches, in nats."""
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        with autocast(device, precision):
            loss, n = sequence_loss(model, batch.to(device), label_smoothing=0.0)
        total, tokens = total + float(loss), tokens + n
    return total / max(tokens, 1)


def train(cfg: Config, out_dir: str | Path) -> dict:
    """Train a model as configured and score it on the test split.

    Args:
        cfg: the validated root config.
        out_dir: the run directory (Hydra's output dir); created if missing. Under torchrun only
            rank 0 writes into it.

    Returns: the test scores (as written to ``test_scores.json``); ``{}`` on ranks other than 0.

    Raises:
        DataError: corpus files missing or inconsistent.
    """
    context, device = distributed.setup(resolve_device(cfg.train.device))
    try:
        return _train(cfg, Path(out_dir), context, device)
    finally:
        distributed.teardown(context)


def _train(cfg: Config, out_dir: Path, context: distributed.Context, device: torch.device) -> dict:
    if not context.is_main:  # one log, one progress bar: rank 0's
        logging.getLogger("mt").setLevel(logging.WARNING)
    checkpoint_dir = out_dir / "checkpoints"
    if context.is_main:
        check_writable(checkpoint_dir)
    resume_path, resume_state = None, None
    if cfg.train.resume:
        resume_path = checkpoint_dir / "last.pt" if cfg.train.resume == "auto" else Path(cfg.train.resume)
        if not resume_path.is_file():
            raise ConfigError(
                f"config key 'train.resume' = {cfg.train.resume!r}: {resume_path} not found"
                + (" (auto continues hydra.run.dir=<the run dir>)" if cfg.train.resume == "auto" else "")
            )
        resume_state = load_checkpoint(resume_path)
    monitor = None  # rank 0's learning curves and TensorBoard; built before data work, to fail early
    if context.is_main:
        monitor = TrainingMonitor(
            out_dir,
            tensorboard=cfg.train.tensorboard,
            records=read_metrics(out_dir / "metrics.jsonl", max_step=resume_state["step"]) if resume_state else (),
            start_step=resume_state["step"] if resume_state else 0,
        )
    datasets.disable_progress_bars()  # our own tqdm bar is the one to watch
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    precision = resolve_precision(cfg.train.precision, device)

    data = prepare_data(cfg, context, resume_state)
    tokenizer, splits = data.tokenizer, data.splits
    if context.is_main:
        data.write_tokenizer(out_dir, cfg.data.src_lang, cfg.data.tgt_lang)
    n_heatmaps = cfg.train.heatmap_sentences if monitor is not None and monitor.tensorboard else 0
    heatmap_src, heatmap_tgt = splits["valid"]["src"][:n_heatmaps], splits["valid"]["tgt"][:n_heatmaps]
    src_lens, tgt_lens = data.src_lens, data.tgt_lens
    data_cfg = cfg.data

    # model and optimisation
    model = Transformer(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "model: %.2fM parameters, device %s, precision %s, %d process(es) × %d accumulated batch(es) per update",
        n_params / 1e6, device, precision, context.world_size, cfg.train.accum_steps,
    )
    optimizer, scheduler = build_optimizer(list(model.parameters()), cfg.train)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # fp16 gradients underflow unscaled
    objective = TranslationLoss(model, cfg.train.label_smoothing)
    if context.distributed:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )
    no_sync = objective.no_sync if context.distributed else contextlib.nullcontext
    if cfg.train.compile:
        objective = torch.compile(objective, dynamic=True)

    if context.is_main:
        check_free_space(checkpoint_dir, model, max(cfg.train.keep_checkpoints, cfg.train.average_last))
    metrics_path = out_dir / "metrics.jsonl"
    if resume_state is None and context.is_main:
        metrics_path.write_text("")
    static_state = {
        "model_config": to_dict(cfg.model),
        "tokenizer": tokenizer.state(),
        "data": {"src_lang": data_cfg.src_lang, "tgt_lang": data_cfg.tgt_lang},
        "decoding": to_dict(cfg.decoding),
        "config": to_dict(cfg),
    }
    # one update = world_size x accum_steps consecutive batches of the epoch's order; rank r takes
    # every world_size-th of them, so 2 processes see what 1 process with accum_steps=2 sees
    group_size = context.world_size * cfg.train.accum_steps
    keep_checkpoints = max(cfg.train.keep_checkpoints, cfg.train.average_last)

    step, epoch, batches_done = 0, 1, 0  # batches_done: of the current epoch, all ranks together
    best_bleu, bad_validations, nonfinite_total, nonfinite_in_a_row = float("-inf"), 0, 0, 0
    elapsed_before = 0.0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if "scaler" in resume_state:
            scaler.load_state_dict(resume_state["scaler"])
        step, epoch, batches_done = resume_state["step"], resume_state["epoch"], resume_state["batches_done"]
        best_bleu, bad_validations = resume_state["best_bleu"], resume_state["bad_validations"]
        nonfinite_total, elapsed_before = resume_state["nonfinite_steps"], resume_state["elapsed_s"]
        set_rng_state(resume_state["rng"])
        if batches_done % group_size:
            log.warning("resumed with another world size × train.accum_steps: the epoch restarts at a nearby batch")
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume_path, step, epoch, batches_done)
    start = time.perf_counter() - elapsed_before
    window_tokens, window_loss, window_start = 0, 0.0, time.perf_counter()
    interval_tokens, interval_loss_sum, interval_start = 0, 0.0, time.perf_counter()
    stop_reason = None
    progress = tqdm(
        initial=step,
        total=cfg.train.max_steps or None,
        desc="train",
        unit="step",
        disable=None if context.is_main else True,
        dynamic_ncols=True,
    )

    def training_state() -> dict:
        """Everything needed to continue exactly from here (plain data and tensors only)."""
        return {
            **static_state,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "epoch": epoch,
            "batches_done": batches_done,
            "best_bleu": best_bleu,
            "bad_validations": bad_validations,
            "nonfinite_steps": nonfinite_total,
            "elapsed_s": time.perf_counter() - start,
            "rng": rng_state(),
        }

    def validate() -> bool:
        """Validate, log, checkpoint (rank 0); return, on every rank, True when early stopping says stop."""
        nonlocal interval_tokens, interval_loss_sum, interval_start
        stop = validate_and_save() if context.is_main else None
        interval_tokens, interval_loss_sum, interval_start = 0, 0.0, time.perf_counter()
        return distributed.broadcast(context, stop)

    def validate_and_save() -> bool:
        nonlocal best_bleu, bad_validations
        train_seconds = time.perf_counter() - interval_start
        val_loss = validation_loss(model, data.valid_batches, device, precision)
        valid_decoding = dataclasses.replace(cfg.decoding, beam_size=cfg.train.valid_beam_size)
        with autocast(device, precision):
            hypotheses = translate(model, tokenizer, splits["valid"]["src"], valid_decoding, device)
        scores = score(hypotheses, splits["valid"]["tgt"])
        val_bleu = scores["bleu"]
        alignment = {}
        if data.gold is not None:
            with autocast(device, precision):
                alignment = aer_report(model, data.gold_segmentations, data.gold, cfg.decoding.batch_size, device)
        record = {
            "step": step,
            "epoch": epoch,
            "train_loss": interval_loss_sum / max(interval_tokens, 1),
            "val_loss": val_loss,
            "val_bleu": val_bleu,
            "val_chrf": scores["chrf"],
            "lr": scheduler.get_last_lr()[0],
            "tokens_per_s": interval_tokens / max(train_seconds, 1e-9),
            "elapsed_s": time.perf_counter() - start,
            "nonfinite_steps": nonfinite_total,
            **alignment,
        }
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        heatmaps = None
        if n_heatmaps:
            with autocast(device, precision):
                heatmaps = validation_heatmaps(model, tokenizer, heatmap_src, heatmap_tgt, device)
        monitor.log_validation(record, heatmaps)
        improved = val_bleu > best_bleu
        if improved:
            best_bleu, bad_validations = val_bleu, 0
        else:
            bad_validations += 1
        state = {**training_state(), "val_bleu": val_bleu}
        save_checkpoint(state, checkpoint_dir / "last.pt")
        if improved:
            save_checkpoint(state, checkpoint_dir / "best.pt")
        if keep_checkpoints:
            save_checkpoint(state, checkpoint_dir / f"step-{step}.pt")
            for old in step_checkpoints(out_dir)[:-keep_checkpoints]:
                old.unlink()
        log.info(
            "step %d epoch %d | train_loss %.3f val_loss %.3f val_bleu %.2f%s%s | lr %.2e | %.0f tok/s",
            step, epoch, record["train_loss"], val_loss, val_bleu, " (best)" if improved else "",
            f" AER {100 * alignment['aer']:.1f}" if alignment else "", record["lr"], record["tokens_per_s"],
        )
        model.train()
        return cfg.train.patience > 0 and bad_validations >= cfg.train.patience

    def update_groups(epoch: int) -> list[list[list[int]]]:
        """The epoch's batches cut into updates of ``group_size`` batches; a last update too
        small to give every rank a batch is dropped."""
        batches = batching.token_batches(src_lens, tgt_lens, cfg.train.batch_tokens, True, cfg.train.seed + epoch)
        groups = [batches[i : i + group_size] for i in range(0, len(batches), group_size)]
        if groups and len(groups[-1]) < context.world_size:
            groups.pop()
        return groups

    if cfg.train.max_steps and step >= cfg.train.max_steps:  # resumed a run that had already finished training
        stop_reason = f"reached train.max_steps={cfg.train.max_steps}"
    model.train()
    stop_signal = StopSignal()
    with stop_signal:
        while stop_reason is None:
            for group in update_groups(epoch)[batches_done // group_size :]:
                group_tokens = sum(tgt_lens[i] + 1 for indices in group for i in indices)  # EOS included
                mine = group[context.rank :: context.world_size]
                optimizer.zero_grad(set_to_none=True)
                loss_value = 0.0
                for k, indices in enumerate(mine):
                    batch = batching.collate([data.train_src[i] for i in indices], [data.train_tgt[i] for i in indices], indices)
                    batch = batch.to(device)
                    with contextlib.nullcontext() if k == len(mine) - 1 else no_sync():  # all-reduce once
                        with autocast(device, precision):
                            loss_sum, _ = objective(batch.src_ids, batch.tgt_in, batch.tgt_out)
                        # DDP averages over ranks: scale so the update is the mean over all group tokens
                        scaler.scale(loss_sum * (context.world_size / group_tokens)).backward()
                    loss_value += float(loss_sum.detach())
                batches_done += len(group)
                scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm or float("inf"))
                minutes = (time.perf_counter() - start) / 60
                time_up = context.is_main and cfg.train.max_minutes and minutes >= cfg.train.max_minutes  # rank 0's clock
                loss_value, time_up, signalled = distributed.sum_across(
                    context, [loss_value, float(bool(time_up)), float(bool(stop_signal.received))], device
                )
                if not bool(torch.isfinite(norm)):  # skip the update: one bad batch must not poison the weights
                    scaler.update()
                    nonfinite_total, nonfinite_in_a_row = nonfinite_total + 1, nonfinite_in_a_row + 1
                    log.warning("non-finite loss or gradient at step %d: update skipped", step + 1)
                    if nonfinite_in_a_row >= cfg.train.max_nonfinite:
                        raise TrainingFailed(
                            f"{nonfinite_in_a_row} non-finite losses in a row (train.max_nonfinite) at step {step}; "
                            f"stopped without saving, {checkpoint_dir / 'last.pt'} holds the last good state "
                            "(try a lower train.lr)"
                        )
                else:
                    nonfinite_in_a_row = 0
                    scaler.step(optimizer)
                    scaler.update()
                    scheduler.step()
                    step += 1
                    window_tokens, window_loss = window_tokens + group_tokens, window_loss + loss_value
                    interval_tokens, interval_loss_sum = interval_tokens + group_tokens, interval_loss_sum + loss_value
                    progress.update(1)
                    if step % cfg.train.log_every == 0:
                        now = time.perf_counter()
                        progress.set_postfix(
                            loss=f"{window_loss / window_tokens:.3f}",
                            lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            tok_s=f"{window_tokens / (now - window_start):.0f}",
                            epoch=epoch,
                        )
                        window_tokens, window_loss, window_start = 0, 0.0, now
                    if cfg.train.max_steps and step >= cfg.train.max_steps:
                        stop_reason = f"reached train.max_steps={cfg.train.max_steps}"
                    elif time_up:
                        stop_reason = f"reached train.max_minutes={cfg.train.max_minutes}"
                    if step % cfg.train.valid_every == 0 or stop_reason:
                        if validate() and stop_reason is None:
                            stop_reason = f"no better val BLEU in {cfg.train.patience} validations (train.patience)"
                if signalled:
                    if context.is_main:
                        save_checkpoint(training_state(), checkpoint_dir / "last.pt")
                    progress.close()
                    if monitor is not None:
                        monitor.close()
                    raise TrainingInterrupted(stop_signal.received or signal.SIGTERM, step, out_dir)
                if stop_reason:
                    break
            if stop_reason is None:  # the epoch is complete
                if cfg.train.max_epochs and epoch >= cfg.train.max_epochs:
                    if step % cfg.train.valid_every:
                        validate()
                    stop_reason = f"reached train.max_epochs={cfg.train.max_epochs}"
                else:
                    epoch, batches_done = epoch + 1, 0
    progress.close()
    if monitor is not None:
        monitor.close()
    training_seconds = time.perf_counter() - start
    log.info("stopped after %d steps, %.1f min: %s", step, training_seconds / 60, stop_reason)
    if not context.is_main:
        return {}

    # score the best checkpoint (and the average of the last ones) on the test split
    test = splits["test"]
    best = load_checkpoint(checkpoint_dir / "best.pt", device)
    hyp_path = out_dir / f"{corpora.split_label(data_cfg.test_split)}.hyp.{data_cfg.tgt_lang}"
    result = {
        "split": data_cfg.test_split,
        "src_lang": data_cfg.src_lang,
        "tgt_lang": data_cfg.tgt_lang,
        "checkpoint_step": best["step"],
        "beam_size": cfg.decoding.beam_size,
        "training_seconds": training_seconds,
        "steps": step,
        **score_checkpoint(model, best, tokenizer, test, cfg, precision, device, hyp_path),
    }
    n_average = min(cfg.train.average_last, len(step_checkpoints(out_dir)))
    if n_average < cfg.train.average_last:
        log.warning("train.average_last=%d but only %d validations: averaging those", cfg.train.average_last, n_average)
    if n_average:
        averaged_path = checkpoint_dir / "averaged.pt"
        averaged = average_run(out_dir, n_average, averaged_path)
        hyp_path = out_dir / f"{corpora.split_label(data_cfg.test_split)}.averaged.hyp.{data_cfg.tgt_lang}"
        result["averaged"] = {
            "checkpoint": str(averaged_path),
            "averaged_from": averaged["averaged_from"],
            **score_checkpoint(model, averaged, tokenizer, test, cfg, precision, device, hyp_path),
        }
        log.info("average of the last %d checkpoints: %s", n_average, result["averaged"]["bleu_line"])
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
    ``hyp_path`` and return sacreBLEU's scores (see :func:`mt.evaluate.score`)."""
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
