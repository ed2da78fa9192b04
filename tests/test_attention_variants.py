"""Attention variants against plainly written references; GQA, rope, and incremental decoding per variant."""

import functools
import itertools
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mt.model.attention import (
    KERNELS,
    MultiHeadAttention,
    full_attention,
    local_attention,
    rotary,
    topk_attention,
)
from mt.config import ATTENTION_TYPES, SELF_ATTENTION_ONLY, AttentionConfig, check_attention_site
from mt.errors import ConfigError
from mt.model.transformer import Transformer

from conftest import REPO, tiny_config


def naive(q, k, v, allowed):
    """softmax(q kᵀ/√d masked by `allowed`) v with einsum; `allowed` broadcastable to the scores."""
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhts,bhsd->bhtd", weights, v), weights


def naive_band(length, window, causal):
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    allowed = (j - i).abs() <= window
    return allowed & (j <= i) if causal else allowed


def random_inputs(length=37, batch=3, heads=2, head_dim=8, seed=0):
    torch.manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, head_dim) for _ in range(3))
    lengths = torch.tensor([length, max(length - 9, 2), 5])
    key_mask = torch.arange(length)[None, :] < lengths[:, None]  # (batch, src_len)
    return q, k, v, key_mask, lengths


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [1, 3, 8])
@pytest.mark.parametrize("need_weights", [False, True])
def test_local_matches_naive_reference_with_padding(causal, window, need_weights):
    q, k, v, key_mask, lengths = random_inputs()
    allowed = naive_band(q.size(2), window, causal)[None, None] & key_mask[:, None, None, :]
    expected_out, expected_weights = naive(q, k, v, allowed)
    out, weights = local_attention(
        q, k, v, key_mask[:, None, None, :], causal, 0.0, need_weights, window=window
    )
    for row, n in enumerate(lengths.tolist()):  # compare real query positions (padded ones are unused)
        assert torch.allclose(out[row, :, :n], expected_out[row, :, :n], atol=1e-5)
        if need_weights:
            assert torch.allclose(weights[row, :, :n], expected_weights[row, :, :n], atol=1e-6)
    assert torch.isfinite(out).all()  # padded queries whose window is all padding do not produce NaN


