"""``train(cfg, out_dir)``: data → tokenizer → model → the training loop → test scores.

Everything a run produces goes into ``out_dir``:

- ``sentencepiece.model`` (joint) or ``sentencepiece.{src,tgt}.model``;
- ``checkpoints/best.pt`` (best val BLEU) and ``checkpoints/last.pt`` (latest validation, or the
  update a SIGINT/SIGTERM stopped at: everything needed to resume);
- ``metrics.jsonl``: one JSON object per validation with step, epoch, train_loss (label
  smoothed, per target token), val_loss (plain cross-entropy per target token), val_bleu,
  lr, tokens_per_s (target tokens per second of training since the previous validation)
  elapsed_s (wall-clock since training started, validations included) and nonfinite_steps
  (updates skipped for a non-finite loss or gradient, in total); with ``data.alignment_gold``
  also ``aer`` (default method and layer) and ``aer_by_layer`` ({method: [AER per decoder
  layer]}), rates in [0, 1];
- ``{test_split}.hyp.{tgt_lang}`` and ``test_scores.json`` (BLEU, chrF, signatures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mt import data as corpus
from mt.aer import GoldAlignment, load_gold
from mt.align import aer_report
from mt.checkpoint import load_checkpoint, save_checkpoint
from mt.config import Config, DataConfig, TokenizerConfig, to_dict
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
from mt.tokenizer import Tokenizer
from mt.words import segment

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


def autocast(device: torch.device, precision: str):
    """bf16 autocast context for the forward pass, or a no-op for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sequence_loss(
    model: Transformer, batch: corpus.Batch, label_smoothing: float
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


def load_tokenizer(cfg: TokenizerConfig, train_set, cache_dir: Path) -> Tokenizer:
    """Train sentencepiece on the training split, or reuse the model trained on the same inputs."""
    digest = hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode())
    for line in (*train_set["src"], *train_set["tgt"]):
        digest.update(line.encode() + b"\n")
    path = cache_dir / f"sentencepiece-{digest.hexdigest()[:16]}.pt"
    if path.exists():
        return Tokenizer.from_state(torch.load(path, weights_only=True))
    log.info("training sentencepiece (%s, %d pieces) on %d pairs", cfg.model_type, cfg.vocab_size, len(train_set))
    tokenizer = Tokenizer.train(train_set["src"], train_set["tgt"], cfg)
    save_checkpoint(tokenizer.state(), path)
    return tokenizer


def load_run_gold(data_cfg: DataConfig) -> GoldAlignment:
    """``data.alignment_gold``, oriented src→tgt as the run translates.

    Raises:
        DataError: files missing or malformed.  ConfigError: a gold set of another language pair.
    """
    gold = load_gold(data_cfg.alignment_gold)
    try:
        return gold.oriented(data_cfg.src_lang, data_cfg.tgt_lang)
    except ValueError as error:
        raise ConfigError(f"config key 'data.alignment_gold' = {data_cfg.alignment_gold!r}: {error}") from None


