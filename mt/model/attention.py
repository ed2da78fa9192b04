"""Masks, attention kernels and the multi-head attention module.

Dimension names used in shapes: batch, n_heads, tgt_len (queries), src_len (keys/values),
head_dim = d_model / n_heads.

Mask convention everywhere: bool, True = may attend (as ``scaled_dot_product_attention``).

A variant is a *kernel*: a function ``(q, k, v, mask, causal, dropout_p, need_weights, *,
dropout_masks) -> (out, weights)`` that sees only already-projected heads; its own knobs (``window``,
``top_k``) are bound from the site's config by its entry in :data:`KERNELS`, the one dispatch
point. The schema names the variants, where each may run and its knobs
(:data:`mt.config.ATTENTION_TYPES`, ``SELF_ATTENTION_ONLY``, ``ATTENTION_KNOBS``) and checks
every site (:func:`mt.config.check_attention_site`), so that a config is checked without
torch. The projections, grouped key/value heads, rotary positions and the incremental cache
live in :class:`MultiHeadAttention`, so a new variant is one kernel, one entry of
:data:`KERNELS`, its name (and knob, if it has one) in ``mt/config.py`` and one YAML file per
site group, ``configs/model/<site>/<name>.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mt.config import ATTENTION_TYPES, AttentionConfig
from mt.model.dropout import dropout, uses_bits


class KVCache:
    """Self-attention keys and values of the positions decoded so far (incremental decoding).

    They live in buffers of shape (batch, n_kv_heads, capacity, head_dim) that grow by
    doubling: a step writes its keys and values at the next positions in place, and
    :meth:`reorder` (beam search) gathers the filled positions of the kept rows into a second
    buffer, swapped with the first. Concatenating a new (batch, n_kv_heads, length, head_dim)
    tensor at every step instead copies the whole cache twice per step and, once it is large,
    pays fresh pages for it each time (fp32, 320 rows, 128 positions: ~20x slower per step).

    Unfilled positions hold finite values (zeros, or keys of an earlier step), so that a masked
    attention over the whole buffers (:meth:`filled`) gives them weight 0 without 0 x NaN.

    Attributes:
        length: positions filled (the next step's position).
    """

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.length = 0
        self._spare: tuple[torch.Tensor, torch.Tensor] | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the keys and values of new positions: k, v (batch, n_kv_heads, new, head_dim).

        Returns: all keys and values so far, (batch, n_kv_heads, length, head_dim) views.
        """
        start, end = self.length, self.length + k.size(2)
        if self.keys is None or end > self.keys.size(2):
            capacity = max(16, end, 2 * (self.keys.size(2) if self.keys is not None else 0))
            keys, values = (k.new_zeros(k.size(0), k.size(1), capacity, k.size(3)) for _ in range(2))
            if self.keys is not None:
                keys[:, :, :start], values[:, :, :start] = self.keys[:, :, :start], self.values[:, :, :start]
            self.keys, self.values, self._spare = keys, values, None
        self.keys[:, :, start:end], self.values[:, :, start:end] = k, v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def filled(self) -> torch.Tensor:
        """(1, 1, 1, capacity) bool, True at the filled positions: a key mask for attending over
        the whole buffers (contiguous, unlike the views :meth:`append` returns)."""
        return (torch.arange(self.keys.size(2), device=self.keys.device) < self.length).view(1, 1, 1, -1)

    def reorder(self, order: torch.Tensor) -> None:
        """Keep the rows ``order`` ((new_batch,) long indices into the current batch), in that order."""
        if self.keys is None:
            return
        shape = (order.size(0), *self.keys.shape[1:])
        if self._spare is None or self._spare[0].shape != shape:
            self._spare = (self.keys.new_zeros(shape), self.values.new_zeros(shape))
        spare_keys, spare_values = self._spare
        filled = slice(0, self.length)
        torch.index_select(self.keys[:, :, filled], 0, order, out=spare_keys[:, :, filled])
        torch.index_select(self.values[:, :, filled], 0, order, out=spare_values[:, :, filled])
        self._spare = (self.keys, self.values)
        self.keys, self.values = spare_keys, spare_values


Cache = dict[str, "torch.Tensor | KVCache"]  # self-attention: {"kv": KVCache}; cross-attention: {"k", "v"}
Kernel = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]  # (q, k, v, mask, causal, dropout_p, need_weights, *, dropout_masks)
SHORT_QUERIES = 8  # full_attention: up to this many queries per row, without dropout, skip the fused kernel