def peak_bytes(attention, length, need_weights):
    """Peak CPU memory (bytes) that ``attention`` allocates on top of its inputs, for random q, k, v
    of ``length`` positions (batch 3, 2 heads, head_dim 8): the running sum, in time order, of the
    bytes each op allocates and frees, as torch.profiler records them."""
    q, k, v, key_mask, _ = random_inputs(length=length)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        attention(q, k, v, key_mask[:, None, None, :], False, 0.0, need_weights)
    live = peak = 0
    for event in sorted(profile.events(), key=lambda event: event.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def test_local_banded_path_needs_no_quadratic_matrix():
    # the banded kernel returns no weights and handles lengths that are not multiples of the window
    q, k, v, key_mask, _ = random_inputs(length=101)
    out, weights = local_attention(q, k, v, key_mask[:, None, None, :], False, 0.0, False, window=4)
    assert weights is None and out.shape == q.shape
    # its memory grows linearly with the length: 4x the positions, about 4x the bytes (not 16x)
    banded = functools.partial(local_attention, window=4)
    short, long = peak_bytes(banded, 251, False), peak_bytes(banded, 4 * 251, False)
    assert 3 < long / short < 5
    assert long < 3 * 2 * (4 * 251) ** 2 * 4 / 4  # under a quarter of one (batch, n_heads, len, len) float32 matrix
    # the measurement does see a quadratic path: the same call returning the weights
    assert peak_bytes(banded, 4 * 251, True) / peak_bytes(banded, 251, True) > 12


@pytest.mark.parametrize("causal", [False, True])
def test_local_with_window_covering_the_sequence_equals_full(causal):
    q, k, v, key_mask, lengths = random_inputs(length=12)
    mask = key_mask[:, None, None, :]
    local_out, local_weights = local_attention(q, k, v, mask, causal, 0.0, True, window=12)
    full_out, full_weights = full_attention(q, k, v, mask, causal, 0.0, True)
    assert torch.allclose(local_out, full_out, atol=1e-5)
    assert torch.allclose(local_weights, full_weights, atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("top_k", [1, 4])
def test_topk_matches_naive_reference(causal, top_k):
    q, k, v, key_mask, lengths = random_inputs(length=10)
    allowed = key_mask[:, None, None, :].expand(-1, 2, 10, -1)
    if causal:
        allowed = allowed & torch.ones(10, 10).tril().bool()
    scores = torch.einsum("bhtd,bhsd->bhts", q, k) / math.sqrt(8)
    scores = scores.masked_fill(~allowed, float("-inf"))
    keep = torch.zeros_like(allowed)
    for index in itertools.product(*(range(n) for n in scores.shape[:3])):  # plainly: the k best allowed keys of each row
        best = sorted(range(10), key=lambda j: -scores[index][j].item())[:top_k]
        for j in best:
            keep[index][j] = bool(allowed[index][j])
    expected_out, expected_weights = naive(q, k, v, keep)
    out, weights = topk_attention(q, k, v, key_mask[:, None, None, :], causal, 0.0, True, top_k=top_k)
    assert torch.allclose(out, expected_out, atol=1e-5)
    assert torch.allclose(weights, expected_weights, atol=1e-6)
    assert int((weights > 0).sum(-1).max()) <= top_k


def test_topk_with_k_at_least_source_length_equals_full():
    q, k, v, key_mask, _ = random_inputs(length=9)
    mask = key_mask[:, None, None, :]
    out, weights = topk_attention(q, k, v, mask, False, 0.0, True, top_k=9)
    full_out, full_weights = full_attention(q, k, v, mask, False, 0.0, True)
    assert torch.allclose(out, full_out, atol=1e-5) and torch.allclose(weights, full_weights, atol=1e-6)


def test_grouped_query_attention_equals_mha_with_repeated_key_value_heads():
    torch.manual_seed(0)
    d_model, n_heads, n_kv_heads = 32, 4, 2
    gqa = MultiHeadAttention(d_model, AttentionConfig(n_heads=n_heads, n_kv_heads=n_kv_heads, dropout=0.0))
    mha = MultiHeadAttention(d_model, AttentionConfig(n_heads=n_heads, dropout=0.0))
    head_dim = d_model // n_heads
    with torch.no_grad():
        mha.q_proj.load_state_dict(gqa.q_proj.state_dict())
        mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
        for name in ("k_proj", "v_proj"):
            small, big = getattr(gqa, name), getattr(mha, name)
            # key/value head h of the MHA copy = GQA head h // (n_heads / n_kv_heads)
            big.weight.copy_(small.weight.view(n_kv_heads, head_dim, d_model).repeat_interleave(2, 0).reshape(d_model, d_model))
            big.bias.copy_(small.bias.view(n_kv_heads, head_dim).repeat_interleave(2, 0).reshape(d_model))
    x = torch.randn(2, 7, d_model)
    memory = torch.randn(2, 5, d_model)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]
    out_gqa, w_gqa = gqa(x, memory, mask, need_weights=True)
    out_mha, w_mha = mha(x, memory, mask, need_weights=True)
    assert gqa.k_proj.weight.shape == (n_kv_heads * head_dim, d_model)
    assert torch.allclose(out_gqa, out_mha, atol=1e-5) and torch.allclose(w_gqa, w_mha, atol=1e-6)


def test_n_kv_heads_equal_to_n_heads_is_plain_multi_head_attention():
    torch.manual_seed(0)
    plain = MultiHeadAttention(16, AttentionConfig(n_heads=4, dropout=0.0))
    grouped = MultiHeadAttention(16, AttentionConfig(n_heads=4, n_kv_heads=4, dropout=0.0))
    grouped.load_state_dict(plain.state_dict())  # same parameter shapes
    x = torch.randn(2, 6, 16)
    assert torch.allclose(plain(x)[0], grouped(x)[0], atol=1e-6)


def test_rope_scores_depend_only_on_relative_positions():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    positions = torch.arange(6)
    scores = rotary(q, positions) @ rotary(k, positions).transpose(-2, -1)
    shifted = rotary(q, positions + 17) @ rotary(k, positions + 17).transpose(-2, -1)
    assert torch.allclose(scores, shifted, atol=1e-4)
    assert not torch.allclose(scores, q @ k.transpose(-2, -1), atol=1e-3)  # it does rotate


DECODER_VARIANTS = {
    "full": {},
    "local": {"self": {"type": "local", "window": 2}},
    "topk": {"self": {"type": "topk", "top_k": 2}, "cross": {"type": "topk", "top_k": 3}},
    "rope": {"self": {"positions": "rope"}},
    "gqa": {"self": {"n_kv_heads": 2}, "cross": {"n_kv_heads": 1}},
}


def variant_model(variant):
    cfg = tiny_config()
    for site, attention in (("self", cfg.decoder.self_attention), ("cross", cfg.decoder.cross_attention)):
        for key, value in DECODER_VARIANTS[variant].get(site, {}).items():
            setattr(attention, key, value)
    torch.manual_seed(0)
    return Transformer(cfg, 40, 40, pad_id=0).eval()


@pytest.mark.parametrize("variant", DECODER_VARIANTS)
def test_incremental_decoding_equals_full_decoding_for_every_decoder_variant(variant):
    model = variant_model(variant)
    torch.manual_seed(1)
    src = torch.randint(4, 40, (3, 8))
    src[1, 5:] = 0
    tgt_in = torch.randint(4, 40, (3, 7))
    with torch.no_grad():
        memory, src_mask = model.encode(src)
        full, full_weights = model.decode(tgt_in, memory, src_mask, need_weights=True)
        cache = model.new_cache()
        steps = [model.decode(tgt_in[:, t : t + 1], memory, src_mask, cache, need_weights=True) for t in range(7)]
    assert torch.allclose(torch.cat([h for h, _ in steps], dim=1), full, atol=1e-5)
    for layer in range(len(full_weights)):
        assert torch.allclose(torch.cat([w[layer] for _, w in steps], dim=2), full_weights[layer], atol=1e-5)


INVALID = [
    ("model/encoder/self_attention=local model.encoder.self_attention.window=0", "model.encoder.self_attention.window", ">= 1"),
    ("model/decoder/cross_attention=topk model.decoder.cross_attention.top_k=0", "model.decoder.cross_attention.top_k", ">= 1"),
    ("model.decoder.self_attention.n_kv_heads=3", "model.decoder.self_attention.n_kv_heads", "divide"),
    ("model.encoder.self_attention.type=banana", "model.encoder.self_attention.type", "allowed: full, local, topk"),
    ("model/decoder/cross_attention=local", None, "Could not find 'model/decoder/cross_attention/local'"),
    ("model.decoder.cross_attention.type=local", "model.decoder.cross_attention.type", "allowed here: full, topk"),
    ("model.encoder.self_attention.n_heads=3", "model.encoder.self_attention.n_heads", "must divide model.d_model"),
    ("model.decoder.cross_attention.positions=rope", "model.decoder.cross_attention.positions", "allowed: absolute"),
    ("model.positional_embedding=rotary", "model.positional_embedding", "sinusoidal, learned, none"),
]


@pytest.mark.parametrize("override, key, allowed", INVALID, ids=[case[0].split()[-1] for case in INVALID])
def test_invalid_attention_settings_stop_with_one_line(tmp_path, override, key, allowed):
    mt_train = Path(sys.executable).parent / "mt-train"
    result = subprocess.run(
        [str(mt_train), *override.split(), f"hydra.run.dir={tmp_path / 'run'}", f"data.data_dir={tmp_path / 'data'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not (tmp_path / "data").exists()
    if key is None:  # no such config file: Hydra's own composition error, which lists the options
        assert result.returncode == 1 and allowed in result.stderr and "full" in result.stderr
        return
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"config key '{key}'" in lines[0] and allowed in lines[0]


SITES = {  # config group → is it self-attention
    "model/encoder/self_attention": True,
    "model/decoder/self_attention": True,
    "model/decoder/cross_attention": False,
}


@pytest.mark.parametrize("group, self_attention", SITES.items(), ids=list(SITES))
def test_each_site_group_offers_exactly_the_variants_it_may_run(group, self_attention):
    offered = {path.stem for path in (REPO / "configs" / group).glob("*.yaml")}
    allowed = {name for name in ATTENTION_TYPES if self_attention or name not in SELF_ATTENTION_ONLY}
    assert offered == allowed


def test_a_variant_checks_only_its_own_knobs():
    check_attention_site(AttentionConfig(type="full", window=0, top_k=0), "site", 16, self_attention=True)
    with pytest.raises(ConfigError, match=r"^config key 'site\.window' = 0: must be >= 1$"):
        check_attention_site(AttentionConfig(type="local", window=0), "site", 16, self_attention=True)


def test_the_schema_and_the_kernels_name_the_same_variants():
    assert set(KERNELS) == set(ATTENTION_TYPES)
    # a variant the schema would accept without a kernel to run it: the import fails, not a run
    code = "import mt.config; mt.config.ATTENTION_TYPES += ('sparse',); import mt.model.attention"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode != 0 and "'sparse'" in result.stderr.splitlines()[-1]
