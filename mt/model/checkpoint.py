"""Self-describing checkpoints of plain data, written atomically and loaded without running code.

A checkpoint is a dict of tensors and plain values only:

- ``format``: ``"mt-checkpoint"``, ``version``: int;
- ``model_config``: the ``model`` config node as nested dicts; ``model``: the state dict;
- ``tokenizer``: ``{"joint", "src_model", "tgt_model"}`` with the sentencepiece models as bytes;
- ``data``: ``{"src_lang", "tgt_lang"}``; ``decoding``: the decoding defaults;
- training state (optimizer, scheduler, step, epoch, best score, RNG states) for resuming.

It is read with ``torch.load(weights_only=True)``, which refuses anything that would execute
code while unpickling.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from mt.config import DecodingConfig, model_config_from_dict
from mt.errors import CheckpointError
from mt.model.transformer import Transformer
from mt.data.tokenizer import Tokenizer

FORMAT = "mt-checkpoint"
VERSION = 1


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run dir → its ``checkpoints/best.pt``.

    Raises:
        CheckpointError: nothing loadable at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.pt", path / "best.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} is a folder without checkpoints/best.pt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Load a checkpoint dict (tensors on ``device``) without executing any code.

    ``mmap``: map the file instead of reading it (``torch.load(mmap=True)``): only the tensors
    used are read, e.g. the model without the optimizer state (inference, on the CPU).

    Raises:
        CheckpointError: missing, unreadable, corrupt, not ours, or containing objects other
            than tensors and plain data (refused before anything runs).
    """
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        reason = _first_line(error)
        raise CheckpointError(f"{path}: refused, it holds more than tensors and plain data ({reason})") from None
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(error)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mt checkpoint")
    return state


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_for_inference(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Transformer, Tokenizer, dict]:
    """Model (eval mode, on ``device``), tokenizer and metadata from a checkpoint or run dir.

    Returns:
        model, tokenizer, info with ``src_lang``, ``tgt_lang``, ``decoding``
        (:class:`~mt.config.DecodingConfig`), ``step``, ``path``, ``alignment_supervised``
        (trained with ``train.alignment_weight`` > 0), ``aligner`` (the model has one) and
        ``alignment_teacher`` (its teacher's priors, or None).

    Raises:
        CheckpointError: see :func:`load_checkpoint`.
    """
    state = load_checkpoint(path, device, mmap=torch.device(device).type == "cpu")  # the optimizer state is never read
    try:
        tokenizer = Tokenizer.from_state(state["tokenizer"])
        model = Transformer(
            model_config_from_dict(state["model_config"]), tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id
        )
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, ValueError) as error:
        raise CheckpointError(f"{resolve_checkpoint(path)}: inconsistent checkpoint ({error})") from None
    model.to(device).eval()
    info = {
        "src_lang": state["data"]["src_lang"],
        "tgt_lang": state["data"]["tgt_lang"],
        "decoding": DecodingConfig(**state.get("decoding", {})),
        "step": state.get("step"),
        "path": str(resolve_checkpoint(path)),
        # trained with guided alignment (with an aligner the weight was the aligner's): mt-align
        # reads the supervised heads by default
        "alignment_supervised": state.get("config", {}).get("train", {}).get("alignment_weight", 0.0) > 0
        and model.aligner is None,
        "aligner": model.aligner is not None,  # mt-align reads the aligner by default
        # eflomal's priors from the aligner's training links (mt.alignment.adapt.Teacher.state), or None
        "alignment_teacher": state.get("alignment_teacher"),
    }
    return model, tokenizer, info