def causal_mask(tgt_len: int, src_len: int | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Lower-triangular mask: query i may attend to keys 0..i (aligned to the *last* key).

    Returns: (tgt_len, src_len) bool; with src_len > tgt_len the queries are the last
    tgt_len positions of a src_len-long sequence (incremental decoding with a cache).
    """
    src_len = tgt_len if src_len is None else src_len
    offset = src_len - tgt_len
    return torch.ones(tgt_len, src_len, dtype=torch.bool, device=device).tril(diagonal=offset)


def _with_causal(mask: torch.Tensor | None, tgt_len: int, src_len: int, device: torch.device) -> torch.Tensor:
    """``mask`` (or no mask) combined with :func:`causal_mask`."""
    step_mask = causal_mask(tgt_len, src_len, device=device)
    return step_mask if mask is None else mask & step_mask


def _masked_scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q kᵀ / √head_dim with forbidden keys at -inf: (batch, n_heads, tgt_len, src_len)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    return scores if mask is None else scores.masked_fill(~mask, float("-inf"))


def full_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    dropout_p: float,
    need_weights: bool,
    *,
    dropout_masks: str = "bits",
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
            (tgt_len, src_len) matrix is kept, unless there are at most :data:`SHORT_QUERIES`
            queries and no dropout (a decoding step), where two matmuls are faster, or the
            dropout draws ``bits`` masks (:mod:`mt.model.dropout`; with dropout the fused
            kernel falls back to its own unfused math on the CPU anyway).
        dropout_masks: ``model.dropout_masks``, how the dropout masks are drawn.

    Returns:
        out: (batch, n_heads, tgt_len, head_dim).
        weights: (batch, n_heads, tgt_len, src_len) float, rows sum to 1 over allowed keys
            (before dropout), or None when ``need_weights`` is false.
    """
    tgt_len, src_len = q.size(-2), k.size(-2)
    if causal and tgt_len == 1:
        causal = False  # one incremental step: the newest query may see every cached key
    # a decoding step (one query per row, or the beams of a sentence side by side): two small
    # matmuls beat the fused kernel, whose set-up costs more than it saves (4x in bf16 on CPU)
    few_queries = tgt_len <= SHORT_QUERIES and dropout_p == 0.0
    fused = not (need_weights or few_queries or uses_bits(q, dropout_p, dropout_masks))
    if causal and (not fused or mask is not None or tgt_len != src_len):
        # SDPA's is_causal aligns to the first key and cannot be combined with a mask
        mask, causal = _with_causal(mask, tgt_len, src_len, q.device), False
    if fused:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
        return out, None
    weights = _masked_scores(q, k, mask).float().softmax(dim=-1).to(q.dtype)  # (batch, n_heads, tgt_len, src_len)
    out = dropout(weights, dropout_p, masks=dropout_masks) @ v  # (batch, n_heads, tgt_len, head_dim)
    return out, weights if need_weights else None


def _with_fallback_rows(mask: torch.Tensor) -> torch.Tensor:
    """Let query rows that may attend to nothing attend everywhere instead.

    Such rows only occur at padded query positions (e.g. a local window lying wholly in the
    padding); their outputs are never used, but a fully masked softmax would put NaN into
    the residual stream, and 0 × NaN is NaN once they become masked keys in the next layer.
    """
    return mask | ~mask.any(dim=-1, keepdim=True)


def band_mask(tgt_len: int, src_len: int, window: int, causal: bool, device: torch.device | None = None) -> torch.Tensor:
    """Sliding-window mask: query i may attend to keys at most ``window`` positions away.

    Queries are aligned to the *last* keys, as in :func:`causal_mask`; with ``causal`` only
    keys at or before the query's own position are allowed.

    Returns: (tgt_len, src_len) bool.
    """
    query_position = torch.arange(tgt_len, device=device)[:, None] + (src_len - tgt_len)
    distance = torch.arange(src_len, device=device)[None, :] - query_position  # key - query
    allowed = distance.abs() <= window
    return allowed & (distance <= 0) if causal else allowed


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    dropout_p: float,
    need_weights: bool,
    *,
    window: int,
    dropout_masks: str = "bits",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sliding-window attention: each query sees keys within ``window`` positions
    (Longformer's sliding window, Beltagy et al. 2020); causal at decoder self-attention.

    Without ``need_weights`` and for a whole sequence (tgt_len == src_len) it runs the
    banded kernel :func:`_sliding_chunks`, O(len · window) in time and memory. Returning
    weights, incremental steps (tgt_len < src_len) and sequences no longer than the window
    use a dense band mask instead (O(tgt_len · src_len); weights are a full matrix anyway).

    Args: as :func:`full_attention`, plus ``window`` ≥ 1.
    Returns: as :func:`full_attention`; weights are zero outside the window.
    """
    tgt_len, src_len = q.size(-2), k.size(-2)
    key_mask = None
    if mask is not None and mask.dim() == 4 and mask.size(1) == 1 and mask.size(2) == 1:
        key_mask = mask[:, 0, 0, :]  # (batch, src_len): a padding mask
    banded = not need_weights and tgt_len == src_len and src_len > 2 * window + 1
    if banded and (mask is None or key_mask is not None):
        return _sliding_chunks(q, k, v, key_mask, window, causal, dropout_p, dropout_masks), None
    allowed = band_mask(tgt_len, src_len, window, causal, q.device)
    allowed = allowed if mask is None else mask & allowed
    return full_attention(
        q, k, v, _with_fallback_rows(allowed), False, dropout_p, need_weights, dropout_masks=dropout_masks
    )


def _sliding_chunks(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
    window: int,
    causal: bool,
    dropout_p: float,
    dropout_masks: str,
) -> torch.Tensor:
    """Banded attention in blocks of ``window`` queries, each against 3 blocks of keys.

    q, k, v: (batch, n_heads, len, head_dim); key_mask: (batch, len) bool or None.
    Returns: (batch, n_heads, len, head_dim). Memory: O(len · 3 · window) scores.
    """
    batch, n_heads, length, head_dim = q.shape
    block = window
    n_blocks = -(-length // block)
    padded = n_blocks * block

    def blocks_of_keys(x: torch.Tensor) -> torch.Tensor:
        # pad one block before and after, then take overlapping spans of 3 blocks
        x = F.pad(x, (0, 0, block, padded - length + block))  # (batch, n_heads, padded + 2 * block, head_dim)
        return x.unfold(2, 3 * block, block).transpose(-2, -1)  # (batch, n_heads, n_blocks, 3 * block, head_dim)

    q_blocks = F.pad(q, (0, 0, 0, padded - length)).view(batch, n_heads, n_blocks, block, head_dim)
    k_blocks, v_blocks = blocks_of_keys(k), blocks_of_keys(v)
    scores = q_blocks @ k_blocks.transpose(-2, -1) / math.sqrt(head_dim)  # (batch, n_heads, n_blocks, block, 3 * block)

    query_position = torch.arange(padded, device=q.device).view(n_blocks, block, 1)
    key_position = (torch.arange(n_blocks, device=q.device) * block - block).view(n_blocks, 1, 1) + torch.arange(
        3 * block, device=q.device
    )  # (n_blocks, 1, 3 * block)
    distance = key_position - query_position  # (n_blocks, block, 3 * block)
    allowed = (distance.abs() <= window) & (key_position >= 0) & (key_position < length)
    if causal:
        allowed &= distance <= 0
    allowed = allowed[None, None]  # (1, 1, n_blocks, block, 3 * block)
    if key_mask is not None:
        keys = F.pad(key_mask, (block, padded - length + block)).unfold(1, 3 * block, block)  # (batch, n_blocks, 3 * block)
        allowed = allowed & keys[:, None, :, None, :]
    allowed = _with_fallback_rows(allowed)
    weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
    out = dropout(weights, dropout_p, masks=dropout_masks) @ v_blocks  # (batch, n_heads, n_blocks, block, head_dim)
    return out.view(batch, n_heads, padded, head_dim)[:, :, :length]


def topk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    dropout_p: float,
    need_weights: bool,
    *,
    top_k: int,
    dropout_masks: str = "bits",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Explicit sparse attention: keep the ``top_k`` largest scores per query, mask the rest
    before the softmax (Zhao et al. 2019, "Explicit Sparse Transformer").

    All scores are still computed, O(tgt_len · src_len): the point is sparser, sharper
    weights, not speed. Ties with the k-th score are all kept.

    Args: as :func:`full_attention`, plus ``top_k`` ≥ 1.
    Returns: as :func:`full_attention`; at most ``top_k`` non-zero weights per row (barring ties).
    """
    tgt_len, src_len = q.size(-2), k.size(-2)
    if causal and tgt_len > 1:
        mask = _with_causal(mask, tgt_len, src_len, q.device)
    scores = _masked_scores(q, k, mask)  # (batch, n_heads, tgt_len, src_len)
    if top_k < src_len:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]  # (batch, n_heads, tgt_len, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    weights = scores.softmax(dim=-1)
    out = dropout(weights, dropout_p, masks=dropout_masks) @ v
    return out, weights if need_weights else None


# The one dispatch point for attention variants: name -> (site config -> kernel, with the
# variant's own knobs bound). The schema's ATTENTION_TYPES names the same variants.
KERNELS: dict[str, Callable[[AttentionConfig], Kernel]] = {
    "full": lambda cfg: full_attention,
    "local": lambda cfg: partial(local_attention, window=cfg.window),
    "topk": lambda cfg: partial(topk_attention, top_k=cfg.top_k),
}
if set(KERNELS) != set(ATTENTION_TYPES):  # a variant the schema accepts but cannot run, or the reverse
    raise RuntimeError(
        f"mt.model.attention.KERNELS {sorted(KERNELS)} != mt.config.ATTENTION_TYPES {sorted(ATTENTION_TYPES)}"
    )


def rotary(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021, "RoFormer"), rotate-half layout.

    Args:
        x: (batch, n_heads, len, head_dim) queries or keys; head_dim even.
        positions: (len,) absolute positions of the rows.

    Returns: x rotated by position-dependent angles, so that q·k depends on positions only
    through their difference.
    """
    half = x.size(-1) // 2
    frequency = 10000.0 ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angle = positions.float()[:, None] * frequency  # (len, half)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with q/k/v/out projections and an optional incremental cache.

    Supports grouped-query attention (``cfg.n_kv_heads`` key/value heads shared by groups of
    query heads, Ainslie et al. 2023; the cache keeps the smaller, unexpanded keys) and
    rotary positions on self-attention (``cfg.positions == "rope"``).

    Args:
        d_model: model width; ``cfg.n_heads`` must divide it.
        cfg: the site's config node (type, n_heads, n_kv_heads, dropout, bias, window, top_k,
            positions), as :func:`mt.config.check_attention_site` accepts it
            (``mt.config.validate`` checks every site at start-up).
        causal: self-attention that may not look ahead (decoder self-attention).
        dropout_masks: how the weights' dropout masks are drawn (``model.dropout_masks``,
            :mod:`mt.model.dropout`).

    Raises:
        ValueError: unknown ``cfg.type`` (the message lists the valid ones).
    """

    def __init__(self, d_model: int, cfg: AttentionConfig, causal: bool = False, dropout_masks: str = "bits"):
        super().__init__()
        if cfg.type not in KERNELS:
            raise ValueError(f"unknown attention type {cfg.type!r}; valid: {', '.join(KERNELS)}")
        n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.n_heads = cfg.n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = d_model // cfg.n_heads
        self.dropout = cfg.dropout
        self.dropout_masks = dropout_masks
        self.causal = causal
        self.rope = cfg.positions == "rope"
        self.kernel = KERNELS[cfg.type](cfg)
        self.full = cfg.type == "full"
        self.q_proj = nn.Linear(d_model, d_model, bias=cfg.bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=cfg.bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=cfg.bias)

    def _split_heads(self, x: torch.Tensor, n_heads: int) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, n_heads, self.head_dim).transpose(1, 2)  # (batch, n_heads, len, head_dim)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        cache: Cache | None = None,
        causal: bool | None = None,
        group: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``x`` to ``memory`` (cross-attention) or to ``x`` itself (self-attention).

        Args:
            x: (batch, tgt_len, d_model) queries.
            memory: (batch, src_len, d_model) keys and values; None for self-attention.
            mask: bool, broadcastable to (batch, n_heads, tgt_len, src_len), True = may attend.
            need_weights: return the per-head attention weights from this same pass.
            cache: dict for incremental decoding, updated in place. Self-attention appends
                this step's keys/values to ``cache["kv"]`` (a :class:`KVCache`); cross-attention
                computes them from ``memory`` on the first call (``cache["k"]``, ``cache["v"]``)
                and reuses them afterwards.
            causal: override the module's ``causal`` for this call (False: a causal
                self-attention sees the whole sequence, e.g. the full-context alignment pass).
            group: cross-attention only: each ``group`` consecutive rows of ``x`` share one row
                of ``memory`` and ``mask`` (the beams of one sentence in beam search), which then
                have ``batch / group`` rows; keys and values are computed and read once per
                source instead of once per beam.

        Returns:
            out: (batch, tgt_len, d_model).
            weights: (batch, n_heads, tgt_len, src_len) post-mask (and post-sparsification)
                weights, or None.
        """
        q = self._split_heads(self.q_proj(x), self.n_heads)  # (batch, n_heads, tgt_len, head_dim)
        if memory is not None and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]  # cross-attention keys/values are computed once per source
        else:
            source = x if memory is None else memory
            k = self._split_heads(self.k_proj(source), self.n_kv_heads)  # (batch, n_kv_heads, src_len, head_dim)
            v = self._split_heads(self.v_proj(source), self.n_kv_heads)
            if self.rope:  # self-attention only: new positions continue after the cached ones
                offset = cache["kv"].length if cache is not None and "kv" in cache else 0
                positions = torch.arange(offset, offset + x.size(1), device=x.device)
                q, k = rotary(q, positions), rotary(k, positions)
            if cache is not None and memory is None:
                kv = cache.setdefault("kv", KVCache())
                k, v = kv.append(k, v)  # (batch, n_kv_heads, length, head_dim) views of its buffers
                if self.full and x.size(1) == 1 and mask is None and not need_weights:
                    # one decoding step of full attention: attend over the whole (contiguous)
                    # buffers with their unfilled positions masked; matmuls over the strided
                    # views copy them first in bf16 (3x slower at 128 positions)
                    k, v, mask = kv.keys, kv.values, kv.filled()
            elif cache is not None:
                cache["k"], cache["v"] = k, v
        if self.n_kv_heads != self.n_heads:  # each key/value head serves a group of query heads
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)  # (batch, n_heads, src_len, head_dim)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        dropout_p = self.dropout if self.training else 0.0
        causal = self.causal if causal is None else causal
        batch, _, tgt_len, _ = q.shape
        if group > 1:  # the queries of a group side by side: (batch / group, n_heads, group * tgt_len, head_dim)
            q = q.view(batch // group, group, self.n_heads, tgt_len, self.head_dim).transpose(1, 2)
            q = q.reshape(batch // group, self.n_heads, group * tgt_len, self.head_dim)
        out, weights = self.kernel(q, k, v, mask, causal, dropout_p, need_weights, dropout_masks=self.dropout_masks)
        if group > 1:
            out = out.view(batch // group, self.n_heads, group, tgt_len, self.head_dim).transpose(1, 2)
            if weights is not None:
                weights = weights.view(batch // group, self.n_heads, group, tgt_len, -1).transpose(1, 2)
                weights = weights.reshape(batch, self.n_heads, tgt_len, -1)
        out = out.reshape(batch, self.n_heads, tgt_len, self.head_dim)
        out = out.transpose(1, 2).reshape(batch, tgt_len, self.n_heads * self.head_dim)  # (batch, tgt_len, d_model)
        return self.out_proj(out), weights
