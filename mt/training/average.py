"""Checkpoint averaging: the elementwise mean of the parameters of N checkpoints of one run.

Averaging the weights saved at a few validations usually gives a slightly better and more stable
model than any one of them (Vaswani et al. 2017, §6.1; Popel & Bojar 2018, §4.10). The trainer
keeps one checkpoint per validation as ``RUN_DIR/checkpoints/step-{step}.pt``
(``train.keep_checkpoints``, ``train.average_last``, ``train.average_best``); :func:`average_run`
averages N of them into one inference checkpoint, which ``mt-translate``, ``mt-evaluate`` and
``mt-align`` load like any other. Which N (Sockeye's ``sockeye-average --strategy``):

- ``last``: the newest N (``checkpoints/averaged.pt``), as fairseq's script and Vaswani et al.;
- ``best``: the N with the highest validation BLEU (``checkpoints/averaged_best.pt``). After
  early stopping (``train.patience`` P >= N validations without a better score) the newest N all
  come after the best one, where the model overfits; the best N do not depend on when training
  stopped.

The approach follows fairseq's ``scripts/average_checkpoints.py``: checkpoints are loaded one at
a time and summed into one accumulator, so memory holds at most one checkpoint plus the sums.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mt.config import without_removed_options
from mt.model.checkpoint import load_checkpoint, save_checkpoint
from mt.errors import CheckpointError, ConfigError
from mt.training.guards import check_writable

STEP_NAME = re.compile(r"step-(\d+)\.pt")
SELECTIONS = ("last", "best")
# default output file of each selection, in RUN_DIR/checkpoints/
OUTPUT_NAMES = {"last": "averaged.pt", "best": "averaged_best.pt"}
# What an averaged checkpoint carries over from the newest one besides its weights: what
# inference needs, the run's config and step. Resume-only state (optimizer, scheduler, scaler,
# RNG states, counters) and per-checkpoint scores (val_bleu) describe one checkpoint, not the mean.
KEPT = ("model_config", "tokenizer", "data", "decoding", "config", "step", "alignment_teacher")
# Keys that must be identical in every averaged checkpoint (the average of two different
# architectures or vocabularies means nothing).
MUST_MATCH = ("model_config", "tokenizer", "data")


def _step(path: Path) -> int:
    return int(STEP_NAME.fullmatch(path.name).group(1))


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """The validation checkpoints ``RUN_DIR/checkpoints/step-{step}.pt`` of a run, oldest first.

    Sorted numerically by the step in the name (``step-1000.pt`` after ``step-500.pt``);
    other files (``best.pt``, ``last.pt``, ``averaged.pt``, temporaries) are ignored.

    Raises:
        CheckpointError: ``run_dir`` does not exist or is not a folder.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"run dir {run_dir} not found")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file; expected a run dir (the folder holding checkpoints/)")
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if STEP_NAME.fullmatch(p.name) and p.is_file()), key=_step)


