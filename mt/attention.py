"""Masks, attention kernels and the multi-head attention module.

Dimension names used in shapes: batch, n_heads, tgt_len (queries), src_len (keys/values),
head_dim = d_model / n_heads.

Mask convention everywhere: bool, True = may attend (as ``scaled_dot_product_attention``).

A variant is a *kernel*: a function ``(q, k, v, mask, causal, dropout_p, need_weights) ->
(out, weights)`` that sees only already-projected heads. The projections, head splitting and
the incremental cache live in :class:`MultiHeadAttention`, so a new variant touches one
function and one entry of :data:`ATTENTION_TYPES`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mt.config import AttentionConfig

Cache = dict[str, torch.Tensor]


def causal_mask(tgt_len: int, src_len: int | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Lower-triangular mask: query i may attend to keys 0..i (aligned to the *last* key).

    Returns: (tgt_len, src_len) bool; with src_len > tgt_len the queries are the last
    tgt_len positions of a src_len-long sequence (incremental decoding with a cache).
    """
    src_len = tgt_len if src_len is None else src_len
    offset = src_len - tgt_len
    return torch.ones(tgt_len, src_len, dtype=torch.bool, device=device).tril(diagonal=offset)


def full_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    dropout_p: float,
    need_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention, softmax(q kᵀ / √head_dim) v (Vaswani et al. 2017, §3.2.1).

    Args:
        q: (batch, n_heads, tgt_len, head_dim).
        k, v: (batch, n_heads, src_len, head_dim).
        mask: bool, broadcastable to (batch, n_heads, tgt_len, src_len), True = may attend;
            None = attend everywhere. Every query row must allow at least one key.
        causal: also forbid keys after the query (aligned as in :func:`causal_mask`).
        dropout_p: dropout on the weights (pass 0.0 at inference).
        need_weights: also return the attention weights. Without it the fused
            ``torch.nn.functional.scaled_dot_product_attention`` kernel runs and no
            (tgt_len, src_len) matrix is kept.

    Returns:
        out: (batch, n_heads, tgt_len, head_dim).
        weights: (batch, n_heads, tgt_len, src_len) float, rows sum to 1 over allowed keys
            (before dropout), or None when ``need_weights`` is false.
    """
    tgt_len, src_len = q.size(-2), k.size(-2)
    if causal and tgt_len == 1:
        causal = False  # one incremental step: the newest query may see every cached key
    if causal and (need_weights or mask is not None or tgt_len != src_len):
        # SDPA's is_causal aligns to the first key and cannot be combined with a mask
        step_mask = causal_mask(tgt_len, src_len, device=q.device)
        mask = step_mask if mask is None else mask & step_mask
        causal = False
    if not need_weights:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
        return out, None
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (batch, n_heads, tgt_len, src_len)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    out = F.dropout(weights, p=dropout_p) @ v  # (batch, n_heads, tgt_len, head_dim)
    return out, weights


# The one dispatch point for attention variants: name -> kernel.
ATTENTION_TYPES = {
    "full": full_attention,
}


class MultiHeadAttention(nn.Module):
    """Multi-head attention with q/k/v/out projections and an optional incremental cache.

    Args:
        d_model: model width; ``cfg.n_heads`` must divide it.
        cfg: the site's config node (type, n_heads, dropout, bias).
        causal: self-attention that may not look ahead (decoder self-attention).

    Raises:
        ValueError: unknown ``cfg.type`` (the message lists the valid ones), or n_heads not
            dividing d_model.
    """

    def __init__(self, d_model: int, cfg: AttentionConfig, causal: bool = False):
        super().__init__()
        if cfg.type not in ATTENTION_TYPES:
            raise ValueError(f"unknown attention type {cfg.type!r}; valid: {', '.join(ATTENTION_TYPES)}")
        if d_model % cfg.n_heads:
            raise ValueError(f"n_heads={cfg.n_heads} does not divide d_model={d_model}")
        self.n_heads = cfg.n_heads
        self.head_dim = d_model // cfg.n_heads
        self.dropout = cfg.dropout
        self.causal = causal
        self.kernel = ATTENTION_TYPES[cfg.type]
        self.q_proj = nn.Linear(d_model, d_model, bias=cfg.bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=cfg.bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=cfg.bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=cfg.bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # (batch, n_heads, len, head_dim)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        cache: Cache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``x`` to ``memory`` (cross-attention) or to ``x`` itself (self-attention).

        Args:
            x: (batch, tgt_len, d_model) queries.
            memory: (batch, src_len, d_model) keys and values; None for self-attention.
            mask: bool, broadcastable to (batch, n_heads, tgt_len, src_len), True = may attend.
            need_weights: return the per-head attention weights from this same pass.
            cache: dict for incremental decoding, updated in place. Self-attention appends
                this step's keys/values to ``cache["k"]``/``cache["v"]``; cross-attention
                computes them from ``memory`` on the first call and reuses them afterwards.

        Returns:
            out: (batch, tgt_len, d_model).
            weights: (batch, n_heads, tgt_len, src_len) or None.
        """
        q = self._split_heads(self.q_proj(x))  # (batch, n_heads, tgt_len, head_dim)
        if memory is not None and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]  # cross-attention keys/values are computed once per source
        else:
            source = x if memory is None else memory
            k = self._split_heads(self.k_proj(source))  # (batch, n_heads, src_len, head_dim)
            v = self._split_heads(self.v_proj(source))
            if cache is not None:
                if memory is None and "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        dropout_p = self.dropout if self.training else 0.0
        out, weights = self.kernel(q, k, v, mask, self.causal, dropout_p, need_weights)
        batch, _, tgt_len, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, tgt_len, self.n_heads * self.head_dim)  # (batch, tgt_len, d_model)
        return self.out_proj(out), weights
