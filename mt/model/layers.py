"""Positions, feed-forward blocks and the pre-norm encoder and decoder layers.

Pre-norm residual blocks, x + Dropout(Sublayer(LayerNorm(x))) (Xiong et al. 2020, "On Layer
Normalization in the Transformer Architecture"): stable without a long warm-up, so small
models train quickly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mt.model.attention import Cache, MultiHeadAttention
from mt.model.dropout import Dropout
from mt.config import AttentionConfig


def sinusoidal_positions(n_positions: int, d_model: int) -> torch.Tensor:
    """Fixed sinusoidal position encodings (Vaswani et al. 2017, §3.5).

    Returns: (n_positions, d_model) float32; even columns sin, odd columns cos.
    """
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (n_positions, 1)
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return table


class FeedForward(nn.Module):
    """Position-wise feed-forward block: Linear(d_model→ffn_dim) → activation → Linear(ffn_dim→d_model)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, activation: str, dropout_masks: str = "bits"):
        """``dropout`` applies to the activation (inner width); 0 skips it. ``dropout_masks``:
        how its masks are drawn (:mod:`mt.model.dropout`)."""
        super().__init__()
        self.in_proj = nn.Linear(d_model, ffn_dim)
        self.out_proj = nn.Linear(ffn_dim, d_model)
        self.dropout = Dropout(dropout, dropout_masks) if dropout > 0 else nn.Identity()
        self.activation = F.gelu if activation == "gelu" else F.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, len, d_model) → (batch, len, d_model)."""
        return self.out_proj(self.dropout(self.activation(self.in_proj(x))))


class EncoderLayer(nn.Module):
    """Self-attention over the source, then feed-forward; each a pre-norm residual block."""

    def __init__(
        self,
        d_model: int,
        ffn_dim: int,
        dropout: float,
        ffn_dropout: float,
        activation: str,
        self_attention: AttentionConfig,
        dropout_masks: str = "bits",
    ):
        super().__init__()
        self.self_attention_norm = nn.LayerNorm(d_model)
        self.self_attention = MultiHeadAttention(d_model, self_attention, dropout_masks=dropout_masks)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, ffn_dropout, activation, dropout_masks)
        self.dropout = Dropout(dropout, dropout_masks)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """x: (batch, src_len, d_model); src_mask: (batch, src_len) bool, True = real token."""
        h, _ = self.self_attention(self.self_attention_norm(x), mask=src_mask[:, None, None, :])
        x = x + self.dropout(h)
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, then feed-forward."""

    def __init__(
        self,
        d_model: int,
        ffn_dim: int,
        dropout: float,
        ffn_dropout: float,
        activation: str,
        self_attention: AttentionConfig,
        cross_attention: AttentionConfig,
        dropout_masks: str = "bits",
    ):
        super().__init__()
        self.self_attention_norm = nn.LayerNorm(d_model)
        self.self_attention = MultiHeadAttention(d_model, self_attention, causal=True, dropout_masks=dropout_masks)
        self.cross_attention_norm = nn.LayerNorm(d_model)
        self.cross_attention = MultiHeadAttention(d_model, cross_attention, dropout_masks=dropout_masks)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, ffn_dim, ffn_dropout, activation, dropout_masks)
        self.dropout = Dropout(dropout, dropout_masks)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
        cache: dict[str, Cache] | None = None,
        need_weights: bool = False,
        full_context: bool = False,
        group: int = 1,
        tgt_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One decoder layer.

        Args:
            x: (batch, tgt_len, d_model) target states.
            memory: (batch, src_len, d_model) encoder output.
            src_mask: (batch, src_len) bool, True = real source token.
            cache: ``{"self_attention": {...}, "cross_attention": {...}}`` for incremental
                decoding (updated in place), or None.
            need_weights: return the cross-attention weights.
            full_context: self-attention without the future mask: each target position sees
                the whole target (Garg et al. 2019's full-context alignment pass).
            group: each ``group`` consecutive rows of ``x`` share one row of ``memory`` and
                ``src_mask`` (beam search; see :meth:`MultiHeadAttention.forward`).
            tgt_mask: (batch, tgt_len) bool, True = real target position: with
                ``full_context``, what self-attention may see (the causal mask alone keeps
                right-padding out of sight; a full-context pass needs this).

        Returns:
            x: (batch, tgt_len, d_model).
            cross_weights: (batch, n_heads, tgt_len, src_len) or None.
        """
        self_cache = cache["self_attention"] if cache is not None else None
        cross_cache = cache["cross_attention"] if cache is not None else None
        self_mask = tgt_mask[:, None, None, :] if tgt_mask is not None else None
        h, _ = self.self_attention(
            self.self_attention_norm(x), mask=self_mask, cache=self_cache, causal=False if full_context else None
        )
        x = x + self.dropout(h)
        h, cross_weights = self.cross_attention(
            self.cross_attention_norm(x),
            memory,
            mask=src_mask[:, None, None, :],
            need_weights=need_weights,
            cache=cross_cache,
            group=group,
        )
        x = x + self.dropout(h)
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, cross_weights
