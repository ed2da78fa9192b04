"""Heatmaps of attention matrices and learning curves (matplotlib, non-interactive Agg backend).

Figures are built as ``matplotlib.figure.Figure`` objects and drawn on an Agg canvas, never
through ``pyplot``: no global figure registry, no GUI backend, safe in a training process.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def alignment_figure(
    word_matrix: np.ndarray,
    src_words: Sequence[str],
    tgt_words: Sequence[str],
    links: Sequence[tuple[int, int]] = (),
    title: str | None = None,
):
    """A heatmap of a word-level attention matrix, words on the axes (see :func:`alignment_heatmap`).

    Args:
        word_matrix: (n_tgt_words, n_src_words), rows = target words (y axis), columns =
            source words (x axis), values in [0, 1].
        links: ``(src_word, tgt_word)`` hard links, outlined on top of the heatmap.
        title: drawn above the heatmap.

    Returns: a ``matplotlib.figure.Figure`` (not registered with pyplot).
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n_tgt, n_src = word_matrix.shape
    if n_tgt == 0 or n_src == 0:  # a blank line on either side: an empty picture, not a crash
        word_matrix = np.zeros((max(n_tgt, 1), max(n_src, 1)))
        src_words, tgt_words = list(src_words) or [""], list(tgt_words) or [""]
        n_tgt, n_src = word_matrix.shape
    fig = Figure(figsize=(max(3.0, 0.5 * n_src + 1.5), max(2.5, 0.4 * n_tgt + 1.5)))
    ax = fig.subplots()
    image = ax.imshow(word_matrix, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n_src), labels=list(src_words), rotation=60, ha="right")
    ax.set_yticks(range(n_tgt), labels=list(tgt_words))
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    if title:
        ax.set_title(title, fontsize="small")
    for i, j in links:
        ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor="crimson", linewidth=1.5))
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def alignment_heatmap(
    word_matrix: np.ndarray,
    src_words: Sequence[str],
    tgt_words: Sequence[str],
    path: str | Path,
    links: Sequence[tuple[int, int]] = (),
) -> None:
    """Save a heatmap of a word-level attention matrix as PNG, words on the axes.

    Args:
        word_matrix: (n_tgt_words, n_src_words), rows = target words (y axis), columns =
            source words (x axis).
        links: ``(src_word, tgt_word)`` hard links, outlined on top of the heatmap.
        path: output file (PNG).
    """
    alignment_figure(word_matrix, src_words, tgt_words, links).savefig(path, dpi=100)


def figure_pixels(fig, dpi: int = 100) -> np.ndarray:
    """Draw ``fig`` on an Agg canvas: (height, width, 3) uint8 RGB, e.g. for TensorBoard's ``add_image``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# learning-curve panels: (title, [(record key, line label)]); a panel none of whose keys any
# record has is left out (no chrF before it was logged, no AER without data.alignment_gold)
CURVE_PANELS = (
    ("loss (nats/token)", [("train_loss", "train loss"), ("val_loss", "val loss")]),
    ("val score", [("val_bleu", "val BLEU"), ("val_chrf", "val chrF")]),
    ("learning rate", [("lr", "lr")]),
    ("target tokens/s", [("tokens_per_s", "tokens/s")]),
    ("AER (thin lines: each decoder layer)", [("aer", "AER")]),
    ("memory (MiB)", [("rss_mb", "resident (RSS)"), ("peak_rss_mb", "peak RSS")]),
)


def learning_curves_figure(records: Sequence[dict]):
    """The learning curves of a run: one panel per quantity, x = training step.

    Panels (see :data:`CURVE_PANELS`): train and val loss, the objective's named terms other
    than cross-entropy (``{term}_loss``/``val_{term}_loss``, e.g. ``align_loss``) when the
    records have them, val BLEU and chrF, learning rate, target tokens/s, AER when the records have it, with one
    thin line per decoder layer and method from ``aer_by_layer``, and the process's resident
    memory (``rss_mb``, ``peak_rss_mb``). A series is drawn over the records that have the key.

    Args:
        records: ``metrics.jsonl`` records (dicts with ``step`` and some of the keys above), in
            step order.

    Returns: a ``matplotlib.figure.Figure``; each line's label names its series.
    """
    from matplotlib.figure import Figure

    panels = [(title, series) for title, series in CURVE_PANELS if any(k in r for r in records for k, _ in series)]
    # the objective's named terms besides cross-entropy ({term}_loss, val_{term}_loss), one panel
    term_keys = {k for r in records for k in r if k.endswith("_loss") and not k.startswith(("train_", "val_"))}
    terms = sorted({k[: -len("_loss")] for k in term_keys} - {"xent"})
    if terms:
        series = [(key, label) for t in terms for key, label in ((f"{t}_loss", f"train {t}"), (f"val_{t}_loss", f"val {t}"))]
        panels.insert(1, ("loss terms (nats/token)", series))
    if not panels:  # no validation yet: one empty loss panel rather than no picture
        panels = [CURVE_PANELS[0]]
    n_cols = 2 if len(panels) > 1 else 1
    n_rows = math.ceil(len(panels) / n_cols)
    fig = Figure(figsize=(5.0 * n_cols, 3.2 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, (title, series) in zip(axes, panels):
        for key, label in series:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker=".", label=label)
        if title.startswith("AER"):
            for method in sorted({m for r in records for m in r.get("aer_by_layer", {})}):
                n_layers = max(len(r["aer_by_layer"][method]) for r in records if method in r.get("aer_by_layer", {}))
                for layer in range(n_layers):
                    points = [
                        (r["step"], r["aer_by_layer"][method][layer])
                        for r in records
                        if len(r.get("aer_by_layer", {}).get(method, ())) > layer
                    ]
                    steps, values = zip(*points)
                    ax.plot(steps, values, linewidth=0.8, alpha=0.6, label=f"AER layer {layer} ({method})")
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_learning_curves(records: Sequence[dict], path: str | Path) -> None:
    """Write :func:`learning_curves_figure` as PNG, atomically: a temporary file in the same
    folder renamed over ``path``, so a crash leaves the previous picture, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = learning_curves_figure(records)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
