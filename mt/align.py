"""Cross-attention → soft matrices → word pooling → hard links → files.

Teacher-forced over a (source, target) pair, the decoder's cross-attention at target row t is
the attention paid while *predicting* target token t (its input is BOS + tokens < t). Both axes
include EOS: the source EOS column and the target EOS row are kept in the soft matrices and
dropped when pooling into words, so special tokens never appear in word links.

Words are whitespace-separated tokens of the given text; each sentencepiece piece is assigned
to the word its character span overlaps (pieces without a surface go with their neighbour).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mt.data import pad
from mt.model import Transformer
from mt.tokenizer import Piece, Tokenizer

log = logging.getLogger(__name__)

NO_WORD = -1


def default_layer(n_layers: int) -> int:
    """The penultimate decoder layer (0-based): its cross-attention aligns best in 6-layer
    models (Garg et al. 2019, "Jointly Learning to Align and Translate with Transformer Models")."""
    return max(n_layers - 2, 0)


def words_of(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Whitespace words of ``text`` and their character spans [begin, end)."""
    matches = list(re.finditer(r"\S+", text))
    return [m.group() for m in matches], [m.span() for m in matches]


def piece_words(pieces: Sequence[Piece], spans: Sequence[tuple[int, int]]) -> list[int]:
    """Word index of each piece: the word its character span overlaps most.

    A piece that overlaps no word (a lone ``▁``, zero-width) takes the word of the next piece
    that has one, else of the previous; :data:`NO_WORD` when the text has no words.

    Returns: one word index per piece.
    """
    owners = []
    for piece in pieces:
        best, best_overlap = NO_WORD, 0
        for j, (begin, end) in enumerate(spans):
            overlap = min(end, piece.end) - max(begin, piece.begin)
            if overlap > best_overlap:
                best, best_overlap = j, overlap
        owners.append(best)
    for i in range(len(owners)):  # zero-width pieces: borrow a neighbour's word
        if owners[i] == NO_WORD:
            after = [w for w in owners[i + 1 :] if w != NO_WORD]
            before = [w for w in owners[:i] if w != NO_WORD]
            owners[i] = after[0] if after else (before[-1] if before else NO_WORD)
    return owners


def pool_to_words(
    matrix: np.ndarray, tgt_owner: Sequence[int], src_owner: Sequence[int], n_tgt_words: int, n_src_words: int
) -> np.ndarray:
    """Pool a piece-level attention matrix into a word-level one.

    Source pieces of one word add up their attention mass; target pieces of one word average
    their rows; each row is then renormalised over the source words (mass on EOS and
    unowned pieces is dropped). A target word that received no mass keeps a zero row.

    Args:
        matrix: (tgt_len, src_len) attention over pieces.
        tgt_owner: (tgt_len,) word index of each target row, or NO_WORD (EOS).
        src_owner: (src_len,) word index of each source column, or NO_WORD (EOS).

    Returns: (n_tgt_words, n_src_words) float32, rows sum to 1 (or 0).
    """
    to_src = np.zeros((len(src_owner), n_src_words), dtype=np.float64)
    for i, w in enumerate(src_owner):
        if w != NO_WORD:
            to_src[i, w] = 1.0
    from_tgt = np.zeros((n_tgt_words, len(tgt_owner)), dtype=np.float64)
    for t, w in enumerate(tgt_owner):
        if w != NO_WORD:
            from_tgt[w, t] = 1.0
    counts = from_tgt.sum(axis=1, keepdims=True)
    from_tgt = np.divide(from_tgt, counts, out=np.zeros_like(from_tgt), where=counts > 0)
    words = from_tgt @ matrix.astype(np.float64) @ to_src  # (n_tgt_words, n_src_words)
    totals = words.sum(axis=1, keepdims=True)
    return np.divide(words, totals, out=np.zeros_like(words), where=totals > 0).astype(np.float32)


def argmax_links(word_matrix: np.ndarray) -> list[tuple[int, int]]:
    """Each target word links to its most-attended source word.

    Args: word_matrix: (n_tgt_words, n_src_words).
    Returns: sorted ``(src_word, tgt_word)`` pairs, 0-based; rows of zeros give no link.
    """
    links = [(int(row.argmax()), t) for t, row in enumerate(word_matrix) if row.sum() > 0]
    return sorted(links)


def format_pharaoh(links: Sequence[tuple[int, int]]) -> str:
    """``[(0, 0), (2, 1)]`` → ``"0-0 2-1"`` (source index first, 0-based)."""
    return " ".join(f"{i}-{j}" for i, j in links)


def parse_pharaoh(line: str) -> list[tuple[int, int]]:
    """``"0-0 2-1"`` → ``[(0, 0), (2, 1)]``.

    Raises:
        ValueError: a token that is not ``i-j`` with non-negative integers.
    """
    links = []
    for token in line.split():
        i, sep, j = token.partition("-")
        if not (sep and i.isdigit() and j.isdigit()):
            raise ValueError(f"not a Pharaoh link: {token!r}")
        links.append((int(i), int(j)))
    return links


@dataclass
class PairAlignment:
    """The cross-attention alignment of one (source, target) pair.

    Attributes:
        attention: (n_layers, n_heads, tgt_len, src_len) float32 over pieces, EOS row/column
            included; rows sum to 1.
        src_tokens, tgt_tokens: the pieces of each axis, ``</s>`` last.
        src_words, tgt_words: whitespace words.
        word_matrix: (n_tgt_words, n_src_words) float32 from the chosen layer and heads.
        links: ``(src_word, tgt_word)`` pairs.
    """

    attention: np.ndarray
    src_tokens: list[str]
    tgt_tokens: list[str]
    src_words: list[str]
    tgt_words: list[str]
    word_matrix: np.ndarray
    links: list[tuple[int, int]]


@torch.inference_mode()
def teacher_forced_attention(
    model: Transformer,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """Cross-attention of every decoder layer and head, teacher-forced, in length-sorted batches.

    Args:
        src_ids, tgt_ids: piece ids without specials (EOS/BOS are added here).

    Returns: per pair, (n_layers, n_heads, len(tgt) + 1, len(src) + 1) float32.
    """
    model.eval()
    bos, eos = Tokenizer.bos_id, Tokenizer.eos_id
    order = sorted(range(len(src_ids)), key=lambda k: (len(src_ids[k]), len(tgt_ids[k])))
    out: list[np.ndarray] = [np.zeros(0)] * len(src_ids)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        src = pad([[*src_ids[k], eos] for k in batch]).to(device)
        tgt_in = pad([[bos, *tgt_ids[k]] for k in batch]).to(device)
        memory, src_mask = model.encode(src)
        _, weights = model.decode(tgt_in, memory, src_mask, need_weights=True)
        stacked = torch.stack(weights, dim=1).float().cpu().numpy()  # (batch, n_layers, n_heads, tgt_len, src_len)
        for row, k in enumerate(batch):
            out[k] = stacked[row, :, :, : len(tgt_ids[k]) + 1, : len(src_ids[k]) + 1].copy()
    return out


def align(
    model: Transformer,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    tgt_texts: Sequence[str],
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> list[PairAlignment]:
    """Align each (source, target) pair from the model's cross-attention.

    The word matrix averages the heads ``heads`` (default: all) of decoder layer ``layer``
    (default: :func:`default_layer`); links are its row-wise argmax.

    Raises:
        ValueError: ``layer`` or a head index out of range, or unequal numbers of texts.
    """
    if len(src_texts) != len(tgt_texts):
        raise ValueError(f"{len(src_texts)} source but {len(tgt_texts)} target sentences")
    n_layers = len(model.decoder_layers)
    n_heads = model.decoder_layers[0].cross_attention.n_heads
    layer = default_layer(n_layers) if layer is None else layer
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"--layer {layer} out of range: the decoder has {n_layers} layers (0..{n_layers - 1})")
    heads = list(range(n_heads)) if heads is None else list(heads)
    if not heads or any(not 0 <= h < n_heads for h in heads):
        raise ValueError(f"--heads {heads} out of range: cross-attention has {n_heads} heads (0..{n_heads - 1})")
    limit = model.cfg.max_positions - 1
    src_pieces = [tokenizer.src_pieces(text) for text in src_texts]
    tgt_pieces = [tokenizer.tgt_pieces(text) for text in tgt_texts]
    too_long = sum(len(pieces) > limit for pieces in (*src_pieces, *tgt_pieces))
    if too_long:  # words past the limit get no attention: zero rows/columns, no links
        log.warning("%d sentences longer than %d pieces were truncated to fit model.max_positions", too_long, limit)
        src_pieces = [pieces[:limit] for pieces in src_pieces]
        tgt_pieces = [pieces[:limit] for pieces in tgt_pieces]
    attention = teacher_forced_attention(
        model, [[p.id for p in ps] for ps in src_pieces], [[p.id for p in ps] for ps in tgt_pieces], batch_size, device
    )
    results = []
    for k, matrix in enumerate(attention):
        src_words, src_spans = words_of(src_texts[k])
        tgt_words, tgt_spans = words_of(tgt_texts[k])
        src_owner = [*piece_words(src_pieces[k], src_spans), NO_WORD]  # EOS column belongs to no word
        tgt_owner = [*piece_words(tgt_pieces[k], tgt_spans), NO_WORD]  # EOS row belongs to no word
        soft = matrix[layer, heads].mean(axis=0)  # (tgt_len, src_len)
        word_matrix = pool_to_words(soft, tgt_owner, src_owner, len(tgt_words), len(src_words))
        results.append(
            PairAlignment(
                attention=matrix,
                src_tokens=[p.piece for p in src_pieces[k]] + ["</s>"],
                tgt_tokens=[p.piece for p in tgt_pieces[k]] + ["</s>"],
                src_words=src_words,
                tgt_words=tgt_words,
                word_matrix=word_matrix,
                links=argmax_links(word_matrix),
            )
        )
    return results


def write_alignments(alignments: Sequence[PairAlignment], out_dir: str | Path, plot: bool = False) -> None:
    """Write ``attention.npz``, ``alignments.jsonl``, ``alignments.txt`` (and ``plots/k.png``) into ``out_dir``.

    ``attention.npz`` maps ``"k"`` (0-based pair index) to the (n_layers, n_heads, tgt_len,
    src_len) float32 piece-level matrix; ``alignments.txt`` holds one Pharaoh line per pair.
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
