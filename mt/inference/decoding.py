"""Batched greedy and beam search over ``Transformer.encode``/``decode`` with an incremental cache.

Each step feeds only the newest target token: decoder self-attention keys/values are appended
to the cache, cross-attention keys/values are computed once per source, so a step costs
O(current length) rather than re-running the whole prefix.

A sentence leaves the batch as soon as it is done (EOS, enough finished hypotheses, or its
length limit): its rows of the encoder memory, the source mask and the cache are dropped
with ``index_select``, so the remaining steps only pay for sentences still being searched.
Rows are computed independently, so dropping changes no result (up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mt.model.transformer import DecoderCache, Transformer, reorder_cache
from mt.data.tokenizer import Tokenizer


@dataclass
class Hypothesis:
    """One finished translation.

    Attributes:
        tokens: target piece ids, without BOS and EOS.
        log_prob: sum of the token log-probabilities, EOS included (natural log).
        score: ``log_prob`` divided by the length penalty; what the search ranks by.
        token_log_probs: log P(token | source, prefix) of each token then of EOS
            (``len(tokens) + 1`` values, natural log); they sum to ``log_prob``.
    """

    tokens: list[int]
    log_prob: float
    score: float
    token_log_probs: list[float]


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


def _step_log_probs(
    model: Transformer, last: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor, cache: DecoderCache, group: int = 1
) -> torch.Tensor:
    """One incremental decoder step: last (rows, 1) → (rows, tgt_vocab) float32 log-probs, PAD/BOS at -inf."""
    hidden, _ = model.decode(last, memory, src_mask, cache, group=group)
    log_probs = model.logits(hidden[:, -1]).log_softmax(dim=-1, dtype=torch.float32)  # (rows, tgt_vocab)
    log_probs[:, Tokenizer.pad_id] = float("-inf")
    log_probs[:, Tokenizer.bos_id] = float("-inf")
    return log_probs


def top_per_row(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest scores of each row and their columns, as ``scores.topk(k, dim=1)``
    (best first; among equal scores another column may be picked).

    ``Tensor.topk`` sorts every row of the vocabulary; here the rows are cut into blocks, the
    ``k`` blocks with the largest maxima are kept (they hold the row's ``k`` largest scores: a
    block holding one of them has its maximum at least the k-th largest score, and at most
    ``k`` blocks can), and only those ``k`` blocks are searched. Falls back to ``topk`` when no
    block size divides the vocabulary into enough blocks.

    scores: (rows, vocab) contiguous → values (rows, k), columns (rows, k) long.
    """
    rows, vocab = scores.shape
    block = next((b for b in (64, 50, 48, 40, 32, 25, 24, 20, 16) if vocab % b == 0 and vocab // b >= 4 * k), None)
    if block is None or not scores.is_contiguous():
        return scores.topk(k, dim=1)
    blocks = scores.view(rows, vocab // block, block)
    best_blocks = blocks.amax(dim=2).topk(k, dim=1).indices  # (rows, k)
    candidates = blocks.gather(1, best_blocks[:, :, None].expand(-1, -1, block)).view(rows, k * block)
    values, slots = candidates.topk(k, dim=1)  # (rows, k)
    return values, best_blocks.gather(1, slots // block) * block + slots % block


@torch.inference_mode()
def greedy_search(
    model: Transformer,
    src_ids: torch.Tensor,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    encoder_states: list[torch.Tensor] | None = None,
) -> list[Hypothesis]:
    """Pick the most probable token at each step until EOS or the length limit.

    A sentence leaves the batch at its EOS (see the module docstring).

    Args:
        src_ids: (batch, src_len) long source ids with EOS, right-padded.
        max_len_a, max_len_b: output limit ``a * src_len + b`` tokens (EOS included).
        encoder_states: a list to receive every encoder layer's output (:meth:`Transformer.encode`).

    Returns: one hypothesis per sentence, in input order (score = log_prob).
    """
    batch = src_ids.size(0)
    device = src_ids.device
    memory, src_mask = model.encode(src_ids, encoder_states)
    cache = model.new_cache()
    limits = max_lengths(src_ids, model.pad_id, max_len_a, max_len_b, model.cfg.max_positions - 1)  # (batch,)
    limits_cpu = limits.cpu()  # the search knows which rows hit their limit without a device sync
    max_steps = int(limits_cpu.max())
    sentences = torch.arange(batch, device=device)  # (active,) input index of each active row
    tokens = torch.full((batch, max_steps), Tokenizer.pad_id, dtype=torch.long, device=device)
    token_log_probs = torch.zeros(batch, max_steps, device=device)
    lengths = limits.clone()  # tokens emitted, EOS included; a row that ends early is overwritten
    last = torch.full((batch, 1), Tokenizer.bos_id, dtype=torch.long, device=device)
    for step in range(max_steps):
        log_probs = _step_log_probs(model, last, memory, src_mask, cache)  # (active, tgt_vocab)
        at_limit = limits <= step + 1  # (active,)
        if bool((limits_cpu <= step + 1).any()):
            force_eos(log_probs, at_limit)
        token_log_prob, token = log_probs.max(dim=-1)  # (active,)
        tokens[sentences, step] = token
        token_log_probs[sentences, step] = token_log_prob
        ended = (token == Tokenizer.eos_id) | at_limit
        if bool(ended.any()):  # the one device sync of a step
            lengths[sentences[ended]] = step + 1
            keep = (~ended).nonzero().squeeze(1)  # (still active,)
            if keep.numel() == 0:
                break
            sentences, limits, token = sentences[keep], limits[keep], token[keep]
            limits_cpu = limits.cpu()
            memory, src_mask = memory.index_select(0, keep), src_mask.index_select(0, keep)
            reorder_cache(cache, keep)
        last = token[:, None]
    hypotheses = []
    for row, log_prob_row, length in zip(tokens.tolist(), token_log_probs.tolist(), lengths.tolist()):
        token_scores = log_prob_row[:length]
        log_prob = sum(token_scores)
        hypotheses.append(Hypothesis(row[: length - 1], log_prob, log_prob, token_scores))
    return hypotheses


@torch.inference_mode()
def beam_search(
    model: Transformer,
    src_ids: torch.Tensor,
    beam_size: int = 5,
    length_penalty_alpha: float = 1.0,
    max_len_a: float = 1.2,
    max_len_b: int = 10,
    n_best: int | None = None,
    encoder_states: list[torch.Tensor] | None = None,
) -> list[list[Hypothesis]]:
    """Beam search vectorised over batch × beam.

    At each step every live beam proposes its continuations; of the 2·beam best candidates
    per sentence (:func:`top_per_row` per beam over the vocabulary, then one ``topk`` over
    beam × 2·beam), those ending in EOS (among the first ``beam_size``) become finished
    hypotheses and the best non-EOS ones continue. The beams of a sentence share one copy of
    its encoder output and cross-attention keys/values (``group``). A sentence
    is done once it has ``beam_size`` finished hypotheses; at its length limit every live beam
    is closed with EOS. A done sentence leaves the batch (see the module docstring). With
    ``beam_size`` 1 this is exactly greedy search.

    Args:
        src_ids: (batch, src_len) long source ids with EOS, right-padded.
        beam_size: beams per sentence.
        length_penalty_alpha: alpha of :func:`length_penalty` (0 = rank by raw log-prob).
        max_len_a, max_len_b: output limit ``a * src_len + b`` tokens (EOS included).
        n_best: hypotheses returned per sentence; None = ``beam_size``.
        encoder_states: a list to receive every encoder layer's output (:meth:`Transformer.encode`).

    Returns: per sentence, its ``n_best`` best finished hypotheses (fewer only if the search
        finished fewer), best score first; distinct token sequences.

    Raises:
        ValueError: ``n_best`` outside 1..``beam_size``, or ``2 * beam_size`` above the target
            vocabulary size.
    """
    n_best = beam_size if n_best is None else n_best
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size={beam_size}, got {n_best}")
    if 2 * beam_size > model.output_proj.out_features:
        raise ValueError(f"beam_size={beam_size} needs a target vocabulary of at least {2 * beam_size} pieces")
    batch, beam = src_ids.size(0), beam_size
    device = src_ids.device
    # Rows are (active sentence, beam) pairs, beam fastest. The first step runs one row per
    # sentence (every beam would hold the same BOS prefix); its 2·beam best tokens then fan out
    # to the beams. The encoder output, the source mask and the cross-attention keys/values keep
    # one row per sentence throughout: the beams of a sentence read them together (group=width).
    memory, src_mask = model.encode(src_ids, encoder_states)  # (active, src_len, d_model), (active, src_len)
    limits = max_lengths(src_ids, model.pad_id, max_len_a, max_len_b, model.cfg.max_positions - 1)  # (active,)
    limits_cpu = limits.cpu()
    cache = model.new_cache()
    sentences = torch.arange(batch, device=device)  # (active,) input index of each active sentence
    n_finished = torch.zeros(batch, dtype=torch.long, device=device)  # (active,)
    width = 1  # live beams per sentence: 1 at the first step, then beam
    scores = torch.zeros(batch, width, device=device)  # (active, width) log-prob of each live beam
    history = torch.full((batch, 1), Tokenizer.bos_id, dtype=torch.long, device=device)  # (active * width, step + 1)
    history_log_probs = torch.zeros(batch, 0, device=device)  # (active * width, step)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for step in range(int(limits_cpu.max())):
        active = sentences.size(0)
        log_probs = _step_log_probs(model, history[:, -1:], memory, src_mask, cache, group=width)  # (active * width, tgt_vocab)
        at_limit = limits <= step + 1  # (active,)
        if bool((limits_cpu <= step + 1).any()):
            force_eos(log_probs, at_limit.repeat_interleave(width))
        # each row's 2·beam best tokens hold the sentence's 2·beam best candidates (a candidate
        # outside its row's top 2·beam has 2·beam better ones in that row alone)
        row_log_probs, row_tokens = top_per_row(log_probs, 2 * beam)  # (active * width, 2 * beam)
        candidates = (scores.view(-1, 1) + row_log_probs).view(active, width * 2 * beam)
        top_scores, top_index = candidates.topk(2 * beam, dim=1)  # (active, 2 * beam)
        top_token_log_probs = row_log_probs.view(active, -1).gather(1, top_index)
        top_beam, top_token = top_index // (2 * beam), row_tokens.view(active, -1).gather(1, top_index)
        base = torch.arange(active, device=device)[:, None] * width  # (active, 1) first row of each sentence
        is_eos = top_token == Tokenizer.eos_id
        newly_finished = is_eos[:, :beam] & torch.isfinite(top_scores[:, :beam])  # (active, beam)
        n_finished += newly_finished.sum(dim=1)
        done = (n_finished >= beam) | at_limit  # at its limit every live beam has just been closed
        any_finished, any_done = torch.stack([newly_finished.any(), done.any()]).tolist()  # the step's one sync
        if any_finished:
            _collect(finished, newly_finished, sentences, base + top_beam[:, :beam], top_scores, top_token_log_probs,
                     history, history_log_probs, length_penalty_alpha)

        # continue with the best non-EOS candidates
        alive_scores, alive_slot = top_scores.masked_fill(is_eos, float("-inf")).topk(beam, dim=1)
        next_beam = top_beam.gather(1, alive_slot)  # (active, beam)
        next_token = top_token.gather(1, alive_slot)
        next_log_probs = top_token_log_probs.gather(1, alive_slot)
        if any_done:
            keep = (~done).nonzero().squeeze(1)  # (still active,)
            if keep.numel() == 0:
                break
            sentences, limits, n_finished = sentences[keep], limits[keep], n_finished[keep]
            limits_cpu = limits.cpu()
            alive_scores, next_token, next_log_probs = alive_scores[keep], next_token[keep], next_log_probs[keep]
            order = (base[keep] + next_beam[keep]).view(-1)  # (still active * beam,) rows of this step
            memory, src_mask = memory.index_select(0, keep), src_mask.index_select(0, keep)
            reorder_cache(cache, keep, sites=("cross_attention",))
        else:
            order = (base + next_beam).view(-1)  # (active * beam,)
        reorder_cache(cache, order, sites=("self_attention",))
        width = beam
        history = torch.cat([history.index_select(0, order), next_token.view(-1, 1)], dim=1)
        history_log_probs = torch.cat([history_log_probs.index_select(0, order), next_log_probs.view(-1, 1)], dim=1)
        scores = alive_scores
    for hyps in finished:
        hyps.sort(key=lambda h: h.score, reverse=True)
        del hyps[n_best:]
    return finished


def _collect(
    finished: list[list[Hypothesis]],
    newly_finished: torch.Tensor,
    sentences: torch.Tensor,
    rows: torch.Tensor,
    top_scores: torch.Tensor,
    top_token_log_probs: torch.Tensor,
    history: torch.Tensor,
    history_log_probs: torch.Tensor,
    alpha: float,
) -> None:
    """Append the hypotheses that end in EOS this step to ``finished`` (indexed by input sentence).

    newly_finished: (active, beam) bool over the first ``beam`` candidate slots; rows: (active,
    beam) the history row each slot extends; top_scores, top_token_log_probs: (active, 2 * beam).
    """
    sentence, slot = newly_finished.nonzero().unbind(dim=1)  # (n,) each
    row = rows[sentence, slot]
    # one transfer for all of them instead of one per hypothesis
    tokens = history.index_select(0, row)[:, 1:].tolist()  # drop BOS
    prefix_log_probs = history_log_probs.index_select(0, row).tolist()
    eos_log_probs = top_token_log_probs[sentence, slot].tolist()
    log_probs = top_scores[sentence, slot].tolist()
    for k, index in enumerate(sentences[sentence].tolist()):
        penalty = length_penalty(len(tokens[k]) + 1, alpha)
        token_scores = [*prefix_log_probs[k], eos_log_probs[k]]
        finished[index].append(Hypothesis(tokens[k], log_probs[k], log_probs[k] / penalty, token_scores))
