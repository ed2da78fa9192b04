"""Translate sentences in length-sorted batches and score them with sacreBLEU."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sacrebleu
import torch

from mt.config import DecodingConfig
from mt.data.batching import pad
from mt.inference.decoding import beam_search, greedy_search
from mt.model.transformer import Transformer
from mt.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def translate(
    model: Transformer,
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    decoding: DecodingConfig,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[str]:
    """Translate ``sentences``; the output list is aligned with the input.

    Sentences are decoded in batches of ``decoding.batch_size`` sentences of similar length
    (less padding), then put back in input order. A blank (whitespace-only) sentence
    translates to an empty string without reaching the model. Sources longer than
    ``model.cfg.max_positions - 1`` pieces are truncated to fit.

    Args:
        decoding: search settings; ``beam_size`` 1 = greedy search, else beam search.
        progress: show a tqdm bar over batches (only on a terminal).
    """
    nbest = translate_nbest(model, tokenizer, sentences, decoding, 1, device, progress)
    return [hypotheses[0].text if hypotheses else "" for hypotheses in nbest]


@dataclass
class Translation:
    """One hypothesis of :func:`translate_nbest`.

    Attributes:
        text: the detokenized translation, on one line (newlines become spaces).
        pieces: its target pieces, then ``"</s>"``.
        score: the total the search ranks by: ``log_prob`` divided by the GNMT length penalty
            (:func:`mt.inference.decoding.length_penalty`); greedy search (beam size 1) does not rank,
            its score is ``log_prob``.
        log_prob: log-probability of the whole translation, EOS included (natural log).
        token_log_probs: log P(piece | source, previous pieces) of each entry of ``pieces``;
            they sum to ``log_prob``.
    """

    text: str
    pieces: list[str]
    score: float
    log_prob: float
    token_log_probs: list[float]


def translate_nbest(
    model: Transformer,
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    decoding: DecodingConfig,
    n_best: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = False,
    on_batch: Callable[[list[int], torch.Tensor, list[torch.Tensor], list[list[Translation]]], None] | None = None,
) -> list[list[Translation]]:
    """The ``n_best`` best translations of each sentence, best first, with their scores.

    Batching, blank sentences and truncation as in :func:`translate`; a blank sentence has no
    hypotheses (an empty list). A sentence gets fewer than ``n_best`` only if the search
    finished fewer (a length limit of one token leaves only EOS).

    ``on_batch(indices, src_ids, encoder_states, hypotheses)``, if given, runs after each batch's
    search with its sentences' indices, their (batch, src_len) source ids, the encoder's
    layer outputs for them (as :meth:`mt.model.transformer.Transformer.encode` keeps them, each
    (batch, src_len, d_model)) and their hypotheses: work that reuses the encoder pass (the
    aligner) without keeping it for every sentence.

    Raises:
        ValueError: ``n_best`` outside 1..``decoding.beam_size``.
    """
    from tqdm.auto import tqdm

    if not 1 <= n_best <= decoding.beam_size:
        raise ValueError(f"n_best must be between 1 and the beam size {decoding.beam_size}, got {n_best}")
    outputs: list[list[Translation]] = [[] for _ in sentences]
    todo = [i for i, s in enumerate(sentences) if s.strip()]
    if not todo:
        return outputs
    encoded = tokenizer.encode_src([sentences[i] for i in todo])
    limit = model.cfg.max_positions - 1
    too_long = sum(len(pieces) > limit for pieces in encoded)
    if too_long:
        log.warning("%d sentences longer than %d pieces were truncated to fit model.max_positions", too_long, limit)
    ids = {i: [*pieces[:limit], tokenizer.eos_id] for i, pieces in zip(todo, encoded)}
    todo.sort(key=lambda i: len(ids[i]))
    size = decoding.batch_size
    batches = [todo[start : start + size] for start in range(0, len(todo), size)]
    model.eval()
    for batch in tqdm(batches, desc="translate", unit="batch", disable=None if progress else True, leave=False):
        src_ids = pad([ids[i] for i in batch]).to(device)
        states = [] if on_batch is not None else None
        if decoding.beam_size == 1:
            nbest = [[h] for h in greedy_search(model, src_ids, decoding.max_len_a, decoding.max_len_b, states)]
        else:
            nbest = beam_search(
                model, src_ids, decoding.beam_size, decoding.length_penalty, decoding.max_len_a, decoding.max_len_b,
                n_best, states,
            )
        texts = iter(tokenizer.decode_tgt([h.tokens for hypotheses in nbest for h in hypotheses]))  # one call per batch
        for i, hypotheses in zip(batch, nbest):
            outputs[i] = [
                Translation(
                    text=next(texts).replace("\n", " "),  # one output line per input line, always
                    pieces=[*tokenizer.tgt.id_to_piece(h.tokens), "</s>"],
                    score=h.score,
                    log_prob=h.log_prob,
                    token_log_probs=h.token_log_probs,
                )
                for h in hypotheses
            ]
        if on_batch is not None:
            on_batch(batch, src_ids, states, [outputs[i] for i in batch])
    return outputs


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU (13a tokenizer, cased) and chrF2 through sacreBLEU (Post 2018).

    Args:
        hypotheses, references: detokenized text, one sentence each, same length.

    Returns:
        ``{"bleu", "chrf", "bleu_signature", "chrf_signature", "n_sentences", "bleu_line",
        "chrf_line"}``; the ``*_line`` entries are sacreBLEU's own score lines
        (``BLEU = 35.12 66.1/41.9/...``).

    Raises:
        ValueError: different numbers of hypotheses and references.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu_metric, chrf_metric = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu = bleu_metric.corpus_score(list(hypotheses), [list(references)])
    chrf = chrf_metric.corpus_score(list(hypotheses), [list(references)])
    return {
        "bleu": bleu.score,
        "chrf": chrf.score,
        "bleu_signature": str(bleu_metric.get_signature()),
        "chrf_signature": str(chrf_metric.get_signature()),
        "n_sentences": len(hypotheses),
        "bleu_line": str(bleu),
        "chrf_line": str(chrf),
    }
