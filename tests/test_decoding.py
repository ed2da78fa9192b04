"""Search: incremental decoding equals full decoding, beam 1 equals greedy, scores are real log-probs,
the GNMT length penalty by hand, and a beam as wide as the search space equals exhaustive search."""

import copy
import itertools

import pytest
import torch

from mt.inference.decoding import beam_search, greedy_search, length_penalty, top_per_row
from mt.model.attention import KVCache
from mt.device import for_inference
from mt.data.tokenizer import Tokenizer


def random_source(batch=4, src_len=7, seed=0):
    torch.manual_seed(seed)
    src = torch.randint(4, 40, (batch, src_len))
    src[:, -1] = Tokenizer.eos_id
    src[1, 4:] = 0
    src[1, 3] = Tokenizer.eos_id
    return src


def teacher_forced_log_prob(model, src_ids, tokens):
    """Sum of log P(token_t | prefix) over tokens + EOS, computed with one full forward pass."""
    tgt_in = torch.tensor([[Tokenizer.bos_id, *tokens]])
    tgt_out = torch.tensor([[*tokens, Tokenizer.eos_id]])
    with torch.no_grad():
        log_probs = model(src_ids[None], tgt_in).log_softmax(-1)
    return float(log_probs.gather(-1, tgt_out[..., None]).sum())