def average_checkpoints(paths: list[str | Path]) -> dict:
    """Average the model parameters of several checkpoints of one run.

    Every floating-point tensor of the state dict becomes the elementwise mean over the
    checkpoints, accumulated in at least fp32 and cast back to its own dtype; any other tensor
    (integer or bool buffers) must be equal in all checkpoints and is kept as is. The
    checkpoints are loaded one at a time.

    Args:
        paths: checkpoint files, oldest first (the last one supplies the metadata).

    Returns:
        A self-describing inference checkpoint (for :func:`mt.model.checkpoint.save_checkpoint`):
        the last checkpoint's static fields (``model_config``, ``tokenizer``, ``data``,
        ``decoding``, ``config``, an aligner's ``alignment_teacher``) and ``step``, the averaged ``model`` state dict, and
        ``averaged_from``: ``[{"file": name, "step": step}, …]`` in the order given. Everything
        else (optimizer, scheduler, RNG states, counters, val_bleu) is dropped: the result is
        for inference, not for resuming.

    Raises:
        CheckpointError: no paths; an unreadable checkpoint; or one whose ``model_config``,
            ``tokenizer``, ``data``, parameter names, shapes or non-float tensors differ from
            the first one's (the message names both files).
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise CheckpointError("no checkpoints to average")
    first = paths[0]
    reference: dict = {}
    sums: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    averaged_from = []
    for path in paths:
        state = load_checkpoint(path)
        if "model" not in state:
            raise CheckpointError(f"{path}: no model state dict in this checkpoint")
        weights = state["model"]
        averaged_from.append({"file": path.name, "step": state.get("step")})
        if not sums:  # the first checkpoint defines what the others must match
            reference = {key: _comparable(state, key) for key in MUST_MATCH}
            for name, tensor in weights.items():
                dtypes[name] = tensor.dtype
                if tensor.is_floating_point():
                    sums[name] = tensor.to(torch.promote_types(tensor.dtype, torch.float32), copy=True)
                else:
                    sums[name] = tensor.clone()
        else:
            _check_compatible(path, state, first, reference, sums)
            for name, tensor in weights.items():
                if dtypes[name].is_floating_point:
                    sums[name] += tensor.to(sums[name].dtype)
                elif not torch.equal(tensor, sums[name]):
                    raise CheckpointError(f"{path}: non-float tensor {name} differs from {first}'s; cannot average")
        static = {key: state[key] for key in KEPT if key in state}  # the newest one's, at the end
        del state, weights  # keep only the running sums before loading the next checkpoint
    n = len(paths)
    model = {
        name: (total / n).to(dtypes[name]) if dtypes[name].is_floating_point else total
        for name, total in sums.items()
    }
    return {**static, "model": model, "averaged_from": averaged_from}


def _comparable(state: dict, key: str):
    """``state[key]`` as checkpoints of one run agree on it: a ``model_config`` saved before an
    option was removed (:func:`mt.config.without_removed_options`) equals one saved after."""
    if key == "model_config" and state.get(key) is not None:
        return without_removed_options(state[key], "model")
    return state.get(key)


def _check_compatible(path: Path, state: dict, first: Path, reference: dict, sums: dict) -> None:
    """Raise CheckpointError naming ``path`` when it is not a checkpoint of the same model as ``first``."""
    for key in MUST_MATCH:
        if _comparable(state, key) != reference[key]:
            raise CheckpointError(f"{path}: its {key} differs from {first}'s; only checkpoints of one run can be averaged")
    weights = state["model"]
    if weights.keys() != sums.keys():
        missing, extra = sorted(sums.keys() - weights.keys()), sorted(weights.keys() - sums.keys())
        raise CheckpointError(f"{path}: parameter names differ from {first}'s (missing {missing[:3]}, extra {extra[:3]})")
    for name, tensor in weights.items():
        if tensor.shape != sums[name].shape:
            raise CheckpointError(
                f"{path}: parameter {name} has shape {tuple(tensor.shape)}, {first} has {tuple(sums[name].shape)}"
            )


def best_checkpoints(run_dir: str | Path, n: int) -> list[Path]:
    """The ``n`` validation checkpoints of a run with the highest validation BLEU, oldest first.

    Scores come from each ``step-{step}.pt``'s ``val_bleu`` (the trainer records it; the file is
    memory-mapped, so its tensors are not read). Equal scores prefer the later step. Fewer than
    ``n`` checkpoints: all of them.

    Raises:
        CheckpointError: ``run_dir`` missing (see :func:`step_checkpoints`); a step checkpoint
            without ``val_bleu`` or unreadable (the message names the file).
    """
    scored = []
    for path in step_checkpoints(run_dir):
        val_bleu = load_checkpoint(path, mmap=True).get("val_bleu")
        if not isinstance(val_bleu, (int, float)):
            raise CheckpointError(f"{path}: no val_bleu recorded, cannot rank it; average the last N instead")
        scored.append((float(val_bleu), _step(path), path))
    best = sorted(scored, reverse=True)[:n]
    return [path for _, _, path in sorted(best, key=lambda entry: entry[1])]


def average_run(run_dir: str | Path, n: int, out_path: str | Path | None = None, select: str = "last") -> dict:
    """Average ``n`` of a run's validation checkpoints and write the result.

    Used by ``mt-average`` and by the trainer (``train.average_last``, ``train.average_best``).

    Args:
        run_dir: the training run folder (the one holding ``checkpoints/``; not the
            ``checkpoints/`` folder itself).
        n: how many ``checkpoints/step-{step}.pt`` to average, >= 1.
        out_path: where to write the averaged checkpoint (atomically); default
            ``RUN_DIR/checkpoints/averaged.pt`` (``last``) or ``averaged_best.pt`` (``best``).
        select: ``last``, the newest ``n``; or ``best``, the ``n`` with the highest recorded
            validation BLEU (:func:`best_checkpoints`).

    Returns:
        The averaged checkpoint dict as written (see :func:`average_checkpoints`).

    Raises:
        ConfigError: ``n`` < 1; unknown ``select``.
        CheckpointError: ``run_dir`` missing, fewer than ``n`` step checkpoints, mismatched or
            unreadable checkpoints, one without ``val_bleu`` (``best``), ``out_path`` is one of
            the inputs or cannot be written.
        DataError: the folder of ``out_path`` is not writable (checked before any loading).
    """
    if n < 1:
        raise ConfigError(f"the number of checkpoints to average must be >= 1, got {n}")
    if select not in SELECTIONS:
        raise ConfigError(f"unknown checkpoint selection {select!r}; expected one of {', '.join(SELECTIONS)}")
    run_dir = Path(run_dir)
    available = step_checkpoints(run_dir)
    if len(available) < n:
        if any(STEP_NAME.fullmatch(p.name) for p in run_dir.iterdir()):
            raise CheckpointError(f"{run_dir} holds step-*.pt itself; pass the run dir, the parent of its checkpoints/")
        raise CheckpointError(
            f"{run_dir / 'checkpoints'} has {len(available)} step checkpoint(s) (step-*.pt), cannot average the {select} "
            f"{n}; train with train.keep_checkpoints >= {n} to keep them"
        )
    out_path = Path(out_path) if out_path is not None else run_dir / "checkpoints" / OUTPUT_NAMES[select]
    if out_path.is_dir():
        raise CheckpointError(f"output {out_path} is a folder; give a file name such as {out_path / OUTPUT_NAMES[select]}")
    check_writable(out_path.parent)  # fail before the averaging work, not after
    paths = available[-n:] if select == "last" else best_checkpoints(run_dir, n)
    if any(out_path.resolve() == p.resolve() for p in paths):
        raise CheckpointError(f"output {out_path} is one of the checkpoints being averaged; choose another file")
    state = average_checkpoints(paths)
    try:
        save_checkpoint(state, out_path)
    except OSError as error:
        raise CheckpointError(f"cannot write {out_path}: {error.strerror or error}") from None
    return state
