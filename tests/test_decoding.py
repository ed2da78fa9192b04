"""Search: incremental decoding equals full decoding, beam 1 equals greedy, scores are real log-probs."""

import pytest
import torch

from mt.decoding import beam_search, greedy_search, length_penalty
from mt.tokenizer import Tokenizer


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
    alpha = 1.0
    for hyps in beam_search(tiny_model, src, beam_size=4, length_penalty_alpha=alpha, max_len_b=8):
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / length_penalty(len(h.tokens) + 1, alpha), abs=1e-5)


def test_hypotheses_respect_the_length_limit(tiny_model):
    src = random_source()
    src_len = (src != 0).sum(1)
    for hyp, n in zip(greedy_search(tiny_model, src, max_len_a=0.5, max_len_b=2), src_len.tolist()):
        assert len(hyp.tokens) + 1 <= int(n * 0.5 + 2)
    for hyps, n in zip(beam_search(tiny_model, src, beam_size=3, max_len_a=0.5, max_len_b=2), src_len.tolist()):
        assert all(len(h.tokens) + 1 <= int(n * 0.5 + 2) for h in hyps)
        assert all(t not in (Tokenizer.eos_id, Tokenizer.bos_id, 0) for h in hyps for t in h.tokens)
