"""Translate sentences in length-sorted batches and score them with sacreBLEU."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sacrebleu
import torch

from mt.config import DecodingConfig
from mt.data import pad
from mt.decoding import beam_search, greedy_search
from mt.model import Transformer
from mt.tokenizer import Tokenizer

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
    from tqdm.auto import tqdm

    outputs = [""] * len(sentences)
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
        if decoding.beam_size == 1:
            best = greedy_search(model, src_ids, decoding.max_len_a, decoding.max_len_b)
        else:
            nbest = beam_search(
                model, src_ids, decoding.beam_size, decoding.length_penalty, decoding.max_len_a, decoding.max_len_b
            )
            best = [hyps[0] for hyps in nbest]
        for i, text in zip(batch, tokenizer.decode_tgt([h.tokens for h in best])):
            outputs[i] = text.replace("\n", " ")  # one output line per input line, always
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
