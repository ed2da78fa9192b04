"""The interactive alignment view of ``mt-align --html``: one self-contained HTML file.

Each pair gets a heatmap of its word-level cross-attention (rows: target words, columns:
source words) that can be switched between decoder layers, heads and the head average, with
the hard links mt-align wrote and, for a gold set, the sure and possible gold links marked.
The page is the template ``mt/alignment_view.html`` with the data embedded as JSON and
drawn on ``<canvas>`` by inline JavaScript: no server, no network, no external assets (its
Content-Security-Policy forbids any load).

Embedded data (``<script id="alignment-data" type="application/json">``)::

    {"title", "method", "layer": the layer mt-align used, "heads": the heads it averaged,
     "n_layers", "n_heads", "scale": 1000, "has_gold", "n_pairs_total", ["layer_names"],
     "pairs": [{"index", "src_words", "tgt_words", "links", ["sure", "possible"],
                "matrices": [layer][head][tgt_word][src_word]}]}

Matrices hold integer thousandths (``round(p * scale)``), head index ``n_heads`` being the
average of ``heads``, pooled the way mt-align pools its ``word_matrix`` (average the pieces'
attention over the heads, then pool into words), so the view at mt-align's layer and average
is its ``word_matrix`` to 3 decimals. With ``--method aligner`` the aligner's matrix is one
more "layer" (every head entry the same), named ``aligner`` in ``layer_names``, and the view
opens on it.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from mt.alignment.aer import GoldAlignment
from mt.alignment.align import PairAlignment, method_rows
from mt.data.words import Segmentation

log = logging.getLogger(__name__)

SCALE = 1000  # matrices are stored as integer thousandths: 3 decimals at about half the bytes
# About 5.5 bytes per number in the JSON: 2.5M numbers ≈ 14 MB, past which browsers slow down. A
# 6-layer, 8-head model on 12-word sentences fits ~300 pairs; the pairs past the budget are left out.
MAX_VALUES = 2_500_000
TEMPLATE = "alignment_view.html"


def view_matrices(attention: np.ndarray, segmentation: Segmentation, method: str, heads: Sequence[int]) -> np.ndarray:
    """Word-level matrices of every layer and head of one pair, plus the average of ``heads``.

    Args:
        attention: (n_layers, n_heads, tgt_len + 1, src_len + 1) piece-level cross-attention
            (:attr:`PairAlignment.attention`).
        segmentation: the pair's pieces → words pooling.
        method: how rows are read (:data:`mt.alignment.align.METHODS`).
        heads: the heads whose average is the last entry.

    Returns: (n_layers, n_heads + 1, n_tgt_words, n_src_words) float32, rows sum to 1 (or 0);
        entry ``[l, n_heads]`` pools the average of ``heads`` at layer ``l``, as
        :func:`mt.alignment.align.word_links` does.

    Raises:
        ValueError: an unknown method.
    """
    n_layers, n_heads = attention.shape[:2]
    out = np.zeros((n_layers, n_heads + 1, len(segmentation.tgt_words), len(segmentation.src_words)), np.float32)
    for layer in range(n_layers):
        for head in range(n_heads):
            out[layer, head] = segmentation.word_matrix(method_rows(attention[layer, head], method))
        average = attention[layer, list(heads)].mean(axis=0)  # (tgt_len + 1, src_len + 1), as word_links averages
        out[layer, n_heads] = segmentation.word_matrix(method_rows(average, method))
    return out


def view_data(
    alignments: Sequence[PairAlignment],
    method: str,
    layer: int,
    heads: Sequence[int] | None = None,
    gold: GoldAlignment | None = None,
    title: str = "mt-align",
    max_values: int = MAX_VALUES,
) -> dict:
    """The JSON object the page draws (see the module docstring), of the first pairs whose matrices
    hold at most ``max_values`` numbers in all (at least one pair).

    Args:
        alignments: from :func:`mt.alignment.align.align` (possibly symmetrized); each needs its
            ``segmentation``.
        method, layer, heads: what mt-align used (layer 0-based, resolved; heads None = all).
        gold: the gold set the pairs come from (same order), or None.

    Raises:
        ValueError: a pair without segmentation, a layer out of range, or a gold set whose
            sentences differ from the pairs'.
    """
    n_layers, n_heads = alignments[0].attention.shape[:2] if alignments else (1, 1)
    heads = list(range(n_heads)) if heads is None else list(heads)
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range 0..{n_layers - 1}")
    pairs, n_values = [], 0
    for k, a in enumerate(alignments):
        n_values += n_layers * (n_heads + 1) * len(a.tgt_words) * len(a.src_words)
        if pairs and n_values > max_values:
            break
        if a.segmentation is None:
            raise ValueError(f"pair {k} has no segmentation (align() sets it)")
        matrices = view_matrices(a.attention, a.segmentation, method, heads)
        if method == "aligner":  # the aligner's matrix as one more layer, each head entry the same
            aligner = a.segmentation.word_matrix(method_rows(a.aligner, "aligner"))
            matrices = np.concatenate([matrices, np.broadcast_to(aligner, (1, n_heads + 1, *aligner.shape))])
        pair = {
            "index": k,
            "src_words": a.src_words,
            "tgt_words": a.tgt_words,
            "links": [list(link) for link in a.links],
            "matrices": np.rint(matrices * SCALE).astype(np.int64).tolist(),
        }
        if gold is not None:
            if (gold.src[k].split(), gold.tgt[k].split()) != (a.src_words, a.tgt_words):
                raise ValueError(f"pair {k}: the gold sentences differ from the aligned ones")
            pair["sure"] = sorted(list(link) for link in gold.sure[k])
            pair["possible"] = sorted(list(link) for link in gold.possible[k])
        pairs.append(pair)
    data = {
        "title": title,
        "method": method,
        "layer": layer,
        "heads": heads,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "scale": SCALE,
        "has_gold": gold is not None,
        "n_pairs_total": len(alignments),
        "pairs": pairs,
    }
    if method == "aligner":
        data.update(layer=n_layers, n_layers=n_layers + 1, layer_names=[*map(str, range(n_layers)), "aligner"])
    return data


def render_html(data: dict) -> str:
    """The page: the template with ``data`` embedded as JSON and ``data["title"]`` as its title.

    ``<`` in the JSON is written ``\\u003c``, so no sentence can close the script element.
    """
    template = resources.files("mt.alignment").joinpath(TEMPLATE).read_text(encoding="utf-8")
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    fills = {"{{TITLE}}": html.escape(data["title"]), "{{DATA}}": payload}
    return re.sub(r"\{\{(TITLE|DATA)\}\}", lambda m: fills[m.group()], template)  # one pass: data cannot refill


def read_view_data(page: str) -> dict:
    """The JSON object embedded in a page written by :func:`render_html` (inverse of it).

    Raises:
        ValueError: no embedded data in ``page``.
    """
    match = re.search(r'<script id="alignment-data" type="application/json">(.*?)</script>', page, re.S)
    if not match:
        raise ValueError("no alignment data in this page")
    return json.loads(match.group(1))


def write_html(path: str | Path, data: dict) -> int:
    """Write the page of ``data`` (from :func:`view_data`) to ``path``, creating its folder; warn
    when ``view_data`` left pairs out to keep the page small.

    Returns: the file size in bytes.
    """
    if len(data["pairs"]) < data["n_pairs_total"]:
        log.warning(
            "the HTML view shows the first %d of %d pairs, to keep the page small; align fewer pairs to see the others",
            len(data["pairs"]), data["n_pairs_total"],
        )
    page = render_html(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path.stat().st_size
