"""Dropout's bits masks (mt/model/dropout.py): rate, independence, gradient, reproducibility,
and that every dropout of the model draws them (or torch's, with model.dropout_masks=bernoulli)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mt.config import AlignerConfig, Config, ModelConfig, validate
from mt.data.tokenizer import PAD_ID
from mt.errors import ConfigError
from mt.model.attention import MultiHeadAttention, full_attention
from mt.model.dropout import Dropout, drop_probability, dropout, keep_mask
from mt.model.transformer import Transformer


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_bits_masks_drop_at_the_rounded_rate_and_keep_the_expectation(p):
    torch.manual_seed(0)
    n = 1 << 21
    y = dropout(torch.ones(n), p)
    q = drop_probability(p)
    assert abs(q - p) <= 2**-17
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - q) < 5 * math.sqrt(q * (1 - q) / n)  # 5 standard deviations
    kept = y[y != 0]
    assert torch.all(kept == torch.tensor(1 / (1 - q), dtype=torch.float32))  # every kept element scaled alike
    assert abs(y.double().mean().item() - 1) < 5 * math.sqrt(q / (1 - q) / n)  # the expectation is x


def test_the_four_lanes_of_a_random_word_are_independent_and_unbiased():
    """Each 64-bit word gives four elements: a lane whose bits are not uniform (e.g. a word
    drawn over [0, 2⁶³), its top bit always 0) or lanes that move together would show here."""
    torch.manual_seed(1)
    n_words = 1 << 19
    keep = keep_mask((n_words, 4), 0.5, torch.device("cpu")).double()
    sd = 5 * math.sqrt(0.25 / n_words)
    for lane in range(4):
        assert abs(keep[:, lane].mean().item() - 0.5) < sd
    centred = keep - 0.5
    for a in range(4):
        for b in range(a + 1, 4):
            assert abs((centred[:, a] * centred[:, b]).mean().item()) < 5 * math.sqrt(1 / 16 / n_words)
    assert abs((centred[1:, 0] * centred[:-1, 3]).mean().item()) < 5 * math.sqrt(1 / 16 / n_words)  # across words


def test_the_backward_uses_the_forward_mask():
    torch.manual_seed(2)
    x = torch.randn(37, 53, requires_grad=True)  # not a multiple of four elements
    g = torch.randn(37, 53)
    y = dropout(x, 0.3)
    y.backward(g)
    keep = y != 0
    scale = 1 / (1 - drop_probability(0.3))
    assert 0 < keep.sum() < keep.numel()
    assert torch.equal(y, torch.where(keep, x.detach() * scale, 0))
    assert torch.equal(x.grad, torch.where(keep, g * scale, 0))


def test_masks_follow_torchs_generator_as_a_resumed_run_restores_it():
    x = torch.ones(1000)
    torch.manual_seed(3)
    first, second = dropout(x, 0.2), dropout(x, 0.2)
    assert not torch.equal(first, second)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.2), first)
    state = torch.get_rng_state()
    again = dropout(x, 0.2)
    torch.set_rng_state(state)
    assert torch.equal(dropout(x, 0.2), again)


def test_bernoulli_masks_are_torchs_dropout_and_eval_or_zero_rate_is_the_identity():
    x = torch.randn(64, 32)
    torch.manual_seed(4)
    expected = F.dropout(x, 0.1, training=True)
    torch.manual_seed(4)
    assert torch.equal(dropout(x, 0.1, masks="bernoulli"), expected)
    assert dropout(x, 0.1, training=False) is x
    assert dropout(x, 0.0) is x
    module = Dropout(0.1).eval()
    assert module(x) is x
    nearly_all = dropout(torch.ones(1 << 20), 0.999999)  # rounds to 2⁻¹⁶ kept, not to all dropped
    assert drop_probability(0.999999) == 1 - 2**-16 and torch.isfinite(nearly_all).all()
    with pytest.raises(ValueError, match="dropout masks 'coin'"):
        dropout(x, 0.1, masks="coin")


@pytest.mark.parametrize("causal", [False, True])
def test_full_attention_drops_the_weights_with_bits_masks(causal):
    """The dropped weights against a plain reference drawn with the same generator state;
    padded keys still get no weight (changing their values changes nothing)."""
    torch.manual_seed(5)
    batch, heads, length, head_dim = 3, 2, 9, 8
    q, k, v = (torch.randn(batch, heads, length, head_dim) for _ in range(3))
    lengths = torch.tensor([9, 6, 2])
    mask = (torch.arange(length)[None, :] < lengths[:, None])[:, None, None, :]
    allowed = mask & torch.ones(length, length, dtype=torch.bool).tril() if causal else mask.expand(-1, heads, length, -1)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(head_dim)).masked_fill(~allowed, float("-inf"))
    weights = scores.softmax(-1)
    torch.manual_seed(6)
    out, _ = full_attention(q, k, v, mask, causal, 0.25, need_weights=False)
    torch.manual_seed(6)
    keep = keep_mask(weights.shape, 0.25, q.device)
    expected = (weights * keep / (1 - drop_probability(0.25))) @ v
    assert torch.allclose(out, expected, atol=1e-5)
    v_padded = v.clone()
    v_padded[1, :, 6:] = 1e4
    torch.manual_seed(6)
    out_padded, _ = full_attention(q, k, v_padded, mask, causal, 0.25, need_weights=False)
    assert torch.allclose(out_padded[1], out[1], atol=1e-5)


@pytest.mark.parametrize("masks", ["bits", "bernoulli"])
def test_every_dropout_of_the_model_follows_model_dropout_masks(masks):
    """A training step of a model with an aligner draws no ``bernoulli_`` with bits masks and
    does with bernoulli ones; every dropout module and attention site carries the setting."""
    cfg = ModelConfig(d_model=16, ffn_dim=32, ffn_dropout=0.1, dropout_masks=masks, aligner=AlignerConfig(enabled=True))
    cfg.encoder.n_layers = cfg.decoder.n_layers = 1
    for site in (cfg.encoder.self_attention, cfg.decoder.self_attention, cfg.decoder.cross_attention):
        site.n_heads = 2
    cfg.aligner.n_heads = cfg.aligner.align_heads = 2
    cfg.aligner.ffn_dim = 32
    cfg.aligner.lexicon = False
    model = Transformer(cfg, 50, 50, PAD_ID).train()
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert {m.masks for m in model.modules() if isinstance(m, Dropout)} == {masks}
    assert {m.dropout_masks for m in model.modules() if isinstance(m, MultiHeadAttention)} == {masks}
    src = torch.randint(4, 50, (4, 12))
    tgt = torch.randint(4, 50, (4, 10))
    with torch.profiler.profile() as profile:
        (model(src, tgt).sum() + model.aligner_attention(src, tgt).sum()).backward()
    bernoulli_calls = sum(event.count for event in profile.key_averages() if event.key == "aten::bernoulli_")
    assert (bernoulli_calls == 0) == (masks == "bits")


def test_an_unknown_dropout_masks_setting_is_refused_naming_the_key():
    cfg = Config()
    cfg.model.dropout_masks = "coin"
    with pytest.raises(ConfigError, match="model.dropout_masks"):
        validate(cfg)
