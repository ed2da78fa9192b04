"""``train(cfg, out_dir)``: data → tokenizer → model → the training loop → test scores.

The pieces, in the order a run meets them:

- :func:`starting_point`: the config and the checkpoint of a run that starts from one
  (``train.init_from``, :mod:`mt.training.init_from`) or resumes (``train.resume``, whose
  schedule settings :func:`mt.training.schedule.check_resumable` holds to the run's);
- :func:`build_model`: the Transformer, its initial weights, what is frozen, the aligner's lexicon;
- :class:`mt.training.state.TrainState`: where training stands, saved and restored whole;
- :class:`mt.training.step.Optimization` and :func:`mt.training.step.train_step`: one update
  (objective, AdamW and the schedule of :mod:`mt.training.schedule`);
- :func:`validation_round`: :func:`mt.training.validation.validate` (the metrics, no I/O), then
  :func:`mt.training.validation.record_validation` and
  :func:`mt.training.validation.save_checkpoints`; :func:`mt.training.state.early_stop` decides;
- :func:`training_loop`: the loop that ties them together; :func:`train`: the whole run, ending
  with :func:`mt.training.scoring.score_test`.

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
import logging
import random
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from mt.config import Config, TrainConfig, to_dict, without_removed_options
from mt.data.tokenizer import Tokenizer
from mt.device import resolve_device, resolve_precision
from mt.errors import CheckpointError, ConfigError
from mt.model.aligner import LEXICON_PREFIX
from mt.model.checkpoint import load_checkpoint, save_checkpoint
from mt.model.transformer import Transformer
from mt.training import distributed
from mt.training.guards import StopSignal, TrainingFailed, TrainingInterrupted, check_free_space, check_writable
from mt.training.init_from import agreement_partner, checkpoint_tokenizer, init_config
from mt.training.memory import loaded_allocator, process_memory_mb, release_free_memory, set_onednn_cache_capacity
from mt.training.monitor import TrainingMonitor, read_metrics
from mt.training.schedule import AnnealedLR, budget_progress, check_resumable
from mt.training.scoring import score_test
from mt.training.state import LossMeter, Run, TrainState, early_stop
from mt.training.step import build_optimization, epoch_updates, train_step
from mt.training.training_data import TrainingData, prepare_data
from mt.alignment.adapt import Teacher
from mt.training.validation import record_validation, save_checkpoints, validate, validate_translation

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- validation
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
                resample_subwords(data, cfg.seed, state.epoch, context, first_epoch)
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
                        window = show_progress(progress, window, run.opt.scheduler.get_last_lr()[0], state.epoch)
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


def resample_subwords(data: TrainingData, seed: int, epoch: int, context: distributed.Context, first: bool) -> None:
    """Subword regularization: segment the training pairs anew for ``epoch`` (logged at INFO on
    the ``first`` epoch of this session, at DEBUG after)."""
    started = time.perf_counter()
    ratio = data.resample(seed + epoch, context)
    log.log(logging.INFO if first else logging.DEBUG,
            "epoch %d: subwords sampled in %.1f s, %.2f× the target pieces of the best segmentation",
            epoch, time.perf_counter() - started, ratio)  # fmt: skip


def show_progress(progress: tqdm, window: LossMeter, lr: float, epoch: int) -> LossMeter:
    """The progress bar's statistics over ``window`` (loss and alignment loss per target token,
    learning rate, target tokens/s); returns the next window."""
    now = time.perf_counter()
    align = {"align": f"{window.terms['align'] / window.tokens:.3f}"} if "align" in window.terms else {}
    progress.set_postfix(loss=f"{window.loss / window.tokens:.3f}", **align, lr=f"{lr:.2e}",
                         tok_s=f"{window.tokens_per_s(now):.0f}", epoch=epoch)  # fmt: skip
    return LossMeter(started=now)


# ------------------------------------------------------------------------------------ the run
def train(cfg: Config, out_dir: str | Path, command_line_keys: Sequence[str] = ()) -> dict:
    """Train a model as configured and score it on the test split.

    Args:
        cfg: the validated root config.
        out_dir: the run directory (Hydra's output dir); created if missing. Under torchrun only
            rank 0 writes into it.
        command_line_keys: the config keys the command line set
            (:func:`mt.config.command_line_keys`): with ``train.init_from`` a model, aligner or
            tokenizer key among them must agree with the checkpoint (:func:`mt.training.init_from.init_config`).

    Returns: the test scores (as written to ``test_scores.json``); ``{}`` on ranks other than 0.

    Raises:
        DataError: corpus files missing or inconsistent; the run dir not writable or too full.
        ConfigError: ``train.resume`` names no checkpoint, or one trained with another
            ``train.lr_schedule``, ``train.lr``, ``train.min_lr`` or ``train.warmup_steps``; a
            model, aligner or tokenizer key contradicts ``train.init_from``'s checkpoint.
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
        cfg, initial = starting_point(cfg, resume, command_line_keys)  # before any data work
        if context.is_main:  # built before data work, to fail early
            records = read_metrics(out_dir / "metrics.jsonl", max_step=resume["step"]) if resume else ()
            monitor = TrainingMonitor(out_dir, tensorboard=cfg.train.tensorboard, records=records,
                                      start_step=resume["step"] if resume else 0)  # fmt: skip
        precision = set_up_process(cfg.train, device)
        data = prepare_data(cfg, context, resume or initial)
        model = build_model(cfg, data, device, initial, fill_lexicon=resume is None)
        del initial
        partner = agreement_partner(cfg, data.tokenizer, device) if cfg.train.agreement_weight > 0 else None
        opt = build_optimization(model, cfg.train, device, precision, context, partner=partner)
        log.info(
            "model: %.2fM parameters (%.2fM trained), device %s, precision %s, %d process(es) × %d accumulated batch(es) per update",
            sum(p.numel() for p in model.parameters()) / 1e6, sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
            device, precision, context.world_size, cfg.train.accum_steps,
        )  # fmt: skip
        run = Run(cfg, out_dir, context, data, opt, monitor, static_state(cfg, data.tokenizer, data.teacher_priors))
        state = begin(run, resume)
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


def starting_point(cfg: Config, resume: dict | None, command_line_keys: Sequence[str]) -> tuple[Config, dict | None]:
    """The run's config and the checkpoint whose weights it starts from.

    A resumed run keeps the schedule it saved (:func:`mt.training.schedule.check_resumable`) and
    the tokenizer settings of its sentencepiece models, but for the sampling keys
    (:func:`mt.training.init_from.checkpoint_tokenizer`);
    one that was started with ``train.init_from`` takes its model, tokenizer, data and decoding
    from the checkpoint being resumed (:func:`mt.training.init_from.init_config`), which holds
    what the stage started with: ``train.init_from``'s checkpoint is not read again.

    Returns: (config, the ``train.init_from`` checkpoint, or None when resuming or starting afresh).

    Raises:
        ConfigError: see :func:`check_resumable`, :func:`checkpoint_tokenizer` and :func:`init_config`.
        CheckpointError: ``train.init_from`` is not a checkpoint.
    """
    if resume is not None:
        check_resumable(resume, cfg.train)
        if cfg.train.init_from:  # a resumed stage: the model and data it saved
            return init_config(resume, cfg, command_line_keys, cfg.train.resume), None
        # the run goes on with the sentencepiece models it saved: a tokenizer key is theirs or refused
        def given(key: str) -> bool:
            return any(key == g or key.startswith(g + ".") for g in command_line_keys)

        saved = resume.get("config", {}).get("tokenizer")
        tokenizer = checkpoint_tokenizer(saved, cfg.tokenizer, given, f"train.resume={cfg.train.resume}")
        return dataclasses.replace(cfg, tokenizer=tokenizer), None
    if not cfg.train.init_from:
        return cfg, None
    try:
        initial = load_checkpoint(cfg.train.init_from, mmap=True)
    except CheckpointError as error:
        raise CheckpointError(f"train.init_from: {error}") from None
    cfg = init_config(initial, cfg, command_line_keys, cfg.train.init_from)
    log.info("starting from the weights of %s (step %s)", cfg.train.init_from, initial.get("step"))
    return cfg, initial


def set_up_process(cfg: TrainConfig, device: torch.device) -> str:
    """Process-wide settings before the data work: progress bars, oneDNN's cache, the seeds,
    the thread count. Returns the precision the run trains in (:func:`mt.device.resolve_precision`)."""
    datasets.disable_progress_bars()  # our own tqdm bar is the one to watch
    if cfg.onednn_cache_capacity >= 0:  # before the first bf16 matmul builds a primitive
        set_onednn_cache_capacity(cfg.onednn_cache_capacity)
    allocator = loaded_allocator()
    log.info("memory allocator: %s%s", allocator, "" if allocator != "glibc" or device.type != "cpu" else
             " (tcmalloc or jemalloc lowers the peak memory; README, Memory)")  # fmt: skip
    seed_everything(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return resolve_precision(cfg.precision, device)


def build_model(cfg: Config, data: TrainingData, device: torch.device, initial: dict | None, fill_lexicon: bool) -> Transformer:
    """The Transformer on ``device``: ``initial``'s weights (``train.init_from``), the translation
    weights frozen with ``train.trainable=alignment``, and the aligner's lexicon counted from the
    training links when ``fill_lexicon`` (a resumed run loads its counts with its weights)."""
    tokenizer = data.tokenizer
    model = Transformer(cfg.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).to(device)
    if initial is not None:
        load_initial_weights(model, initial, cfg.train.init_from)
    if cfg.train.trainable == "alignment":  # only the aligner learns
        for _, parameter in model.translation_parameters():
            parameter.requires_grad_(False)
    if model.aligner is not None and model.aligner.lexicon is not None and fill_lexicon:
        started = time.perf_counter()  # the config's validation made sure there are links to count
        n_entries = model.aligner.lexicon.count(data.train_src, data.train_tgt, data.train_links, tokenizer.eos_id,
                                                cfg.model.aligner.null)  # fmt: skip
        log.info("aligner lexicon: %d piece pairs counted in %.1f s", n_entries, time.perf_counter() - started)
    return model


def static_state(cfg: Config, tokenizer: Tokenizer, teacher_priors: bytes | None = None) -> dict:
    """What every checkpoint holds besides weights and training state: the model config, the
    tokenizer, the languages, the decoding defaults and the whole config; for an aligner with a
    lexicon, its teacher (``alignment_teacher``: eflomal's priors and how its links were made,
    :class:`mt.alignment.adapt.Teacher`), so that it can adapt to new text without the training text."""
    state = {
        "model_config": to_dict(cfg.model),
        "tokenizer": tokenizer.state(),
        "data": {"src_lang": cfg.data.src_lang, "tgt_lang": cfg.data.tgt_lang},
        "decoding": to_dict(cfg.decoding),
        "config": to_dict(cfg),
    }
    aligner = cfg.model.aligner
    if aligner.enabled and aligner.lexicon and teacher_priors is not None:
        state["alignment_teacher"] = Teacher(
            teacher_priors, cfg.data.alignments_unit, cfg.data.alignments_symmetrize
        ).state()
    return state


def begin(run: Run, resume: dict | None) -> TrainState:
    """Before the first update: rank 0 measures a frozen translation once, writes the tokenizer,
    checks the free space and starts ``metrics.jsonl``; a resumed run gets its optimizer,
    schedule, scaler, RNG and position back. Returns where training starts."""
    cfg, context, model = run.cfg, run.context, run.opt.model
    if cfg.train.trainable == "alignment" and context.is_main:
        run.frozen_metrics = validate_translation(model, run.data, cfg, run.opt.device, run.opt.precision)
    if context.is_main:
        run.data.write_tokenizer(run.out_dir, cfg.data.src_lang, cfg.data.tgt_lang)
        check_free_space(
            run.checkpoint_dir, model, max(cfg.train.keep_checkpoints, cfg.train.average_last) + cfg.train.average_best
        )
        if resume is None:
            (run.out_dir / "metrics.jsonl").write_text("")
    state = TrainState()
    if resume is not None:
        run.opt.load_state_dict(resume)
        state.load_state_dict(resume)
        if state.batches_done % (context.world_size * cfg.train.accum_steps):
            log.warning("resumed with another world size × train.accum_steps: the epoch restarts at a nearby batch")
        log.info("resumed at step %d (epoch %d, batch %d)", state.step, state.epoch, state.batches_done)
    return state


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
        if key not in own or (own[key].shape != tensor.shape and not key.startswith(LEXICON_PREFIX))  # any size
    ]
    if misfits:
        raise CheckpointError(f"train.init_from={source}: its weights do not fit the model ({', '.join(misfits[:4])})")
    model.load_state_dict(saved, strict=False)


def load_resume(resume: str | None, checkpoint_dir: Path) -> dict | None:
    """The checkpoint ``train.resume`` names (``auto`` = ``checkpoint_dir/last.pt``), or None.

    Raises:
        ConfigError: no such file, or the run trained with an option since removed
            (:func:`mt.config.without_removed_options`).
    """
    if not resume:
        return None
    path = checkpoint_dir / "last.pt" if resume == "auto" else Path(resume)
    if not path.is_file():
        hint = " (auto continues hydra.run.dir=<the run dir>)" if resume == "auto" else ""
        raise ConfigError(f"config key 'train.resume' = {resume!r}: {path} not found{hint}")
    log.info("resuming from %s", path)
    state = load_checkpoint(path)
    if "config" in state:  # a run trained with an option since removed cannot go on as it was
        state["config"] = without_removed_options(state["config"])
    return state


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
