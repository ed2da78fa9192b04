"""The aligner: word alignment learnt on top of a finished translation model.

Guided alignment trained jointly with translation (Garg et al. 2019) learns only as fast as
the translation model does. Chen et al. (2020, "Accurate Word Alignment Induction from Neural
Machine Translation", EMNLP: Shift-AET) and Zenkel, Wuebker & DeNero (2020, "End-to-End Neural
Word Alignment Outperforms GIZA++", ACL) train an alignment module *in isolation*, on top of
the frozen model: only the small module learns, so its updates cost a fraction of a training
step, and the translation weights (and BLEU) do not move. This module is such an aligner,
trained with Garg et al.'s cross-entropy against statistical links (``data.alignments``).

What it reads, for a teacher-forced pair with target pieces y_1..y_n (decoder inputs BOS,
y_1..y_n; :meth:`mt.model.transformer.Transformer.layer_states`):

- the source side: a learnt mix (softmax-weighted, each layer normalised; Peters et al. 2018,
  ELMo) of the source embeddings and every encoder layer's output: the keys;
- the target side, per piece y_t: the same kind of mix over the decoder, taken at the row
  whose input is y_t (``shift``: it has seen the word it aligns, Chen et al.'s insight) and/or
  at the row that predicts y_t (``predict``), then ``n_layers`` layers that see the whole
  target and the source (self-attention without the future mask, cross-attention; Garg et
  al.'s full context): the queries;
- the alignment: the average of ``align_heads`` softmax attentions of those queries over the
  source pieces, (batch, tgt_len, src_len), row t for target piece t of ``tgt_out`` (the
  rows of G̃, :func:`mt.data.batching.alignment_targets`).

Every input is detached: the aligner's loss never reaches the translation model.

With ``null`` (:func:`null_targets`) a target piece without links learns to put its mass on the
source EOS, the NULL word of the IBM models (Brown et al. 1993): at extraction a target word
whose EOS mass exceeds that of its best source word stays unaligned.

With ``lexicon`` (:class:`Lexicon`) the scores also get learnt multiples of log c(s, t) and
log c(s), the teacher's link counts over the training pairs: IBM Model 1's translation table
(Brown et al. 1993) estimated from the teacher. It carries what the states cannot hold after a
few passes: which rare words the teacher linked to which.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from mt.config import AlignerConfig, AttentionConfig
from mt.model.dropout import Dropout
from mt.model.layers import DecoderLayer

LEXICON_SMOOTHING = 0.1  # added to every link count c(s, t): an unseen pair scores log 0.1
# where the lexicon's buffers sit in a Transformer's state dict: their sizes depend on the data
LEXICON_PREFIX = "aligner.lexicon."


class LayerMix(nn.Module):
    """Softmax-weighted sum of layer-normalised states, times a learnt scale (Peters et al. 2018).

    Args:
        n_states: how many (batch, len, d_model) tensors are mixed.
        d_model: their width.
    """

    def __init__(self, n_states: int, d_model: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_states))
        self.scale = nn.Parameter(torch.ones(()))
        self.n_states, self.d_model = n_states, d_model

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        """states: ``n_states`` × (batch, len, d_model) → (batch, len, d_model)."""
        weights = self.logits.softmax(0)
        mixed = sum(w * F.layer_norm(s.float(), (self.d_model,)) for w, s in zip(weights, states))
        return self.scale * mixed


class Aligner(nn.Module):
    """Alignment attention from target pieces to source pieces over frozen model states.

    Args:
        cfg: the ``model.aligner`` node.
        d_model: the translation model's width.
        n_src_states, n_tgt_states: how many state tensors each side of
            :meth:`mt.model.transformer.Transformer.layer_states` returns (layers + 1).
        src_vocab, tgt_vocab: vocabulary sizes, for ``cfg.lexicon``.
        dropout_masks: how its dropout masks are drawn (``model.dropout_masks``).
    """

    def __init__(
        self,
        cfg: AlignerConfig,
        d_model: int,
        n_src_states: int,
        n_tgt_states: int,
        src_vocab: int,
        tgt_vocab: int,
        dropout_masks: str = "bits",
    ):
        super().__init__()
        self.cfg = cfg
        self.src_mix = LayerMix(n_src_states, d_model)
        self.tgt_mix = LayerMix(n_tgt_states, d_model)
        self.shift_proj = nn.Linear(d_model, d_model) if cfg.inputs in ("shift", "both") else None
        self.predict_proj = nn.Linear(d_model, d_model) if cfg.inputs in ("predict", "both") else None
        context = AttentionConfig(n_heads=cfg.n_heads, dropout=cfg.dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, cfg.ffn_dim, cfg.dropout, 0.0, "relu", context, context, dropout_masks)
            for _ in range(cfg.n_layers)
        )
        self.query_norm = nn.LayerNorm(d_model)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.n_heads = cfg.align_heads
        self.head_dim = d_model // cfg.align_heads
        self.dropout = Dropout(cfg.dropout, dropout_masks)
        # per alignment head, softplus(·) = how much one unit of distance from the diagonal costs
        self.diagonal = nn.Parameter(torch.zeros(cfg.align_heads)) if cfg.position_bias else None
        self.lexicon = Lexicon(src_vocab, tgt_vocab) if cfg.lexicon else None

    def forward(
        self,
        src_states: list[torch.Tensor],
        src_mask: torch.Tensor,
        tgt_states: list[torch.Tensor],
        tgt_mask: torch.Tensor,
        src_ids: torch.Tensor | None = None,
        tgt_out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The alignment of each target piece.

        Args:
            src_states: (n_src_states) × (batch, src_len, d_model), from ``layer_states``.
            src_mask: (batch, src_len) bool, True = real source token (EOS included).
            tgt_states: (n_tgt_states) × (batch, tgt_len, d_model) at the decoder inputs BOS,
                y_1..y_n (right-padded).
            tgt_mask: (batch, tgt_len) bool, True = a real decoder input.
            src_ids: (batch, src_len) source ids; needed with a lexicon.
            tgt_out: (batch, tgt_len) the piece of each row (y_1..y_n, EOS, padding); needed
                with a lexicon (:func:`target_pieces` makes it from the decoder inputs).

        Returns: (batch, tgt_len, src_len) float32, row t the alignment of the piece predicted
            at row t (``tgt_out[:, t]``), rows sum to 1 over real source positions.

        Raises:
            ValueError: a lexicon without ``src_ids``/``tgt_out``, or one never counted.
        """
        src_states = [s.detach() for s in src_states]
        tgt_states = [s.detach() for s in tgt_states]
        memory = self.src_mix(src_states)  # (batch, src_len, d_model)
        mixed = self.tgt_mix(tgt_states)  # (batch, tgt_len, d_model)
        x = torch.zeros_like(mixed)
        if self.predict_proj is not None:  # row t predicts tgt_out[:, t]
            x = x + self.predict_proj(mixed)
        if self.shift_proj is not None:  # row t + 1 has tgt_out[:, t] as its input; EOS's row gets none
            following = F.pad(tgt_mask[:, 1:], (0, 1))  # (batch, tgt_len): row t + 1 is a real input
            shifted = F.pad(mixed[:, 1:], (0, 0, 0, 1)) * following[..., None]
            x = x + self.shift_proj(shifted)
        x = self.dropout(x)
        for layer in self.layers:  # the whole target and the source: no future mask
            x, _ = layer(x, memory, src_mask, full_context=True, tgt_mask=tgt_mask)
        batch, tgt_len, _ = x.shape
        q = self.q_proj(self.query_norm(x)).view(batch, tgt_len, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(memory).view(batch, -1, self.n_heads, self.head_dim).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(self.head_dim)  # (batch, n_heads, tgt_len, src_len)
        if self.diagonal is not None:
            scores = scores - F.softplus(self.diagonal)[:, None, None] * diagonal_distance(src_mask, tgt_mask)[:, None]
        if self.lexicon is not None:
            if src_ids is None or tgt_out is None:
                raise ValueError("an aligner with a lexicon needs src_ids and tgt_out")
            scores = scores + self.lexicon(src_ids, tgt_out)[:, None]
        scores = scores.masked_fill(~src_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1).mean(1)  # (batch, tgt_len, src_len)


def null_targets(alignment: torch.Tensor, src_mask: torch.Tensor, tgt_mask: torch.Tensor) -> torch.Tensor:
    """G̃ with each real target row that has no links pointing at its source EOS (NULL).

    Args:
        alignment: (batch, tgt_len, src_len) G̃, linked rows sum to 1, others zero.
        src_mask: (batch, src_len) bool, True = real source token; EOS is the last real one.
        tgt_mask: (batch, tgt_len) bool, True = a real target row (``tgt_out`` not padding).

    Returns: (batch, tgt_len, src_len), every real row sums to 1.
    """
    unlinked = tgt_mask & (alignment.sum(-1) == 0)  # (batch, tgt_len)
    eos = src_mask.sum(1) - 1  # (batch,) position of each source EOS
    null = F.one_hot(eos, alignment.size(-1)).to(alignment.dtype)[:, None, :]  # (batch, 1, src_len)
    return alignment + unlinked[..., None] * null


def diagonal_distance(src_mask: torch.Tensor, tgt_mask: torch.Tensor) -> torch.Tensor:
    """|j/n − i/m| for target row j of n target pieces and source piece i of m (EOS excluded),
    0 in the EOS column (and meaningless at padding, which the masks remove).

    Args:
        src_mask: (batch, src_len) bool, True = real source token (the last real one is EOS).
        tgt_mask: (batch, tgt_len) bool, True = a real decoder input (BOS + n pieces).

    Returns: (batch, tgt_len, src_len) float32.
    """
    m = (src_mask.sum(1, keepdim=True) - 1).clamp_min(1).float()  # (batch, 1) source pieces
    n = (tgt_mask.sum(1, keepdim=True) - 1).clamp_min(1).float()  # (batch, 1) target pieces
    i = torch.arange(src_mask.size(1), device=src_mask.device) / m  # (batch, src_len)
    j = torch.arange(tgt_mask.size(1), device=tgt_mask.device) / n  # (batch, tgt_len)
    distance = (j[:, :, None] - i[:, None, :]).abs()
    is_eos = torch.arange(src_mask.size(1), device=src_mask.device)[None, :] == m.long()  # (batch, src_len)
    return distance.masked_fill(is_eos[:, None, :], 0.0)


def target_pieces(tgt_in: torch.Tensor, pad_id: int, eos_id: int) -> torch.Tensor:
    """The piece each decoder row predicts: (batch, tgt_len) decoder inputs BOS, y_1..y_n,
    padding → y_1..y_n, EOS, padding (``tgt_out`` of :func:`mt.data.batching.collate`)."""
    real = tgt_in != pad_id
    out = F.pad(tgt_in[:, 1:], (0, 1), value=pad_id)
    last = real.sum(1) - 1  # (batch,) the row that predicts EOS
    return out.scatter(1, last[:, None], eos_id)


class Lexicon(nn.Module):
    """The teacher's link counts between source and target pieces, as alignment score biases.

    c(s, t) sums, over the distinct training pairs, the weight G̃ gives (source piece s, target
    piece t) (:func:`count_links`); c(s) = Σ_t c(s, t). The bias for target row t and source
    position i is ``a · log(c(s_i, t) + 0.1) − b · log(c(s_i) + 1)`` with learnt a and b (both
    1 at first: log of IBM Model 1's t(t | s), Brown et al. 1993, with the teacher's links as
    counts). NULL links (target pieces the teacher left unlinked) count towards the source EOS.

    Buffers (their sizes depend on the data; loading a state dict resizes them):
        keys: (n_entries,) int64, sorted: ``s * tgt_vocab + t`` of every piece pair with a count.
        counts: (n_entries,) float32 c(s, t).
        source_counts: (src_vocab,) float32 c(s).

    Args:
        src_vocab, tgt_vocab: vocabulary sizes.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int):
        super().__init__()
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.register_buffer("keys", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("counts", torch.zeros(0))
        self.register_buffer("source_counts", torch.zeros(0))
        self.weights = nn.Parameter(torch.ones(2))  # a, b above

    def count(self, src_ids, tgt_ids, links, eos_id: int, null: bool) -> int:
        """Count the teacher's links of the training pairs (:func:`count_links`) and keep them.

        Args: as :func:`count_links`, with piece ids per pair. Returns: the piece pairs counted.
        """
        keys, counts, source_keys, source_counts = count_links(src_ids, tgt_ids, links, eos_id, self.tgt_vocab, null)
        dense = torch.zeros(self.src_vocab)
        dense[source_keys] = source_counts
        device = self.weights.device
        self.keys, self.counts, self.source_counts = keys.to(device), counts.to(device), dense.to(device)
        return keys.numel()

    @contextlib.contextmanager
    def extra_counts(
        self, keys: torch.Tensor, counts: torch.Tensor, source_keys: torch.Tensor, source_counts: torch.Tensor
    ) -> Iterator[None]:
        """Within the block, c(s, t) and c(s) are the stored counts plus these (e.g. the teacher's
        links of the pairs being aligned, :mod:`mt.alignment.adapt`); afterwards, the stored ones.

        Args: as :func:`count_links` returns them: keys (n,) int64 sorted, counts (n,) float32,
            source_keys (n_sources,) int64, source_counts (n_sources,) float32.
        """
        saved = self.keys, self.counts, self.source_counts
        merged, inverse = torch.unique(torch.cat([self.keys, keys.to(self.keys.device)]), return_inverse=True)
        summed = torch.zeros(merged.numel(), device=self.counts.device).index_add_(
            0, inverse, torch.cat([self.counts, counts.to(self.counts.device)])
        )
        dense = self.source_counts.clone()
        dense.index_add_(0, source_keys.to(dense.device), source_counts.to(dense.device))
        self.keys, self.counts, self.source_counts = merged, summed, dense
        try:
            yield
        finally:
            self.keys, self.counts, self.source_counts = saved

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self._buffers:  # sizes come from the data: take the saved ones
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=self.weights.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, src_ids: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
        """The biases: (batch, src_len), (batch, tgt_len) ids → (batch, tgt_len, src_len) float32.

        Raises:
            ValueError: never filled (no counts).
        """
        if self.keys.numel() == 0:
            raise ValueError("the aligner's lexicon has no counts (it is filled when the stage starts)")
        query = src_ids[:, None, :] * self.tgt_vocab + tgt_out[:, :, None]  # (batch, tgt_len, src_len)
        pair_counts = _table_lookup(self.keys, self.counts, query)
        source_counts = self.source_counts[src_ids][:, None, :]  # (batch, 1, src_len)
        return self.weights[0] * torch.log(pair_counts + LEXICON_SMOOTHING) - self.weights[1] * torch.log1p(source_counts)


def _table_lookup(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """values[k] where keys[k] == query (keys sorted), else 0: same shape as ``query``, float32."""
    if keys.numel() == 0:
        return torch.zeros(query.shape, device=query.device)
    index = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
    return torch.where(keys[index] == query, values[index], 0.0)


def count_links(
    src_units: Sequence[Sequence[int]],
    tgt_units: Sequence[Sequence[int]],
    links: Sequence[np.ndarray],
    eos_unit: int,
    key_base: int,
    null: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's link counts for :class:`Lexicon`, each distinct pair counted once.

    Each pair adds its G̃ (:func:`mt.data.batching.alignment_targets`: a target piece with k links
    gives each 1/k) over rows y_1..y_n and EOS and columns x_1..x_m, to the units (piece ids)
    at those positions; with ``null``, each row without links adds 1 to (source EOS, its unit),
    as :func:`null_targets` trains it.

    Args:
        src_units, tgt_units: per training pair, the unit of each piece (no specials).
        links: per pair, (n_links, 2) int positions (src_piece, tgt_piece).
        eos_unit: the unit of EOS (both sides).
        key_base: above every target unit: a pair's key is ``s * key_base + t``.
        null: count unlinked rows towards the source EOS.

    Returns: keys (n_entries,) int64 sorted, counts (n_entries,) float32, and the source side's
        c(s) as sorted source units (n_sources,) int64 and their counts (n_sources,) float32.
    """
    seen: set[bytes] = set()
    all_keys, all_weights = [], []
    for src, tgt, pair_links in zip(src_units, tgt_units, links):
        src, tgt = np.asarray(src, dtype=np.int64), np.append(np.asarray(tgt, dtype=np.int64), eos_unit)
        fingerprint = src.tobytes() + b"|" + tgt.tobytes()
        if fingerprint in seen:  # copies of a pair (e.g. data.alignment_gold_train_copies) count once
            continue
        seen.add(fingerprint)
        pair_links = np.asarray(pair_links, dtype=np.int64).reshape(-1, 2)
        degree = np.bincount(pair_links[:, 1], minlength=len(tgt))
        all_keys.append(src[pair_links[:, 0]] * key_base + tgt[pair_links[:, 1]])
        all_weights.append(1.0 / degree[pair_links[:, 1]])
        if null:
            unlinked = tgt[degree == 0]
            all_keys.append(eos_unit * key_base + unlinked)
            all_weights.append(np.ones(len(unlinked)))
    keys, inverse = np.unique(np.concatenate(all_keys) if all_keys else np.zeros(0, np.int64), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate(all_weights) if all_weights else None, minlength=len(keys))
    source_keys, source_inverse = np.unique(keys // key_base, return_inverse=True)
    source_counts = np.bincount(source_inverse, weights=counts, minlength=len(source_keys))
    return (
        torch.from_numpy(keys),
        torch.from_numpy(counts.astype(np.float32)),
        torch.from_numpy(source_keys),
        torch.from_numpy(source_counts.astype(np.float32)),
    )
