"""Pieces ↔ words: which whitespace word each sentencepiece piece belongs to, and pooling of
piece-level attention into word-level matrices.

Gold alignments and users think in whitespace words; the model sees pieces. Each piece is
assigned to the word holding the last character of its span, so ``▁`` markers, words split into
several pieces and punctuation glued to a word (``dog,``) land on the right word; a piece
with no surface (a lone ``▁``) goes with its neighbour; a word that encodes to no piece
(characters the normalizer deletes) owns no column or row and so gets no link.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mt.data.tokenizer import Piece, Tokenizer

log = logging.getLogger(__name__)

NO_WORD = -1


def words_of(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Whitespace words of ``text`` and their character spans [begin, end)."""
    matches = list(re.finditer(r"\S+", text))
    return [m.group() for m in matches], [m.span() for m in matches]


def piece_words(pieces: Sequence[Piece], spans: Sequence[tuple[int, int]]) -> list[int]:
    """Word index of each piece: the word holding the last character of its span.

    sentencepiece gives a piece's span the whitespace and the characters the normalizer deleted
    in front of it (`` \u200b r`` for ``▁r``), so its surface ends the span and the last
    character tells its word (the largest overlap would give ``▁r`` to a ``\u200b`` word).
    A piece with no surface of its own (a lone ``▁``, whose span covers only whitespace and
    deleted characters) or whose last character is in no word takes the word of the next
    piece that has one, else of the previous; :data:`NO_WORD` when the text has no words.
    So a word made only of deleted characters (``\u200b``) owns no piece.

    Returns: one word index per piece.
    """
    owners = []
    for piece in pieces:
        best = NO_WORD
        if piece.piece.replace("▁", "") and piece.end > piece.begin:
            last = piece.end - 1
            best = next((j for j, (begin, end) in enumerate(spans) if begin <= last < end), NO_WORD)
        owners.append(best)
    for i in range(len(owners)):  # pieces without a word: borrow a neighbour's
        if owners[i] == NO_WORD:
            after = [w for w in owners[i + 1 :] if w != NO_WORD]
            before = [w for w in owners[:i] if w != NO_WORD]
            owners[i] = after[0] if after else (before[-1] if before else NO_WORD)
    return owners


def pooling_matrices(
    tgt_owner: Sequence[int], src_owner: Sequence[int], n_tgt_words: int, n_src_words: int
) -> tuple[np.ndarray, np.ndarray]:
    """Matrices that pool piece-level attention into words (see :func:`pool`).

    Args:
        tgt_owner: (tgt_len,) word index of each target row, or NO_WORD.
        src_owner: (src_len,) word index of each source column, or NO_WORD (EOS).

    Returns:
        tgt_pool: (n_tgt_words, tgt_len) float64, each row averages the pieces of one word.
        src_pool: (src_len, n_src_words) float64 0/1, each column sums the pieces of one word.
    """
    src_pool = np.zeros((len(src_owner), n_src_words))
    for i, w in enumerate(src_owner):
        if w != NO_WORD:
            src_pool[i, w] = 1.0
    tgt_pool = np.zeros((n_tgt_words, len(tgt_owner)))
    for t, w in enumerate(tgt_owner):
        if w != NO_WORD:
            tgt_pool[w, t] = 1.0
    counts = tgt_pool.sum(axis=1, keepdims=True)
    return np.divide(tgt_pool, counts, out=np.zeros_like(tgt_pool), where=counts > 0), src_pool


def pool(matrix: np.ndarray, tgt_pool: np.ndarray, src_pool: np.ndarray) -> np.ndarray:
    """Pool a (tgt_len, src_len) piece-level attention matrix into a word-level one.

    Source pieces of one word add up their attention mass; target pieces of one word average
    their rows; each row is then renormalised over the source words (mass on EOS and
    unowned pieces is dropped). A target word that received no mass keeps a zero row.

    Args:
        tgt_pool, src_pool: from :func:`pooling_matrices`.

    Returns: (n_tgt_words, n_src_words) float32, rows sum to 1 (or 0).
    """
    words = tgt_pool @ matrix.astype(np.float64) @ src_pool
    totals = words.sum(axis=1, keepdims=True)
    return np.divide(words, totals, out=np.zeros_like(words), where=totals > 0).astype(np.float32)


@dataclass
class Segmentation:
    """A sentence pair's words and pieces, and how pieces pool into words.

    Attributes:
        src_pieces, tgt_pieces: pieces without specials (truncated to fit the model).
        src_words, tgt_words: whitespace words.
        src_pool: (src_len + 1, n_src_words) 0/1, piece (or EOS: zero row) → word.
        tgt_pool: (n_tgt_words, tgt_len) rows average the pieces of each target word.
    """

    src_pieces: list[Piece]
    tgt_pieces: list[Piece]
    src_words: list[str]
    tgt_words: list[str]
    src_pool: np.ndarray
    tgt_pool: np.ndarray

    def word_matrix(self, rows: np.ndarray) -> np.ndarray:
        """(tgt_len, src_len + 1) piece rows → (n_tgt_words, n_src_words) float32, rows sum to 1 (or 0)."""
        return pool(rows, self.tgt_pool, self.src_pool)


def segment(tokenizer: Tokenizer, src_texts: Sequence[str], tgt_texts: Sequence[str], max_pieces: int) -> list[Segmentation]:
    """Pieces, words and pooling matrices of each pair; pieces past ``max_pieces`` are cut (warned once)."""
    segmentations, too_long = [], 0
    for src_text, tgt_text in zip(src_texts, tgt_texts):
        src_pieces, tgt_pieces = tokenizer.src_pieces(src_text), tokenizer.tgt_pieces(tgt_text)
        too_long += (len(src_pieces) > max_pieces) + (len(tgt_pieces) > max_pieces)
        src_pieces, tgt_pieces = src_pieces[:max_pieces], tgt_pieces[:max_pieces]
        src_words, src_spans = words_of(src_text)
        tgt_words, tgt_spans = words_of(tgt_text)
        src_owner = [*piece_words(src_pieces, src_spans), NO_WORD]  # EOS column belongs to no word
        tgt_owner = piece_words(tgt_pieces, tgt_spans)
        tgt_pool, src_pool = pooling_matrices(tgt_owner, src_owner, len(tgt_words), len(src_words))
        segmentations.append(Segmentation(src_pieces, tgt_pieces, src_words, tgt_words, src_pool, tgt_pool))
    if too_long:  # words past the limit get no attention: zero rows/columns, no links
        log.warning("%d sentences longer than %d pieces were truncated to fit model.max_positions", too_long, max_pieces)
    return segmentations


