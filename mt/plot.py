"""Heatmaps of attention matrices (matplotlib, non-interactive Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_tgt, n_src = word_matrix.shape
    if n_tgt == 0 or n_src == 0:  # a blank line on either side: an empty picture, not a crash
        word_matrix = np.zeros((max(n_tgt, 1), max(n_src, 1)))
        src_words, tgt_words = list(src_words) or [""], list(tgt_words) or [""]
        n_tgt, n_src = word_matrix.shape
    fig, ax = plt.subplots(figsize=(max(3.0, 0.5 * n_src + 1.5), max(2.5, 0.4 * n_tgt + 1.5)))
    image = ax.imshow(word_matrix, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(n_src), labels=list(src_words), rotation=60, ha="right")
    ax.set_yticks(range(n_tgt), labels=list(tgt_words))
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    for i, j in links:
        ax.add_patch(plt.Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor="crimson", linewidth=1.5))
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
