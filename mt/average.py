"""Checkpoint averaging: the elementwise mean of the parameters of a run's last N checkpoints.

Averaging the weights saved at the last few validations usually gives a slightly better and
more stable model than any one of them (Vaswani et al. 2017, §6.1; Popel & Bojar 2018, §4.10).
With ``train.keep_checkpoints=N`` the trainer keeps one checkpoint per validation as
``RUN_DIR/checkpoints/step-{step}.pt``; :func:`average_run` averages the newest ``last_n`` of
them into one inference checkpoint (by default ``RUN_DIR/checkpoints/averaged.pt``), which
``mt-translate``, ``mt-evaluate`` and ``mt-align`` load like any other.

The approach follows fairseq's ``scripts/average_checkpoints.py``: checkpoints are loaded one at
a time and summed into one accumulator, so memory holds at most one checkpoint plus the sums.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mt.checkpoint import load_checkpoint, save_checkpoint
from mt.errors import CheckpointError, ConfigError
from mt.guards import check_writable

STEP_NAME = re.compile(r"step-(\d+)\.pt")
# What an averaged checkpoint carries over from the newest one besides its weights: what
# inference needs, the run's config and step. Resume-only state (optimizer, scheduler, scaler,
# RNG states, counters) and per-checkpoint scores (val_bleu) describe one checkpoint, not the mean.
KEPT = ("model_config", "tokenizer", "data", "decoding", "config", "step")
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
        A self-describing inference checkpoint (for :func:`mt.checkpoint.save_checkpoint`):
        the last checkpoint's static fields (``model_config``, ``tokenizer``, ``data``,
        ``decoding``, ``config``) and ``step``, the averaged ``model`` state dict, and
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
            reference = {key: state.get(key) for key in MUST_MATCH}
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


def _check_compatible(path: Path, state: dict, first: Path, reference: dict, sums: dict) -> None:
    """Raise CheckpointError naming ``path`` when it is not a checkpoint of the same model as ``first``."""
    for key in MUST_MATCH:
        if state.get(key) != reference[key]:
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


def average_run(run_dir: str | Path, last_n: int, out_path: str | Path | None = None) -> dict:
    """Average a run's last ``last_n`` validation checkpoints and write the result.

    Used by ``mt-average`` and by the trainer (``train.average_last``).

    Args:
        run_dir: the training run folder (the one holding ``checkpoints/``; not the
            ``checkpoints/`` folder itself).
        last_n: how many of the newest ``checkpoints/step-{step}.pt`` to average, >= 1.
        out_path: where to write the averaged checkpoint (atomically); default
            ``RUN_DIR/checkpoints/averaged.pt``.

    Returns:
        The averaged checkpoint dict as written (see :func:`average_checkpoints`).

    Raises:
        ConfigError: ``last_n`` < 1.
        CheckpointError: ``run_dir`` missing, fewer than ``last_n`` step checkpoints, mismatched
            or unreadable checkpoints, ``out_path`` is one of the inputs or cannot be written.
        DataError: the folder of ``out_path`` is not writable (checked before any loading).
    """
    if last_n < 1:
        raise ConfigError(f"the number of checkpoints to average must be >= 1, got {last_n}")
    run_dir = Path(run_dir)
    available = step_checkpoints(run_dir)
    if len(available) < last_n:
        if any(STEP_NAME.fullmatch(p.name) for p in run_dir.iterdir()):
            raise CheckpointError(f"{run_dir} holds step-*.pt itself; pass the run dir, the parent of its checkpoints/")
        raise CheckpointError(
            f"{run_dir / 'checkpoints'} has {len(available)} step checkpoint(s) (step-*.pt), cannot average the last "
            f"{last_n}; train with train.keep_checkpoints >= {last_n} to keep them"
        )
    paths = available[-last_n:]
    out_path = Path(out_path) if out_path is not None else run_dir / "checkpoints" / "averaged.pt"
    if out_path.is_dir():
        raise CheckpointError(f"output {out_path} is a folder; give a file name such as {out_path / 'averaged.pt'}")
    if any(out_path.resolve() == p.resolve() for p in paths):
        raise CheckpointError(f"output {out_path} is one of the checkpoints being averaged; choose another file")
    check_writable(out_path.parent)  # fail before the averaging work, not after
    state = average_checkpoints(paths)
    try:
        save_checkpoint(state, out_path)
    except OSError as error:
        raise CheckpointError(f"cannot write {out_path}: {error.strerror or error}") from None
    return state
