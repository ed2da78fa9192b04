"""The aligner: word alignment learnt on top of a finished translation model.

Guided alignment trained jointly with translation (Garg et al. 2019) learns only as fast as
the translation model does. Chen et al. (2020, "Accurate Word Alignment Induction from Neural
Machine Translation", EMNLP: Shift-AET) and Zenkel, Wuebker & DeNero (2020, "End-to-End Neural
Word Alignment Outperforms GIZA++", ACL) train an alignment module *in isolation*, on top of
the frozen model: only the small module learns, so its updates cost a fraction of a training
step, and the translation weights (and BLEU) do not move. This module is such an aligner,
trained with Garg et al.'s cross-entropy against statistical links (``data.alignments``).

What it reads, for a teacher-forced pair with target pieces y_1..y_n (decoder inputs BOS,
y_1..y_n; :meth:`mt.model.Transformer.layer_states`):

- the source side: a learnt mix (softmax-weighted, each layer normalised; Peters et al. 2018,
  ELMo) of the source embeddings and every encoder layer's output: the keys;
- the target side, per piece y_t: the same kind of mix over the decoder, taken at the row
  whose input is y_t (``shift``: it has seen the word it aligns, Chen et al.'s insight) and/or
  at the row that predicts y_t (``predict``), then ``n_layers`` layers that see the whole
  target and the source (self-attention without the future mask, cross-attention; Garg et
  al.'s full context): the queries;
- the alignment: the average of ``align_heads`` softmax attentions of those queries over the
  source pieces, (batch, tgt_len, src_len), row t for target piece t of ``tgt_out`` (the
  rows of G̃, :func:`mt.batching.alignment_targets`).

Every input is detached: the aligner's loss never reaches the translation model.

With ``null`` (:func:`null_targets`) a target piece without links learns to put its mass on the
source EOS, the NULL word of the IBM models (Brown et al. 1993): at extraction a target word
whose EOS mass exceeds that of its best source word stays unaligned.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mt.config import AlignerConfig, AttentionConfig
from mt.layers import DecoderLayer


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
            :meth:`mt.model.Transformer.layer_states` returns (layers + 1).
    """

    def __init__(self, cfg: AlignerConfig, d_model: int, n_src_states: int, n_tgt_states: int):
        super().__init__()
        self.cfg = cfg
        self.src_mix = LayerMix(n_src_states, d_model)
        self.tgt_mix = LayerMix(n_tgt_states, d_model)
        self.shift_proj = nn.Linear(d_model, d_model) if cfg.inputs in ("shift", "both") else None
        self.predict_proj = nn.Linear(d_model, d_model) if cfg.inputs in ("predict", "both") else None
        context = AttentionConfig(n_heads=cfg.n_heads, dropout=cfg.dropout)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, cfg.ffn_dim, cfg.dropout, 0.0, "relu", context, context) for _ in range(cfg.n_layers)
        )
        self.query_norm = nn.LayerNorm(d_model)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.n_heads = cfg.align_heads
        self.head_dim = d_model // cfg.align_heads
        self.dropout = nn.Dropout(cfg.dropout)
        # per alignment head, softplus(·) = how much one unit of distance from the diagonal costs
        self.diagonal = nn.Parameter(torch.zeros(cfg.align_heads)) if cfg.position_bias else None

    def forward(
        self, src_states: list[torch.Tensor], src_mask: torch.Tensor, tgt_states: list[torch.Tensor], tgt_mask: torch.Tensor
    ) -> torch.Tensor:
        """The alignment of each target piece.

        Args:
            src_states: (n_src_states) × (batch, src_len, d_model), from ``layer_states``.
            src_mask: (batch, src_len) bool, True = real source token (EOS included).
            tgt_states: (n_tgt_states) × (batch, tgt_len, d_model) at the decoder inputs BOS,
                y_1..y_n (right-padded).
            tgt_mask: (batch, tgt_len) bool, True = a real decoder input.

        Returns: (batch, tgt_len, src_len) float32, row t the alignment of the piece predicted
            at row t (``tgt_out[:, t]``), rows sum to 1 over real source positions.
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
