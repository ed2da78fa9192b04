"""Batched greedy and beam search over ``Transformer.encode``/``decode`` with an incremental cache.

Each step feeds only the newest target token: decoder self-attention keys/values are appended
to the cache, cross-attention keys/values are computed once per source, so a step costs
O(current length) rather than re-running the whole prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mt.model import Transformer, reorder_cache
from mt.tokenizer import Tokenizer


@dataclass
class Hypothesis:
    """One finished translation.

    Attributes:
        tokens: target piece ids, without BOS and EOS.
        log_prob: sum of the token log-probabilities, EOS included (natural log).
        score: ``log_prob`` divided by the length penalty; what the search ranks by.
    """

    tokens: list[int]
    log_prob: float
    score: float


def max_lengths(src_ids: torch.Tensor, pad_id: int, max_len_a: float, max_len_b: int, limit: int) -> torch.Tensor:
    """Per-sentence output limit ``a * src_len + b`` in target tokens (EOS included), capped at ``limit``.

    src_ids: (batch, src_len) → (batch,) long.
    """
    src_len = (src_ids != pad_id).sum(dim=1)
    return (src_len.float() * max_len_a + max_len_b).long().clamp(min=1, max=limit)


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016, eq. 14)."""
    return ((5.0 + length) / 6.0) ** alpha


def force_eos(log_probs: torch.Tensor, rows: torch.Tensor) -> None:
    """In place: rows that reached their length limit may only emit EOS, at its real log-prob.

    log_probs: (n, tgt_vocab); rows: (n,) bool.
    """
    eos = log_probs[:, Tokenizer.eos_id].clone()
    log_probs[rows] = float("-inf")
    log_probs[:, Tokenizer.eos_id] = torch.where(rows, eos, log_probs[:, Tokenizer.eos_id])


@torch.inference_mode()
def greedy_search(
    model: Transformer,
    src_ids: torch.Tensor,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
) -> list[Hypothesis]:
    """Pick the most probable token at each step until EOS or the length limit.

    Args:
        src_ids: (batch, src_len) long source ids with EOS, right-padded.
        max_len_a, max_len_b: output limit ``a * src_len + b`` tokens (EOS included).

    Returns: one hypothesis per sentence, in input order (score = log_prob).
    """
    batch = src_ids.size(0)
    device = src_ids.device
    memory, src_mask = model.encode(src_ids)
    cache = model.new_cache()
    limits = max_lengths(src_ids, model.pad_id, max_len_a, max_len_b, model.cfg.max_positions - 1)
    last = torch.full((batch, 1), Tokenizer.bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    log_prob = torch.zeros(batch, device=device)
    steps = []
    for step in range(int(limits.max())):
        hidden, _ = model.decode(last, memory, src_mask, cache)
        log_probs = model.logits(hidden[:, -1]).float().log_softmax(dim=-1)  # (batch, tgt_vocab)
        log_probs[:, Tokenizer.pad_id] = float("-inf")
        log_probs[:, Tokenizer.bos_id] = float("-inf")
        force_eos(log_probs, limits <= step + 1)
        token_log_prob, token = log_probs.max(dim=-1)  # (batch,)
        token = token.masked_fill(finished, Tokenizer.pad_id)
        log_prob += token_log_prob.masked_fill(finished, 0.0)
        steps.append(token)
        finished |= token == Tokenizer.eos_id
        if finished.all():
            break
        last = token[:, None]
    tokens = torch.stack(steps, dim=1).tolist()  # (batch, steps)
    hypotheses = []
    for row, score in zip(tokens, log_prob.tolist()):
        row = row[: row.index(Tokenizer.eos_id)] if Tokenizer.eos_id in row else row
        hypotheses.append(Hypothesis(row, score, score))
    return hypotheses


@torch.inference_mode()
def beam_search(
    model: Transformer,
    src_ids: torch.Tensor,
    beam_size: int = 5,
    length_penalty_alpha: float = 1.0,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
) -> list[list[Hypothesis]]:
    """Beam search vectorised over batch × beam.

    At each step every live beam proposes its continuations; of the 2·beam best candidates
    per sentence, those ending in EOS (among the first ``beam_size``) become finished
    hypotheses and the best non-EOS ones continue. A sentence is done once it has
    ``beam_size`` finished hypotheses; at its length limit every live beam is closed with EOS.
    With ``beam_size`` 1 this is exactly greedy search.

    Args:
        src_ids: (batch, src_len) long source ids with EOS, right-padded.
        beam_size: beams per sentence.
        length_penalty_alpha: alpha of :func:`length_penalty` (0 = rank by raw log-prob).
        max_len_a, max_len_b: output limit ``a * src_len + b`` tokens (EOS included).

    Returns: per sentence, its finished hypotheses, best first.
    """
    batch, beam = src_ids.size(0), beam_size
    device = src_ids.device
    memory, src_mask = model.encode(src_ids)
    memory = memory.repeat_interleave(beam, dim=0)  # (batch * beam, src_len, d_model)
    src_mask = src_mask.repeat_interleave(beam, dim=0)
    limits = max_lengths(src_ids, model.pad_id, max_len_a, max_len_b, model.cfg.max_positions - 1)
    cache = model.new_cache()
    scores = torch.zeros(batch, beam, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: let only the first one expand
    history = torch.full((batch * beam, 1), Tokenizer.bos_id, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    base = (torch.arange(batch, device=device) * beam)[:, None]  # (batch, 1) first row of each sentence
    for step in range(int(limits.max())):
        hidden, _ = model.decode(history[:, -1:], memory, src_mask, cache)
        log_probs = model.logits(hidden[:, -1]).float().log_softmax(dim=-1)  # (batch * beam, tgt_vocab)
        vocab = log_probs.size(1)
        log_probs[:, Tokenizer.pad_id] = float("-inf")
        log_probs[:, Tokenizer.bos_id] = float("-inf")
        force_eos(log_probs, (limits <= step + 1).repeat_interleave(beam))
        candidates = (scores.view(-1, 1) + log_probs).view(batch, beam * vocab)
        top_scores, top_index = candidates.topk(2 * beam, dim=1)  # (batch, 2 * beam)
        top_beam, top_token = top_index // vocab, top_index % vocab

        is_eos = top_token == Tokenizer.eos_id
        newly_finished = is_eos.clone()
        newly_finished[:, beam:] = False
        newly_finished &= ~done[:, None] & torch.isfinite(top_scores)
        for sentence, slot in newly_finished.nonzero().tolist():
            row = int(base[sentence, 0] + top_beam[sentence, slot])
            tokens = history[row, 1:].tolist()
            log_prob = float(top_scores[sentence, slot])
            penalty = length_penalty(len(tokens) + 1, length_penalty_alpha)
            finished[sentence].append(Hypothesis(tokens, log_prob, log_prob / penalty))
        done |= torch.tensor([len(hyps) >= beam for hyps in finished], device=device)
        if done.all():
            break

        # continue with the best non-EOS candidates
        alive_scores, alive_slot = top_scores.masked_fill(is_eos, float("-inf")).topk(beam, dim=1)
        next_beam = top_beam.gather(1, alive_slot)  # (batch, beam)
        next_token = top_token.gather(1, alive_slot)
        order = (base + next_beam).view(-1)  # (batch * beam,) rows of the previous step
        history = torch.cat([history.index_select(0, order), next_token.view(-1, 1)], dim=1)
        reorder_cache(cache, order, cross_attention=False)  # beams of one sentence share source keys
        scores = alive_scores
    for hyps in finished:
        hyps.sort(key=lambda h: h.score, reverse=True)
    return finished
