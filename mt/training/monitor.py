"""Training monitoring: ``learning_curves.png`` at each validation, and optionally TensorBoard.

At each validation :meth:`TrainingMonitor.log_validation` takes the ``metrics.jsonl`` record
(see :mod:`mt.training.train`) and

- rewrites ``RUN_DIR/learning_curves.png`` (matplotlib, no TensorBoard needed) from all records
  so far, those of the run before a resume included;
- with ``train.tensorboard``, logs every number of the record as a scalar under ``RUN_DIR/tensorboard``
  (tags: :data:`SCALAR_TAGS`, ``aer/layer{i}_{method}`` for ``aer_by_layer``) and the
  cross-attention heatmap of each of the first ``train.heatmap_sentences`` validation pairs
  (teacher-forced on the reference, default layer, heads averaged: :func:`validation_heatmaps`)
  as images tagged ``attention/sentence{k}``.

TensorBoard is the optional extra ``[tensorboard]``; ``torch.utils.tensorboard.SummaryWriter``
writes the event files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from mt.alignment.align import PairAlignment, align
from mt.errors import ConfigError
from mt.model.transformer import Transformer
from mt.plot import alignment_figure, figure_pixels, plot_learning_curves
from mt.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# metrics.jsonl key → TensorBoard tag; other numeric keys are logged under their own name
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_bleu": "bleu/val",
    "val_chrf": "chrf/val",
    "lr": "lr",
    "tokens_per_s": "speed/tokens_per_s",
    "aer": "aer/val",
    "epoch": "progress/epoch",
    "elapsed_s": "progress/elapsed_s",
    "nonfinite_steps": "progress/nonfinite_steps",
}
CURVES_FILE = "learning_curves.png"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(path: str | Path, max_step: int | None = None) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, to continue the curves of a resumed run.

    Args:
        path: the file; missing or empty → no records.
        max_step: keep only records up to this step (a run resumed from an earlier checkpoint
            than its last validation drops the validations it will redo).

    Returns: the records in file order. A torn last line (a crash mid-write) is skipped.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: skipped an unreadable line", path)
            continue
        if max_step is None or record.get("step", 0) <= max_step:
            records.append(record)
    return records


def scalars(record: dict) -> dict[str, float]:
    """The TensorBoard scalars of one ``metrics.jsonl`` record: ``{tag: value}``.

    Every int/float field except ``step`` (the x axis), tagged by :data:`SCALAR_TAGS` (unknown
    keys under their own name), and ``aer_by_layer`` ({method: [AER per layer]}) as
    ``aer/layer{i}_{method}``.
    """
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[SCALAR_TAGS.get(key, key)] = float(value)
    for method, per_layer in record.get("aer_by_layer", {}).items():
        for layer, value in enumerate(per_layer):
            out[f"aer/layer{layer}_{method}"] = float(value)
    return out


def validation_heatmaps(
    model: Transformer,
    tokenizer: Tokenizer,
    src_sentences: Sequence[str],
    tgt_sentences: Sequence[str],
    device: str | torch.device = "cpu",
) -> list[PairAlignment]:
    """Word-level cross-attention of fixed (source, reference) pairs with the current weights.

    Teacher-forced on the reference, ``attention`` method, :func:`mt.alignment.align.default_layer`,
    heads averaged: :func:`mt.alignment.align.align` with its defaults. The model's train/eval mode is
    restored afterwards.

    Returns: per pair, a :class:`mt.alignment.align.PairAlignment` (``word_matrix``: (n_tgt_words,
    n_src_words), rows sum to 1 over source words; ``links``: argmax per target word).

    Raises:
        ValueError: unequal numbers of sentences.
    """
    was_training = model.training
    try:
        return align(model, tokenizer, src_sentences, tgt_sentences, device=device)
    finally:
        model.train(was_training)


class TrainingMonitor:
    """Learning curves (PNG) and optional TensorBoard logs of one run directory.

    Args:
        run_dir: the run directory; ``learning_curves.png`` and ``tensorboard/`` go there.
        tensorboard: also write TensorBoard event files under ``run_dir/tensorboard``.
        records: the validations logged before (a resumed run: :func:`read_metrics`); they
            start the curves. When ``tensorboard/`` holds no event files yet (TensorBoard
            switched on at resume) they are logged to TensorBoard too.
        start_step: the step training starts from (a resumed run: its checkpoint's step; a
            fresh run: 0). Events an earlier run logged in ``tensorboard/`` at later steps are
            hidden, so curves never fold back (``SummaryWriter(purge_step=start_step + 1)``).

    Raises:
        ConfigError: ``tensorboard`` without the ``tensorboard`` package (at construction,
            before any training).
    """

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = False,
        records: Sequence[dict] = (),
        start_step: int = 0,
    ):
        self.run_dir = Path(run_dir)
        self.records = list(records)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "config key 'train.tensorboard' = true needs TensorBoard: pip install -e \".[tensorboard]\""
                ) from None
            log_dir = self.run_dir / TENSORBOARD_DIR
            fresh = not any(log_dir.glob("events.out.tfevents.*"))
            purge_step = None if fresh else start_step + 1
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
            if fresh:
                for record in self.records:
                    self._log_scalars(record)
                self.writer.flush()

    @property
    def tensorboard(self) -> bool:
        """True when TensorBoard event files are written (so heatmaps are worth computing)."""
        return self.writer is not None

    def _log_scalars(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record["step"])

    def log_validation(self, record: dict, heatmaps: Sequence[PairAlignment] | None = None) -> None:
        """Log one validation: rewrite the curves PNG; with TensorBoard, its scalars and heatmaps.

        Args:
            record: the ``metrics.jsonl`` record (``step`` and the numbers of this validation).
            heatmaps: :func:`validation_heatmaps` of the fixed sentences, logged as images
                ``attention/sentence{k}`` (k = 0-based index among them); ignored without TensorBoard.
        """
        self.records.append(record)
        plot_learning_curves(self.records, self.run_dir / CURVES_FILE)
        if self.writer is None:
            return
        step = record["step"]
        self._log_scalars(record)
        for k, pair in enumerate(heatmaps or ()):
            figure = alignment_figure(
                pair.word_matrix, pair.src_words, pair.tgt_words, pair.links, title=f"step {step}"
            )
            self.writer.add_image(f"attention/sentence{k}", figure_pixels(figure), step, dataformats="HWC")
        self.writer.flush()  # a crash between validations loses nothing already logged

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the PNG is always complete already)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