def test_incremental_decoding_equals_full_decoding(tiny_model):
    src = random_source()
    torch.manual_seed(1)
    tgt_in = torch.randint(4, 40, (4, 6))
    with torch.no_grad():
        memory, src_mask = tiny_model.encode(src)
        full, _ = tiny_model.decode(tgt_in, memory, src_mask)
        cache = tiny_model.new_cache()
        steps = [tiny_model.decode(tgt_in[:, t : t + 1], memory, src_mask, cache)[0] for t in range(6)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_incremental_cross_attention_weights_equal_full(tiny_model):
    src = random_source()
    tgt_in = torch.randint(4, 40, (4, 5))
    with torch.no_grad():
        memory, src_mask = tiny_model.encode(src)
        _, full = tiny_model.decode(tgt_in, memory, src_mask, need_weights=True)
        cache = tiny_model.new_cache()
        steps = [tiny_model.decode(tgt_in[:, t : t + 1], memory, src_mask, cache, need_weights=True)[1] for t in range(5)]
    for layer in range(2):
        assert torch.allclose(torch.cat([s[layer] for s in steps], dim=2), full[layer], atol=1e-5)


@pytest.mark.parametrize("group", [2, 3])
def test_grouped_decoding_equals_memory_repeated_per_row(tiny_model, group):
    """group=g (beams sharing one source row, as beam search decodes) gives the states and the
    cross-attention weights of decoding with the source rows repeated g times, cached or not."""
    src = random_source()
    torch.manual_seed(2)
    tgt_in = torch.randint(4, 40, (4 * group, 5))
    with torch.no_grad():
        memory, src_mask = tiny_model.encode(src)
        repeated = memory.repeat_interleave(group, dim=0), src_mask.repeat_interleave(group, dim=0)
        expected, expected_weights = tiny_model.decode(tgt_in, *repeated, need_weights=True)
        grouped, grouped_weights = tiny_model.decode(tgt_in, memory, src_mask, need_weights=True, group=group)
        cache = tiny_model.new_cache()
        steps = [tiny_model.decode(tgt_in[:, t : t + 1], memory, src_mask, cache, group=group)[0] for t in range(5)]
    assert torch.allclose(grouped, expected, atol=1e-5)
    assert torch.allclose(torch.cat(steps, dim=1), expected, atol=1e-5)
    for layer in range(2):
        assert torch.allclose(grouped_weights[layer], expected_weights[layer], atol=1e-6)


def test_beam_one_equals_greedy(tiny_model):
    src = random_source(batch=6, seed=3)
    greedy = greedy_search(tiny_model, src, max_len_a=1.0, max_len_b=6)
    beam = beam_search(tiny_model, src, beam_size=1, max_len_a=1.0, max_len_b=6)
    assert [h.tokens for h in greedy] == [hyps[0].tokens for hyps in beam]
    for g, hyps in zip(greedy, beam):
        assert g.log_prob == pytest.approx(hyps[0].log_prob, abs=1e-4)


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_search_scores_are_teacher_forced_log_probs(tiny_model, search):
    src = random_source(seed=5)
    if search == "greedy":
        best = greedy_search(tiny_model, src, max_len_b=8)
    else:
        best = [hyps[0] for hyps in beam_search(tiny_model, src, beam_size=3, max_len_b=8)]
    for row, hyp in enumerate(best):
        real = src[row][src[row] != 0]
        assert hyp.log_prob == pytest.approx(teacher_forced_log_prob(tiny_model, real, hyp.tokens), abs=1e-3)


def test_beam_search_beats_or_ties_greedy_and_ranks_by_normalised_score(tiny_model):
    src = random_source(seed=7)
    greedy = greedy_search(tiny_model, src, max_len_b=8)
    beams = beam_search(tiny_model, src, beam_size=4, length_penalty_alpha=0.0, max_len_b=8)
    for g, hyps in zip(greedy, beams):
        assert len(hyps) == 4
        assert hyps[0].log_prob >= g.log_prob - 1e-4  # with alpha 0 the score is the log-prob
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    for alpha in (1.0, 0.6):
        for hyps in beam_search(tiny_model, src, beam_size=4, length_penalty_alpha=alpha, max_len_b=8):
            for h in hyps:
                # GNMT (Wu et al. 2016, eq. 14) over the tokens and EOS, written out rather than imported
                assert h.score == pytest.approx(h.log_prob / ((5 + len(h.tokens) + 1) / 6) ** alpha, abs=1e-5)


def test_length_penalty_is_the_gnmt_formula_by_hand():
    # ((5 + |Y|) / 6) ** alpha: |Y| = 1 is the neutral length; |Y| = 7 doubles the base
    assert length_penalty(1, 1.0) == 1.0
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    assert length_penalty(7, 0.5) == pytest.approx(2**0.5)
    assert length_penalty(13, 2.0) == pytest.approx(9.0)
    assert length_penalty(4, 0.6) == pytest.approx(1.5**0.6)
    assert length_penalty(25, 0.0) == 1.0


def test_hypotheses_respect_the_length_limit(tiny_model):
    src = random_source()
    src_len = (src != 0).sum(1)
    for hyp, n in zip(greedy_search(tiny_model, src, max_len_a=0.5, max_len_b=2), src_len.tolist()):
        assert len(hyp.tokens) + 1 <= int(n * 0.5 + 2)
    for hyps, n in zip(beam_search(tiny_model, src, beam_size=3, max_len_a=0.5, max_len_b=2), src_len.tolist()):
        assert all(len(h.tokens) + 1 <= int(n * 0.5 + 2) for h in hyps)
        assert all(t not in (Tokenizer.eos_id, Tokenizer.bos_id, 0) for h in hyps for t in h.tokens)


def varied_source(seed=11):
    """Six sources of 2..9 tokens (EOS included), right-padded: different length limits, so
    sentences leave the batch at different steps."""
    torch.manual_seed(seed)
    lengths = [9, 2, 6, 4, 8, 3]
    src = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        src[row, : n - 1] = torch.randint(4, 40, (n - 1,))
        src[row, n - 1] = Tokenizer.eos_id
    return src


def alone(src_ids, row):
    """Row ``row`` of a padded batch as a batch of one, without padding."""
    real = src_ids[row][src_ids[row] != 0]
    return real[None]


@pytest.mark.parametrize("beam_size", [1, 3, 4])
def test_batch_search_with_dropped_sentences_equals_each_sentence_alone(tiny_model, beam_size):
    """Sentences leave the batch at different steps; each must come out exactly as when decoded
    on its own (no padding, nothing dropped)."""
    src = varied_source()
    if beam_size == 1:
        batched = [[h] for h in greedy_search(tiny_model, src, max_len_a=1.5, max_len_b=3)]
        single = [[greedy_search(tiny_model, alone(src, row), max_len_a=1.5, max_len_b=3)[0]] for row in range(len(src))]
    else:
        batched = beam_search(tiny_model, src, beam_size=beam_size, max_len_a=1.5, max_len_b=3)
        single = [beam_search(tiny_model, alone(src, row), beam_size=beam_size, max_len_a=1.5, max_len_b=3)[0]
                  for row in range(len(src))]
    assert len({len(hyps[0].tokens) for hyps in batched}) > 1  # sentences really ended at different steps
    for batch_hyps, single_hyps in zip(batched, single):
        assert [h.tokens for h in batch_hyps] == [h.tokens for h in single_hyps]
        for b, s in zip(batch_hyps, single_hyps):
            assert b.score == pytest.approx(s.score, abs=1e-4)
            assert b.token_log_probs == pytest.approx(s.token_log_probs, abs=1e-4)


def teacher_forced_token_log_probs(model, src_ids, tokens):
    """log P(token_t | prefix) of each token then EOS, from one full (non-incremental) forward pass."""
    tgt_in = torch.tensor([[Tokenizer.bos_id, *tokens]])
    tgt_out = torch.tensor([[*tokens, Tokenizer.eos_id]])
    with torch.no_grad():
        log_probs = model(src_ids[None], tgt_in).log_softmax(-1)
    return log_probs.gather(-1, tgt_out[..., None])[0, :, 0].tolist()


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_token_log_probs_are_teacher_forced_and_sum_to_log_prob(tiny_model, search):
    src = varied_source(seed=13)
    if search == "greedy":
        nbest = [[h] for h in greedy_search(tiny_model, src, max_len_b=5)]
    else:
        nbest = beam_search(tiny_model, src, beam_size=4, max_len_b=5)
    for row, hyps in enumerate(nbest):
        real = src[row][src[row] != 0]
        for h in hyps:
            assert len(h.token_log_probs) == len(h.tokens) + 1
            assert sum(h.token_log_probs) == pytest.approx(h.log_prob, abs=1e-4)
            expected = teacher_forced_token_log_probs(tiny_model, real, h.tokens)
            assert h.token_log_probs == pytest.approx(expected, abs=1e-4)


def test_n_best_are_the_best_distinct_hypotheses_of_the_beam(tiny_model):
    src = varied_source(seed=17)
    full = beam_search(tiny_model, src, beam_size=5, max_len_b=5)
    top2 = beam_search(tiny_model, src, beam_size=5, max_len_b=5, n_best=2)
    for all_hyps, best in zip(full, top2):
        assert len(best) == 2
        assert [h.tokens for h in best] == [h.tokens for h in all_hyps[:2]]
        assert len({tuple(h.tokens) for h in all_hyps}) == len(all_hyps)
        assert [h.score for h in all_hyps] == sorted((h.score for h in all_hyps), reverse=True)
    with pytest.raises(ValueError, match="n_best"):
        beam_search(tiny_model, src, beam_size=3, n_best=4)


# ------------------------------------------------------------------- beam = exhaustive search
ALLOWED = (4, 5)  # the only tokens besides EOS the restricted model can emit


def restricted(model):
    """``model`` whose output is confined to EOS and :data:`ALLOWED` (every other logit -inf), so
    that a short length limit leaves a search space small enough to enumerate."""
    logits = model.logits
    blocked = torch.ones(model.output_proj.out_features, dtype=torch.bool)
    blocked[[Tokenizer.eos_id, *ALLOWED]] = False
    model.logits = lambda hidden: logits(hidden).masked_fill(blocked, float("-inf"))
    return model


def exhaustive(model, src_ids, limit, alpha):
    """Every hypothesis of at most ``limit`` tokens (EOS included), scored by a full teacher-forced
    pass (no cache, no beam bookkeeping): [(normalised score, tokens)], best first."""
    candidates = [list(t) for n in range(limit) for t in itertools.product(ALLOWED, repeat=n)]
    tgt_in = torch.full((len(candidates), limit), Tokenizer.pad_id)  # right padding is causal-masked away
    tgt_out = torch.full((len(candidates), limit), Tokenizer.pad_id)
    for row, tokens in enumerate(candidates):
        tgt_in[row, : len(tokens) + 1] = torch.tensor([Tokenizer.bos_id, *tokens])
        tgt_out[row, : len(tokens) + 1] = torch.tensor([*tokens, Tokenizer.eos_id])
    with torch.no_grad():
        log_probs = model(src_ids.expand(len(candidates), -1), tgt_in).log_softmax(-1)  # (n, limit, vocab)
    token_log_probs = log_probs.gather(-1, tgt_out[..., None])[..., 0].masked_fill(tgt_out == Tokenizer.pad_id, 0)
    scored = [
        (float(total) / ((5 + len(tokens) + 1) / 6) ** alpha, tokens)
        for total, tokens in zip(token_log_probs.sum(1), candidates)
    ]
    return sorted(scored, key=lambda pair: pair[0], reverse=True)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_beam_as_wide_as_the_space_finds_the_exhaustive_best(tiny_model, alpha):
    """With 2 tokens + EOS and a limit of 4 tokens there are 1 + 2 + 4 + 8 = 15 hypotheses and at
    most 4 live prefixes × 3 = 12 candidates a step; a beam of 16 keeps all of them, so beam
    search must return every hypothesis, ranked exactly as exhaustive enumeration ranks them."""
    model = restricted(tiny_model)
    src = varied_source(seed=19)[:3]
    limit = 4
    beams = beam_search(model, src, beam_size=16, length_penalty_alpha=alpha, max_len_a=0.0, max_len_b=limit)
    for row, hyps in enumerate(beams):
        expected = exhaustive(model, src[row][src[row] != 0], limit, alpha)
        assert len(hyps) == len(expected) == 15
        assert hyps[0].tokens == expected[0][1]
        assert hyps[0].score == pytest.approx(expected[0][0], abs=1e-4)
        assert [h.tokens for h in hyps] == [tokens for _, tokens in expected]
        assert [h.score for h in hyps] == pytest.approx([score for score, _ in expected], abs=1e-4)


@pytest.mark.parametrize("rows, vocab, k", [(7, 8000, 10), (3, 640, 4), (5, 997, 6), (2, 40, 3)])
def test_top_per_row_equals_topk(rows, vocab, k):
    """The block search returns topk's values and columns (no ties in random floats), also for
    rows with -inf (PAD/BOS, forced EOS) and for vocabularies no block size divides (997)."""
    torch.manual_seed(vocab)
    scores = torch.randn(rows, vocab)
    scores[0, 1:] = float("-inf")  # a row at its length limit: only one finite score
    scores[1, :2] = float("-inf")
    values, columns = top_per_row(scores, k)
    expected_values, expected_columns = scores.topk(k, dim=1)
    assert torch.equal(values, expected_values)
    assert torch.equal(columns[1:], expected_columns[1:]) and columns[0, 0] == 0  # row 0: ties at -inf


@pytest.mark.parametrize("precision, tolerance", [("bf16", 0.1), ("int8", 0.1)])
def test_reduced_precision_scores_close_to_fp32(tiny_model, precision, tolerance):
    src = random_source(batch=3, seed=5)
    tgt_in = torch.randint(4, 40, (3, 6))
    with torch.no_grad():
        expected = tiny_model(src, tgt_in).log_softmax(-1)
        reduced = for_inference(copy.deepcopy(tiny_model), precision)
        got = reduced(src, tgt_in).float().log_softmax(-1)
    assert (got - expected).abs().max() < tolerance
    assert not torch.equal(got, expected)  # it did run in another precision
    if precision == "int8":  # a quantized copy: the model itself keeps its float32 weights
        assert next(tiny_model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="allowed"):
        for_inference(tiny_model, "fp8")


def test_kv_cache_equals_concatenation_with_reordering():
    """KVCache (in-place appends, growth by doubling, ping-pong reordering) holds what
    concatenating and index-selecting each step holds: through growth past its first 16
    positions, a fan-out to more rows, a reorder and a shrink."""
    torch.manual_seed(0)
    cache, naive_k, naive_v = KVCache(), None, None
    batch = 3
    for step in range(40):
        if step == 1:
            order = torch.tensor([0, 0, 1, 1, 2, 2])  # beams fan out
        elif step in (10, 25):
            order = torch.randperm(batch)[: batch - 1]  # a sentence leaves, the rest move
        else:
            order = torch.randint(0, batch, (batch,))  # beams swap prefixes
        if step:
            cache.reorder(order)
            naive_k, naive_v = naive_k.index_select(0, order), naive_v.index_select(0, order)
            batch = order.numel()
        k, v = torch.randn(batch, 2, 1, 4), torch.randn(batch, 2, 1, 4)
        got_k, got_v = cache.append(k, v)
        naive_k = k if naive_k is None else torch.cat([naive_k, k], dim=2)
        naive_v = v if naive_v is None else torch.cat([naive_v, v], dim=2)
        assert torch.equal(got_k, naive_k) and torch.equal(got_v, naive_v) and cache.length == step + 1