@torch.inference_mode()
def validation_loss(model: Transformer, batches: list[corpus.Batch], device: torch.device, precision: str) -> float:
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
        out_dir: the run directory (Hydra's output dir); created if missing.

    Returns: the test scores (as written to ``test_scores.json``).

    Raises:
        DataError: corpus files missing or inconsistent.
    """
    out_dir = Path(out_dir)
    checkpoint_dir = out_dir / "checkpoints"
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
    datasets.disable_progress_bars()  # our own tqdm bar is the one to watch
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)

    # data and subwords
    data_cfg = cfg.data
    splits = {}
    for role, split, limit in (
        ("train", data_cfg.train_split, data_cfg.max_train_sentences),
        ("valid", data_cfg.valid_split, data_cfg.max_valid_sentences),
        ("test", data_cfg.test_split, data_cfg.max_test_sentences),
    ):
        splits[role] = corpus.load_split(
            split, data_cfg.src_lang, data_cfg.tgt_lang, data_cfg.data_dir, data_cfg.mirror, limit
        )
    gold, gold_segmentations = None, None
    if data_cfg.alignment_gold:
        gold = load_run_gold(data_cfg)
        if data_cfg.alignment_gold_train_copies:  # text only: the links are never trained on
            copies = data_cfg.alignment_gold_train_copies
            splits["train"] = datasets.concatenate_datasets(
                [splits["train"], datasets.Dataset.from_dict({"src": gold.src * copies, "tgt": gold.tgt * copies})]
            )
            log.info("added %d × %d gold-set pairs (text only) to the training data", copies, len(gold))
    cache_dir = Path(data_cfg.data_dir) / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    if resume_state is not None:  # the subwords the model was trained with, whatever the cache holds
        tokenizer = Tokenizer.from_state(resume_state["tokenizer"])
    else:
        tokenizer = load_tokenizer(cfg.tokenizer, splits["train"], cache_dir)
    if tokenizer.joint:
        (out_dir / "sentencepiece.model").write_bytes(tokenizer.state()["src_model"])
    else:
        (out_dir / f"sentencepiece.{data_cfg.src_lang}.model").write_bytes(tokenizer.state()["src_model"])
        (out_dir / f"sentencepiece.{data_cfg.tgt_lang}.model").write_bytes(tokenizer.state()["tgt_model"])
    train_set = corpus.tokenize(splits["train"], tokenizer, cache_dir)
    valid_set = corpus.tokenize(splits["valid"], tokenizer)
    # plain lists: the training loop indexes them every step (a datasets Column re-reads Arrow)
    train_src, train_tgt = list(train_set["src_ids"]), list(train_set["tgt_ids"])
    keep = [
        i
        for i, (s, t) in enumerate(zip(train_src, train_tgt))
        if 0 < len(s) <= data_cfg.max_len and 0 < len(t) <= data_cfg.max_len
    ]
    if len(keep) < len(train_src):
        dropped = len(train_src) - len(keep)
        log.info("dropped %d training pairs longer than data.max_len=%d or empty", dropped, data_cfg.max_len)
        train_src, train_tgt = [train_src[i] for i in keep], [train_tgt[i] for i in keep]
    src_lens, tgt_lens = [len(s) for s in train_src], [len(t) for t in train_tgt]
    valid_src = [ids[: data_cfg.max_len] for ids in valid_set["src_ids"]]
    valid_tgt = [ids[: data_cfg.max_len] for ids in valid_set["tgt_ids"]]
    valid_batches = [
        corpus.collate([valid_src[i] for i in b], [valid_tgt[i] for i in b], b)
        for b in corpus.token_batches(
            [len(s) for s in valid_src], [len(t) for t in valid_tgt], cfg.train.batch_tokens, shuffle=False
        )
    ]

    if gold is not None:
        gold_segmentations = segment(tokenizer, gold.src, gold.tgt, cfg.model.max_positions - 1)

    # model and optimisation
    model = Transformer(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.2fM parameters, device %s, precision %s", n_params / 1e6, device, cfg.train.precision)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.train.lr,
        betas=tuple(cfg.train.betas),
        foreach=True,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt_schedule(cfg.train.warmup_steps))

    check_free_space(checkpoint_dir, model)
    metrics_path = out_dir / "metrics.jsonl"
    if resume_state is None:
        metrics_path.write_text("")
    static_state = {
        "model_config": to_dict(cfg.model),
        "tokenizer": tokenizer.state(),
        "data": {"src_lang": data_cfg.src_lang, "tgt_lang": data_cfg.tgt_lang},
        "decoding": to_dict(cfg.decoding),
        "config": to_dict(cfg),
    }

    step, epoch, batches_done = 0, 1, 0  # batches_done: of the current epoch
    best_bleu, bad_validations, nonfinite_total, nonfinite_in_a_row = float("-inf"), 0, 0, 0
    elapsed_before = 0.0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        step, epoch, batches_done = resume_state["step"], resume_state["epoch"], resume_state["batches_done"]
        best_bleu, bad_validations = resume_state["best_bleu"], resume_state["bad_validations"]
        nonfinite_total, elapsed_before = resume_state["nonfinite_steps"], resume_state["elapsed_s"]
        set_rng_state(resume_state["rng"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume_path, step, epoch, batches_done)
    start = time.perf_counter() - elapsed_before
    window_tokens, window_loss, window_start = 0, 0.0, time.perf_counter()
    interval_tokens, interval_loss_sum, interval_start = 0, 0.0, time.perf_counter()
    stop_reason = None
    progress = tqdm(
        initial=step, total=cfg.train.max_steps or None, desc="train", unit="step", disable=None, dynamic_ncols=True
    )

    def training_state() -> dict:
        """Everything needed to continue exactly from here (plain data and tensors only)."""
        return {
            **static_state,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
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
        """Validate, log, checkpoint; return True when early stopping says stop."""
        nonlocal best_bleu, bad_validations, interval_tokens, interval_loss_sum, interval_start
        train_seconds = time.perf_counter() - interval_start
        val_loss = validation_loss(model, valid_batches, device, cfg.train.precision)
        valid_decoding = dataclasses.replace(cfg.decoding, beam_size=cfg.train.valid_beam_size)
        with autocast(device, cfg.train.precision):
            hypotheses = translate(model, tokenizer, splits["valid"]["src"], valid_decoding, device)
        val_bleu = score(hypotheses, splits["valid"]["tgt"])["bleu"]
        alignment = {}
        if gold is not None:
            with autocast(device, cfg.train.precision):
                alignment = aer_report(model, gold_segmentations, gold, cfg.decoding.batch_size, device)
        record = {
            "step": step,
            "epoch": epoch,
            "train_loss": interval_loss_sum / max(interval_tokens, 1),
            "val_loss": val_loss,
            "val_bleu": val_bleu,
            "lr": scheduler.get_last_lr()[0],
            "tokens_per_s": interval_tokens / max(train_seconds, 1e-9),
            "elapsed_s": time.perf_counter() - start,
            "nonfinite_steps": nonfinite_total,
            **alignment,
        }
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        improved = val_bleu > best_bleu
        if improved:
            best_bleu, bad_validations = val_bleu, 0
        else:
            bad_validations += 1
        state = {**training_state(), "val_bleu": val_bleu}
        save_checkpoint(state, checkpoint_dir / "last.pt")
        if improved:
            save_checkpoint(state, checkpoint_dir / "best.pt")
        log.info(
            "step %d epoch %d | train_loss %.3f val_loss %.3f val_bleu %.2f%s%s | lr %.2e | %.0f tok/s",
            step, epoch, record["train_loss"], val_loss, val_bleu, " (best)" if improved else "",
            f" AER {100 * alignment['aer']:.1f}" if alignment else "", record["lr"], record["tokens_per_s"],
        )
        model.train()
        interval_tokens, interval_loss_sum, interval_start = 0, 0.0, time.perf_counter()
        return cfg.train.patience > 0 and bad_validations >= cfg.train.patience

    if cfg.train.max_steps and step >= cfg.train.max_steps:  # resumed a run that had already finished training
        stop_reason = f"reached train.max_steps={cfg.train.max_steps}"
    model.train()
    stop_signal = StopSignal()
    with stop_signal:
        while stop_reason is None:
            batches = corpus.token_batches(src_lens, tgt_lens, cfg.train.batch_tokens, True, cfg.train.seed + epoch)
            for indices in batches[batches_done:]:
                batch = corpus.collate([train_src[i] for i in indices], [train_tgt[i] for i in indices], indices)
                batch = batch.to(device)
                with autocast(device, cfg.train.precision):
                    loss_sum, n_tokens = sequence_loss(model, batch, cfg.train.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                finite = bool(torch.isfinite(loss_sum))
                if finite:
                    (loss_sum / n_tokens).backward()
                    if cfg.train.clip_norm > 0:
                        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_norm)
                        finite = bool(torch.isfinite(norm))
                batches_done += 1
                if not finite:  # skip the update: one bad batch must not poison the weights
                    nonfinite_total, nonfinite_in_a_row = nonfinite_total + 1, nonfinite_in_a_row + 1
                    log.warning("non-finite loss or gradient at step %d: update skipped", step + 1)
                    if nonfinite_in_a_row >= cfg.train.max_nonfinite:
                        raise TrainingFailed(
                            f"{nonfinite_in_a_row} non-finite losses in a row (train.max_nonfinite) at step {step}; "
                            f"stopped without saving, {checkpoint_dir / 'last.pt'} holds the last good state "
                            "(try a lower train.lr)"
                        )
                    continue
                nonfinite_in_a_row = 0
                optimizer.step()
                scheduler.step()
                step += 1
                loss_value = float(loss_sum.detach())
                window_tokens, window_loss = window_tokens + n_tokens, window_loss + loss_value
                interval_tokens, interval_loss_sum = interval_tokens + n_tokens, interval_loss_sum + loss_value
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
                elif cfg.train.max_minutes and time.perf_counter() - start >= cfg.train.max_minutes * 60:
                    stop_reason = f"reached train.max_minutes={cfg.train.max_minutes}"
                if step % cfg.train.valid_every == 0 or stop_reason:
                    if validate() and stop_reason is None:
                        stop_reason = f"no better val BLEU in {cfg.train.patience} validations (train.patience)"
                if stop_signal.received:
                    save_checkpoint(training_state(), checkpoint_dir / "last.pt")
                    progress.close()
                    raise TrainingInterrupted(stop_signal.received, step, out_dir)
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
    training_seconds = time.perf_counter() - start
    log.info("stopped after %d steps, %.1f min: %s", step, training_seconds / 60, stop_reason)

    # score the best checkpoint on the test split
    best = load_checkpoint(checkpoint_dir / "best.pt", device)
    model.load_state_dict(best["model"])
    model.eval()
    test = splits["test"]
    with autocast(device, cfg.train.precision):
        hypotheses = translate(model, tokenizer, test["src"], cfg.decoding, device)
    hyp_path = out_dir / f"{data_cfg.test_split}.hyp.{data_cfg.tgt_lang}"
    hyp_path.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    scores = score(hypotheses, test["tgt"])
    result = {
        "split": data_cfg.test_split,
        "src_lang": data_cfg.src_lang,
        "tgt_lang": data_cfg.tgt_lang,
        "checkpoint_step": best["step"],
        "beam_size": cfg.decoding.beam_size,
        "training_seconds": training_seconds,
        "steps": step,
        **scores,
    }
    (out_dir / "test_scores.json").write_text(json.dumps(result, indent=2) + "\n")
    log.info("%s: %s", data_cfg.test_split, scores["bleu_line"])
    log.info("%s: %s", data_cfg.test_split, scores["chrf_line"])
    log.info("signatures: %s | %s", scores["bleu_signature"], scores["chrf_signature"])
    return result
