"""Validation: :func:`validate` computes the metrics (no I/O); :func:`record_validation` and
:func:`save_checkpoints` write them and the checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging

import torch

from mt.alignment.align import aer_report, imitation_aer
from mt.config import Config
from mt.device import autocast
from mt.errors import CheckpointError
from mt.inference.evaluate import score, translate
from mt.model.checkpoint import save_checkpoint
from mt.model.transformer import Transformer
from mt.training.average import best_checkpoints, step_checkpoints
from mt.training.monitor import validation_heatmaps
from mt.training.objective import validation_losses
from mt.training.state import Run
from mt.training.training_data import TrainingData

log = logging.getLogger(__name__)


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
