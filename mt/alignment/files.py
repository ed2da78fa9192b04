"""An alignment run's output: the files ``mt-align`` writes and its text table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mt.alignment.aer import format_pharaoh
from mt.alignment.align import PairAlignment


def write_alignments(alignments: Sequence[PairAlignment], out_dir: str | Path, plot: bool = False) -> None:
    """Write ``attention.npz``, ``alignments.jsonl``, ``alignments.txt`` (and ``plots/k.png``) into ``out_dir``.

    ``attention.npz`` maps ``"k"`` (0-based pair index) to the (n_layers, n_heads, tgt_len + 1,
    src_len + 1) float32 piece-level matrix (see :class:`PairAlignment`); ``alignments.jsonl``
    holds per pair its pieces, words, word matrix and links (and, when symmetrized,
    ``forward_links`` and ``reverse_links``); ``alignments.txt`` one Pharaoh line per pair.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "attention.npz", **{str(k): a.attention for k, a in enumerate(alignments)})
    with (out_dir / "alignments.jsonl").open("w", encoding="utf-8") as jsonl, (out_dir / "alignments.txt").open(
        "w", encoding="utf-8"
    ) as pharaoh:
        for k, a in enumerate(alignments):
            record = {
                "index": k,
                "src_tokens": a.src_tokens,
                "tgt_tokens": a.tgt_tokens,
                "src_words": a.src_words,
                "tgt_words": a.tgt_words,
                "word_matrix": np.round(a.word_matrix, 6).tolist(),
                "links": [list(link) for link in a.links],
            }
            if a.forward_links is not None:  # symmetrized: the two directions behind "links"
                record["forward_links"] = [list(link) for link in a.forward_links]
                record["reverse_links"] = [list(link) for link in a.reverse_links]
            jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            pharaoh.write(format_pharaoh(a.links) + "\n")
    if plot:
        from mt.plot import alignment_heatmap

        (out_dir / "plots").mkdir(exist_ok=True)
        for k, a in enumerate(alignments):
            alignment_heatmap(a.word_matrix, a.src_words, a.tgt_words, out_dir / "plots" / f"{k}.png", a.links)


def format_table(a: PairAlignment) -> str:
    """The word matrix as a text table: one row per target word, one column per source word."""
    width = max([len(w) for w in a.src_words] + [5])
    label = max([len(w) for w in a.tgt_words] + [1])
    lines = [" " * label + " " + " ".join(w.rjust(width) for w in a.src_words)]
    for word, row in zip(a.tgt_words, a.word_matrix):
        lines.append(word.ljust(label) + " " + " ".join(f"{v:.2f}".rjust(width) for v in row))
    return "\n".join(lines)
