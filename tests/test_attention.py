"""Attention kernels against a plainly written reference, and the masks of the full model."""

import math

import pytest
import torch

from mt.model.attention import MultiHeadAttention, causal_mask, full_attention
from mt.config import AttentionConfig


def reference_attention(q, k, v, mask):
    """softmax(q kᵀ / √d + log mask) v, written with einsum and an explicit boolean mask."""
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhts,bhsd->bhtd", weights, v), weights


def random_qkv(batch=3, heads=2, tgt_len=5, src_len=7, head_dim=8):
    torch.manual_seed(0)
    return (
        torch.randn(batch, heads, tgt_len, head_dim),
        torch.randn(batch, heads, src_len, head_dim),
        torch.randn(batch, heads, src_len, head_dim),
    )


@pytest.mark.parametrize("need_weights", [False, True])
def test_full_attention_matches_reference_with_padding(need_weights):
    q, k, v = random_qkv()
    lengths = torch.tensor([7, 4, 1])
    mask = (torch.arange(7)[None, :] < lengths[:, None])[:, None, None, :]  # (batch, 1, 1, src_len)
    expected_out, expected_weights = reference_attention(q, k, v, mask.expand(-1, 2, 5, -1))
    out, weights = full_attention(q, k, v, mask, causal=False, dropout_p=0.0, need_weights=need_weights)
    assert torch.allclose(out, expected_out, atol=1e-5)
    if need_weights:
        assert torch.allclose(weights, expected_weights, atol=1e-6)
    else:
        assert weights is None


@pytest.mark.parametrize("need_weights", [False, True])
def test_causal_attention_matches_reference(need_weights):
    q, k, v = random_qkv(tgt_len=6, src_len=6)
    mask = torch.ones(6, 6).tril().bool()
    expected_out, expected_weights = reference_attention(q, k, v, mask)
    out, weights = full_attention(q, k, v, None, causal=True, dropout_p=0.0, need_weights=need_weights)
    assert torch.allclose(out, expected_out, atol=1e-5)
    if need_weights:
        assert torch.allclose(weights, expected_weights, atol=1e-6)


def test_causal_mask_for_cached_queries_aligns_to_last_key():
    # 2 new queries after 3 cached keys: the first new query sees keys 0..3, the second 0..4
    expected = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 5), expected)


def test_unknown_attention_type_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: full"):
        MultiHeadAttention(16, AttentionConfig(type="nope", n_heads=2))


def test_changing_padded_source_positions_changes_no_output(tiny_model):
    torch.manual_seed(1)
    src = torch.randint(4, 40, (2, 9))
    src[0, 6:] = 0  # sentence 0: 6 real tokens, then padding
    tgt_in = torch.randint(4, 40, (2, 5))
    with torch.no_grad():
        memory, src_mask = tiny_model.encode(src)
        perturbed = memory.clone()
        perturbed[0, 6:] = 100 * torch.randn(3, memory.size(-1))  # garbage where the padding is
        hidden, weights = tiny_model.decode(tgt_in, memory, src_mask, need_weights=True)
        hidden_p, _ = tiny_model.decode(tgt_in, perturbed, src_mask, need_weights=True)
        hidden_fused_p, _ = tiny_model.decode(tgt_in, perturbed, src_mask)
    assert torch.allclose(hidden, hidden_p, atol=1e-5)
    assert torch.allclose(hidden, hidden_fused_p, atol=1e-5)
    for layer_weights in weights:
        assert torch.all(layer_weights[0, :, :, 6:] == 0)


def test_encoder_output_at_real_positions_ignores_padding(tiny_model):
    torch.manual_seed(2)
    src = torch.randint(4, 40, (1, 5))
    padded = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short, _ = tiny_model.encode(src)
        long, _ = tiny_model.encode(padded)
    assert torch.allclose(short, long[:, :5], atol=1e-5)


def test_decoder_cannot_see_future_target_tokens(tiny_model):
    torch.manual_seed(3)
    src = torch.randint(4, 40, (2, 6))
    tgt_in = torch.randint(4, 40, (2, 8))
    changed = tgt_in.clone()
    changed[:, 5:] = torch.randint(4, 40, (2, 3))
    with torch.no_grad():
        logits = tiny_model(src, tgt_in)
        logits_changed = tiny_model(src, changed)
    assert torch.allclose(logits[:, :5], logits_changed[:, :5], atol=1e-5)
    assert not torch.allclose(logits[:, 5:], logits_changed[:, 5:], atol=1e-3)


def test_cross_attention_rows_sum_to_one_over_real_source(tiny_model):
    torch.manual_seed(4)
    src = torch.randint(4, 40, (3, 7))
    src[1, 4:] = 0
    src[2, 2:] = 0
    with torch.no_grad():
        memory, src_mask = tiny_model.encode(src)
        _, weights = tiny_model.decode(torch.randint(4, 40, (3, 5)), memory, src_mask, need_weights=True)
    assert len(weights) == 2
    for layer_weights in weights:  # (batch, n_heads, tgt_len, src_len)
        assert layer_weights.shape == (3, 2, 5, 7)
        real = src_mask[:, None, None, :]
        assert torch.allclose(layer_weights.sum(-1), torch.ones(3, 2, 5), atol=1e-5)
        assert torch.all(layer_weights.masked_select(~real.expand_as(layer_weights)) == 0)


def test_weights_and_fused_paths_give_same_output(tiny_model):
    torch.manual_seed(5)
    src = torch.randint(4, 40, (2, 6))
    src[1, 3:] = 0
    tgt_in = torch.randint(4, 40, (2, 4))
    with torch.no_grad():
        memory, src_mask = tiny_model.encode(src)
        fused, _ = tiny_model.decode(tgt_in, memory, src_mask)
        explicit, _ = tiny_model.decode(tgt_in, memory, src_mask, need_weights=True)
    assert torch.allclose(fused, explicit, atol=1e-5)
