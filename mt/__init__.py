"""mt: an encoder-decoder Transformer NMT trainer that shows what the model attends to.

The front door for Python: :func:`load` a checkpoint and translate or align with the
:class:`~mt.inference.translator.Translator` it returns; :func:`train` runs ``mt-train``. Both
import torch and Hydra when called, not when ``mt`` is imported, so that ``import mt.config``
(the schema) stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mt.inference.translator import Translator

__version__ = "0.1.0"


def load(path: str | Path, device: str = "cpu", precision: str = "fp32") -> Translator:
    """A :class:`~mt.inference.translator.Translator` for a checkpoint file, or a run dir
    (its ``checkpoints/best.pt``).

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        precision: ``fp32``, ``bf16`` or ``int8`` (CPU only) (:func:`mt.device.for_inference`).

    Raises:
        CheckpointError: nothing loadable at ``path`` (one line naming it).
        ConfigError: an unknown device or precision, CUDA where there is none, int8 on CUDA.

    Examples:
        >>> translator = mt.load(CHECKPOINT)  # tests/fixtures/checkpoint-2dea679.pt
        >>> translator.translate(["Zwei Männer spielen Fußball."])
        ['A woman in a rolles']
        >>> mt.load("missing.pt")
        Traceback (most recent call last):
        mt.errors.CheckpointError: checkpoint missing.pt not found
    """
    from mt.inference.translator import Translator
    from mt.training.memory import set_onednn_cache_capacity

    # oneDNN keeps a primitive (with packed weights) per matmul shape, and the search's shapes
    # change as sentences finish: as in training (train.onednn_cache_capacity), keep 64 of them
    set_onednn_cache_capacity(64)  # bf16 mt-evaluate on test_2016_flickr: 1,001 -> 838 MB peak RSS
    return Translator.load(path, device, precision)


def train(overrides: Sequence[str] = (), out_dir: str | Path | None = None) -> dict:
    """Train as ``mt-train OVERRIDES`` does: compose ``configs/train.yaml`` with the same Hydra
    overrides and run the same :func:`mt.training.train.train`.

    Args:
        overrides: Hydra overrides, e.g. ``["experiment=smoke", "train.max_steps=100"]``.
        out_dir: the run directory (default: ``mt-train``'s, ``outputs/EXPERIMENT/DATE/TIME``
            under the working directory). It gets ``.hydra/config.yaml`` and
            ``.hydra/overrides.yaml`` as an ``mt-train`` run does; logging is left as the caller set it.

    Returns: the test scores, as written to ``OUT_DIR/test_scores.json``.

    Raises:
        ConfigError: an override names an unknown key or group, or a value is not allowed.
        DataError, CheckpointError, TrainingInterrupted, TrainingFailed: see :func:`mt.training.train.train`.

    Examples:
        >>> scores = mt.train(["experiment=smoke"], out_dir="runs/smoke")  # doctest: +SKIP
        >>> sorted(scores)[:2]  # doctest: +SKIP
        ['bleu', 'bleu_signature']
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict

    from mt.config import CONFIG_DIR, command_line_keys, from_hydra, register_with_hydra
    from mt.errors import ConfigError
    from mt.training.train import train as run_training

    register_with_hydra()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    except HydraException as error:
        raise ConfigError(f"overrides: {str(error).splitlines()[0]}") from None
    out_dir = Path(out_dir if out_dir is not None else cfg.hydra.run.dir)
    with open_dict(cfg):
        del cfg["hydra"]
    config = from_hydra(cfg)  # validation happens here, before any data work
    (out_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), out_dir / ".hydra" / "overrides.yaml")
    return run_training(config, out_dir, command_line_keys(overrides))
