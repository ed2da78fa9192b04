"""Token-budget batches of padded tensors: pair indices grouped by length, then padded.

:func:`token_batches` groups dataset indices into batches of similar length under a token
budget; :func:`collate` turns one batch's piece ids into a :class:`Batch` of padded tensors
(BOS/EOS added); :func:`pad` right-pads id lists for any caller that batches sentences.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mt.data.tokenizer import Tokenizer


@dataclass
class Batch:
    """Padded tensors of one batch.

    Attributes:
        src_ids: (batch, src_len) long, source pieces + EOS, right-padded.
        tgt_in: (batch, tgt_len) long, BOS + target pieces, right-padded (decoder input).
        tgt_out: (batch, tgt_len) long, target pieces + EOS, right-padded (labels).
        indices: (batch,) positions of the pairs in the dataset.
        alignment: (batch, tgt_len, src_len) float or None: the gold alignment of each target
            piece (row t: the piece ``tgt_out[:, t]`` predicts) over source pieces, each linked
            row normalised to sum to 1, rows without links (EOS, padding) all zero; for the
            guided-alignment loss (:class:`mt.training.objective.Objective`).
    """

    src_ids: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor
    indices: list[int]
    alignment: torch.Tensor | None = None

    @property
    def n_tgt_tokens(self) -> int:
        """Real (non-pad) target tokens, EOS included."""
        return int((self.tgt_out != Tokenizer.pad_id).sum())

    def to(self, device: torch.device) -> Batch:
        alignment = self.alignment.to(device) if self.alignment is not None else None
        return Batch(self.src_ids.to(device), self.tgt_in.to(device), self.tgt_out.to(device), self.indices, alignment)


def pad(sequences: Sequence[Sequence[int]], pad_id: int = Tokenizer.pad_id) -> torch.Tensor:
    """Right-pad id lists into a (len(sequences), longest) long tensor."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        out[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
    return out


def collate(
    src: Sequence[Sequence[int]],
    tgt: Sequence[Sequence[int]],
    indices: list[int],
    links: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> Batch:
    """Piece ids without specials → a :class:`Batch` (EOS appended, BOS prepended).

    Args:
        links: per pair, ``(src_piece, tgt_piece)`` links over its pieces (0-based, specials
            not counted), e.g. an (n_links, 2) int array; gives the batch its ``alignment``.
    """
    bos, eos = Tokenizer.bos_id, Tokenizer.eos_id
    src_ids = pad([[*s, eos] for s in src])
    tgt_out = pad([[*t, eos] for t in tgt])
    return Batch(
        src_ids=src_ids,
        tgt_in=pad([[bos, *t] for t in tgt]),
        tgt_out=tgt_out,
        indices=indices,
        alignment=None if links is None else alignment_targets(links, tgt_out.size(1), src_ids.size(1)),
    )


def alignment_targets(links: Sequence[Sequence[tuple[int, int]]], tgt_len: int, src_len: int) -> torch.Tensor:
    """Gold piece links → G̃: (batch, tgt_len, src_len) float32, G̃[b, t, s] = 1 / (links of target
    piece t) when source piece s is one of them, rows without links all zero (Garg et al. 2019, §4).
    """
    out = torch.zeros(len(links), tgt_len, src_len)
    for row, pair_links in enumerate(links):
        for s, t in pair_links:
            out[row, t, s] = 1.0
    return out / out.sum(-1, keepdim=True).clamp_min(1.0)


def token_batches(
    src_lens: Sequence[int],
    tgt_lens: Sequence[int],
    batch_tokens: int,
    shuffle: bool,
    seed: int = 0,
) -> list[list[int]]:
    """Group pair indices into batches of similar length under a token budget.

    Pairs are sorted by (source length, target length) — with a seeded random tie-break when
    shuffling — and cut greedily so that sentences × longest side (padding included, +1 for
    EOS/BOS) stays within ``batch_tokens``; the batch order is then shuffled (fairseq's
    ``batch_by_size``).

    Args:
        src_lens, tgt_lens: lengths in pieces, without specials (sequences of ints or int arrays).
        batch_tokens: budget in tokens; a single pair longer than it gets a batch of its own.
        shuffle: randomise tie order and batch order with ``seed`` (training).

    Returns:
        batches of dataset indices; every index appears exactly once.
    """
    rng = random.Random(seed)
    src, tgt = np.asarray(src_lens, dtype=np.int64), np.asarray(tgt_lens, dtype=np.int64)
    keys = np.array([rng.random() for _ in range(len(src))] if shuffle else np.zeros(len(src)))
    # by source length, then target length, then key, stable as sorted() was; 0.75 s instead of
    # 2.8 s for 1.16M pairs (the whole function), and no key tuple per pair
    order = np.lexsort((keys, tgt, src))
    sizes = (np.maximum(src, tgt)[order] + 1).tolist()  # longest side + EOS/BOS
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, length in zip(order.tolist(), sizes):
        if current and max(longest, length) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches
