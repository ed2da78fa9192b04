"""Cross-attention → soft matrices → word pooling → hard links → files.

Teacher-forced over a (source, target) pair with target pieces y_1..y_n, decoder row t
(t = 0..n) has input y_t (y_0 = BOS) and predicts y_{t+1} (y_{n+1} = EOS). Two ways to read
word alignments off the cross-attention of one layer (:data:`METHODS`):

- ``attention``: piece y_i takes the row that *predicts* it (row i - 1): attention while
  choosing the word, which tends to look one source word ahead;
- ``shift``: Shift-Att (Chen et al. 2020, "Accurate Word Alignment Induction from Neural
  Machine Translation", EMNLP): piece y_i takes the row where it is the decoder *input*
  (row i), i.e. the step that predicts y_{i+1};
- ``supervised``: the heads a guided-alignment loss trained (``model.alignment``: its layer,
  its first ``heads`` heads, its full-context pass; Garg et al. 2019), read as ``attention``
  reads them, which is the row the loss supervised. The default for a checkpoint trained with
  ``train.alignment_weight`` > 0 (:func:`default_method`);
- ``aligner``: the aligner trained on top of the model (:mod:`mt.model.aligner`), whose row t is
  the alignment of the piece predicted at row t, as ``attention`` reads. The default for a
  checkpoint that has one.

The source EOS soaks up much of the attention mass (fairseq issue 4446): its column is
dropped and each row renormalised over real source words, so special tokens never appear in
word links. The teacher-forced passes are :mod:`mt.alignment.teacher_forced`; how pieces
become whitespace words is :mod:`mt.data.words`; gold sets and AER are :mod:`mt.alignment.aer`;
symmetrization is :mod:`mt.alignment.symmetrize`; the files ``mt-align`` writes are
:mod:`mt.alignment.files`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mt.alignment.adapt import Teacher, adapted, combined_links
from mt.alignment.aer import AlignmentScores, GoldAlignment, score_alignments
from mt.alignment.symmetrize import symmetrize
from mt.alignment.teacher_forced import attend, segmented_aligner, segmented_attention
from mt.data.tokenizer import Tokenizer
from mt.data.words import Segmentation, segment
from mt.model.transformer import Transformer

METHODS = ("attention", "shift", "supervised", "aligner")
LAYER_METHODS = ("attention", "shift")  # read any layer and heads; supervised reads the trained ones
DEFAULT_METHOD = "attention"


def default_method(checkpoint_info: dict) -> str:
    """``aligner`` for a checkpoint with an aligner, ``supervised`` for one trained with guided
    alignment, else :data:`DEFAULT_METHOD`.

    Args:
        checkpoint_info: :func:`mt.model.checkpoint.load_for_inference`'s info (``aligner``,
            ``alignment_supervised``).
    """
    if checkpoint_info.get("aligner"):
        return "aligner"
    return "supervised" if checkpoint_info.get("alignment_supervised") else DEFAULT_METHOD


def default_layer(n_layers: int) -> int:
    """The penultimate decoder layer (0-based): its cross-attention aligns best in 6-layer
    models (Garg et al. 2019, "Jointly Learning to Align and Translate with Transformer Models")."""
    return max(n_layers - 2, 0)


def argmax_links(word_matrix: np.ndarray) -> list[tuple[int, int]]:
    """Each target word links to its most-attended source word.

    Args: word_matrix: (n_tgt_words, n_src_words).
    Returns: sorted ``(src_word, tgt_word)`` pairs, 0-based; rows of zeros give no link.
    """
    links = [(int(row.argmax()), t) for t, row in enumerate(word_matrix) if row.sum() > 0]
    return sorted(links)


def method_rows(attention: np.ndarray, method: str) -> np.ndarray:
    """The attention row of each target piece under ``method`` (see the module docstring).

    Args:
        attention: (..., tgt_len + 1, src_len + 1): rows 0..tgt_len of the teacher-forced pass.

    Returns: (..., tgt_len, src_len + 1), row i for target piece i.

    Raises:
        ValueError: an unknown method.
    """
    if method in ("attention", "supervised", "aligner"):
        return attention[..., :-1, :]  # rows predicting y_1..y_n; the EOS-predicting row goes
    if method == "shift":
        return attention[..., 1:, :]  # rows whose input is y_1..y_n; the BOS-input row goes
    raise ValueError(f"unknown alignment method {method!r}; choose one of {', '.join(METHODS)}")


def links_of(word_matrix: np.ndarray, threshold: float | None = None) -> list[tuple[int, int]]:
    """Hard links from a word matrix: each target word's argmax, or every cell ≥ ``threshold``.

    Args:
        word_matrix: (n_tgt_words, n_src_words), rows sum to 1 (or 0: no link).
        threshold: None = argmax (one link per target word); else many-to-many links where
            the probability is at least this.

    Returns: sorted ``(src_word, tgt_word)`` pairs, 0-based.
    """
    if threshold is None:
        return argmax_links(word_matrix)
    tgt, src = np.nonzero(word_matrix >= threshold)
    return sorted(zip(src.tolist(), tgt.tolist()))


@dataclass
class PairAlignment:
    """The cross-attention alignment of one (source, target) pair.

    Attributes:
        attention: (n_layers, n_heads, tgt_len + 1, src_len + 1) float32 over pieces, the
            teacher-forced rows BOS..last piece (see the module docstring), EOS column
            included; rows sum to 1. None when :func:`align` was told not to keep it.
        src_tokens, tgt_tokens: the pieces of each axis, ``</s>`` last.
        src_words, tgt_words: whitespace words.
        word_matrix: (n_tgt_words, n_src_words) float32 from the chosen method, layer and heads.
        links: ``(src_word, tgt_word)`` pairs (symmetrized when a reverse model was given).
        forward_links, reverse_links: the two directional alignments behind symmetrized
            ``links`` (reverse already flipped to source-first); None otherwise.
        segmentation: how the pieces pool into words, to pool other layers and heads than
            ``word_matrix``'s (the HTML view, :mod:`mt.alignment.html_view`); None if not kept.
        aligner: (tgt_len + 1, src_len + 1) float32, the aligner's piece-level alignment
            (rows as ``attention``'s, row t for the piece predicted at row t) with ``--method
            aligner``; None otherwise.
    """

    attention: np.ndarray | None
    src_tokens: list[str]
    tgt_tokens: list[str]
    src_words: list[str]
    tgt_words: list[str]
    word_matrix: np.ndarray
    links: list[tuple[int, int]]
    forward_links: list[tuple[int, int]] | None = None
    reverse_links: list[tuple[int, int]] | None = None
    segmentation: Segmentation | None = None
    aligner: np.ndarray | None = None


def _check_choice(model: Transformer, method: str, layer: int | None, heads: Sequence[int] | None) -> tuple[int, list[int]]:
    if method not in METHODS:
        raise ValueError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if method == "aligner" and model.aligner is None:
        raise ValueError("--method aligner: this checkpoint has no aligner (mt-train experiment=align train.init_from=RUN_DIR)")
    n_layers = len(model.decoder_layers)
    n_heads = model.decoder_layers[0].cross_attention.n_heads
    if method == "supervised":  # the heads guided alignment trained, unless asked otherwise
        layer = model.cfg.alignment.layer if layer is None else layer
        heads = list(range(model.cfg.alignment.heads)) if heads is None else heads
    layer = default_layer(n_layers) if layer is None else layer
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"--layer {layer} out of range: the decoder has {n_layers} layers (0..{n_layers - 1})")
    heads = list(range(n_heads)) if heads is None else list(heads)
    if not heads or any(not 0 <= h < n_heads for h in heads):
        raise ValueError(f"--heads {heads} out of range: cross-attention has {n_heads} heads (0..{n_heads - 1})")
    return layer % n_layers, heads


def supervised_heads(model: Transformer) -> tuple[int, list[int], int | None]:
    """The heads guided alignment trained (``model.alignment``): (decoder layer, 0-based;
    head indices; the layer again when trained with full context, else None — the
    ``full_context_layer`` of :func:`mt.alignment.teacher_forced.attend`)."""
    layer, heads = _check_choice(model, "supervised", None, None)
    return layer, heads, layer if model.cfg.alignment.full_context else None


def aligner_word_links(
    segmentations: Sequence[Segmentation], aligner: Sequence[np.ndarray], threshold: float | None = None, null: bool = False
) -> tuple[list[np.ndarray], list[list[tuple[int, int]]]]:
    """Word matrices (n_tgt_words, n_src_words) and links of each pair from the aligner's
    matrices (:func:`mt.alignment.teacher_forced.teacher_forced_aligner`).

    Args:
        null: the aligner learnt to put unaligned pieces' mass on the source EOS
            (``model.aligner.null``): a link (i, j) is kept only where source word i holds at
            least as much of target word j's mass as EOS does.
    """
    matrices, links = [], []
    for seg, matrix in zip(segmentations, aligner):
        rows = method_rows(matrix, "aligner")  # (tgt_len, src_len + 1), EOS column last
        words = seg.word_matrix(rows)
        pair_links = links_of(words, threshold)
        if null:
            null_mass = seg.tgt_pool @ rows[:, -1]  # (n_tgt_words,) EOS mass of each target word
            mass = seg.tgt_pool @ rows @ seg.src_pool  # (n_tgt_words, n_src_words) before renormalising
            pair_links = [(i, j) for i, j in pair_links if mass[j, i] >= null_mass[j]]
        matrices.append(words)
        links.append(pair_links)
    return matrices, links


def word_links(
    segmentations: Sequence[Segmentation],
    attention: Sequence[np.ndarray],
    method: str,
    layer: int,
    heads: Sequence[int],
    threshold: float | None = None,
) -> tuple[list[np.ndarray], list[list[tuple[int, int]]]]:
    """Word matrices (n_tgt_words, n_src_words) and links of each pair from one layer's head average."""
    matrices, links = [], []
    for seg, matrix in zip(segmentations, attention):
        rows = method_rows(matrix[layer, heads].mean(axis=0), method)  # (tgt_len, src_len + 1)
        words = seg.word_matrix(rows)
        matrices.append(words)
        links.append(links_of(words, threshold))
    return matrices, links


def align(
    model: Transformer,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    tgt_texts: Sequence[str],
    method: str = DEFAULT_METHOD,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    threshold: float | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    keep_attention: bool = True,
    encoder_states: Sequence[tuple[Sequence[int], list[torch.Tensor]] | None] | None = None,
    teacher: Teacher | None = None,
) -> list[PairAlignment]:
    """Align each (source, target) pair from the model's cross-attention.

    The word matrix averages the heads ``heads`` (default: all) of decoder layer ``layer``
    (default: :func:`default_layer`), read with ``method``; links are its row-wise argmax,
    or all cells ≥ ``threshold``. With ``method="aligner"`` both come from the aligner.

    ``keep_attention=False`` with the ``aligner`` method skips the pass that computes every
    layer's cross-attention (for the files and the HTML view): ``PairAlignment.attention`` is
    then None and the pairs cost one teacher-forced pass instead of two. ``encoder_states``
    (per pair, as :func:`mt.alignment.teacher_forced.segmented_aligner` takes them: e.g. the
    search's) spares the aligner method the encoder where the source ids match. ``teacher``
    (the checkpoint's, :class:`mt.alignment.adapt.Teacher`) adapts the aligner's lexicon to
    these pairs first (:func:`mt.alignment.adapt.adapted`), and its ``links`` setting may combine
    the aligner's links with eflomal's of the same run (:func:`mt.alignment.adapt.combined_links`);
    other methods ignore it.

    Raises:
        ValueError: an unknown method, ``layer`` or a head index out of range, or unequal
            numbers of texts.
        ConfigError: a ``teacher`` for the aligner method, and eflomal not installed.
    """
    layer, heads = _check_choice(model, method, layer, heads)
    full_context = layer if method == "supervised" and model.cfg.alignment.full_context else None
    if method == "aligner" and not keep_attention:
        if len(src_texts) != len(tgt_texts):
            raise ValueError(f"{len(src_texts)} source but {len(tgt_texts)} target sentences")
        segmentations = segment(tokenizer, src_texts, tgt_texts, model.cfg.max_positions - 1)
        attention = [None] * len(segmentations)
    else:
        segmentations, attention = attend(model, tokenizer, src_texts, tgt_texts, batch_size, device, progress, full_context)
    aligner = [None] * len(segmentations)
    if method == "aligner":
        with adapted(model, tokenizer, teacher, segmentations, src_texts, tgt_texts) as teacher_links:
            aligner = segmented_aligner(model, segmentations, batch_size, device, encoder_states=encoder_states)
        matrices, links = aligner_word_links(segmentations, aligner, threshold, model.cfg.aligner.null)
        if teacher_links is not None:
            links = combined_links(teacher, links, teacher_links)
    else:
        matrices, links = word_links(segmentations, attention, method, layer, heads, threshold)
    return [
        PairAlignment(
            attention=matrix,
            src_tokens=[p.piece for p in seg.src_pieces] + ["</s>"],
            tgt_tokens=[p.piece for p in seg.tgt_pieces] + ["</s>"],
            src_words=seg.src_words,
            tgt_words=seg.tgt_words,
            word_matrix=words,
            links=pair_links,
            segmentation=seg,
            aligner=pair_aligner,
        )
        for seg, matrix, words, pair_links, pair_aligner in zip(segmentations, attention, matrices, links, aligner)
    ]


def layer_scores(
    segmentations: Sequence[Segmentation],
    attention: Sequence[np.ndarray],
    gold: GoldAlignment,
    method: str,
    heads: Sequence[int] | None = None,
    threshold: float | None = None,
) -> list[AlignmentScores]:
    """Scores against ``gold`` of every decoder layer (same pairs, same order as ``gold``)."""
    n_layers, n_heads = attention[0].shape[:2]
    heads = list(range(n_heads)) if heads is None else list(heads)
    scores = []
    for layer in range(n_layers):
        _, links = word_links(segmentations, attention, method, layer, heads, threshold)
        scores.append(score_alignments(links, gold.sure, gold.possible))
    return scores


def select_layer(
    model: Transformer,
    tokenizer: Tokenizer,
    gold: GoldAlignment,
    method: str = DEFAULT_METHOD,
    heads: Sequence[int] | None = None,
    threshold: float | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> tuple[int, list[float]]:
    """The decoder layer with the lowest AER on ``gold`` (oriented as the model translates).

    Returns: (best layer, AER of each layer).
    """
    _check_choice(model, method, None, heads)
    segmentations, attention = attend(model, tokenizer, gold.src, gold.tgt, batch_size, device)
    aers = [s.aer for s in layer_scores(segmentations, attention, gold, method, heads, threshold)]
    return int(np.argmin(aers)), aers


def aer_report(
    model: Transformer,
    segmentations: Sequence[Segmentation],
    gold: GoldAlignment,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    supervised: bool = False,
) -> dict:
    """AER on a gold set (oriented as the model translates) for every method and layer.

    Args:
        supervised: the model trains with guided alignment: ``aer`` is then the supervised
            heads' (``supervised`` method), also given as ``aer_supervised``; with
            ``model.alignment.full_context`` that layer's ``aer_by_layer`` entries read the
            full-context pass too. A model with an aligner: ``aer`` is the aligner's, also
            given as ``aer_aligner``.

    Returns: ``{"aer": AER of the default method and layer, "aer_by_layer": {method: [AER of
    layer 0, 1, …] (all heads)}}`` (and ``aer_supervised``, ``aer_aligner``), rates in [0, 1].
    """
    layer, heads, full_context = supervised_heads(model) if supervised else (None, None, None)
    attention = segmented_attention(model, segmentations, batch_size, device, full_context_layer=full_context)
    by_layer = {
        method: [round(s.aer, 5) for s in layer_scores(segmentations, attention, gold, method)]
        for method in LAYER_METHODS
    }
    report = {"aer": by_layer[DEFAULT_METHOD][default_layer(len(model.decoder_layers))], "aer_by_layer": by_layer}
    if supervised:
        _, links = word_links(segmentations, attention, "supervised", layer, heads)
        report["aer"] = report["aer_supervised"] = round(score_alignments(links, gold.sure, gold.possible).aer, 5)
    if model.aligner is not None:
        aligner = segmented_aligner(model, segmentations, batch_size, device)
        _, links = aligner_word_links(segmentations, aligner, null=model.cfg.aligner.null)
        report["aer"] = report["aer_aligner"] = round(score_alignments(links, gold.sure, gold.possible).aer, 5)
    return report


def imitation_aer(
    model: Transformer,
    segmentations: Sequence[Segmentation],
    teacher: GoldAlignment,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> float:
    """AER against the links the model learnt from (its teacher's, as Sure links), on pairs
    it trained on: how well the aligner (or, without one, the supervised heads) fits them.

    A well-fitted aligner reproduces its teacher on its own training pairs; an AER far from 0
    there means it underfits, whatever its AER on a gold set.

    Returns: the AER, a rate in [0, 1].
    """
    if model.aligner is not None:
        aligner = segmented_aligner(model, segmentations, batch_size, device)
        _, links = aligner_word_links(segmentations, aligner, null=model.cfg.aligner.null)
    else:
        layer, heads, full_context = supervised_heads(model)
        attention = segmented_attention(model, segmentations, batch_size, device, full_context_layer=full_context)
        _, links = word_links(segmentations, attention, "supervised", layer, heads)
    return score_alignments(links, teacher.sure, teacher.possible).aer


def symmetrize_alignments(
    forward: Sequence[PairAlignment], reverse: Sequence[PairAlignment], heuristic: str
) -> list[PairAlignment]:
    """Combine src→tgt alignments with tgt→src ones of the same pairs (see :mod:`mt.alignment.symmetrize`).

    Args:
        reverse: alignments of the swapped pairs (the target text as source), so their links
            are (tgt_word, src_word) and are flipped here.

    Raises:
        ValueError: an unknown heuristic, or pairs whose words differ between the two lists.
    """
    results = []
    for k, (a, b) in enumerate(zip(forward, reverse, strict=True)):
        if (a.src_words, a.tgt_words) != (b.tgt_words, b.src_words):
            raise ValueError(f"pair {k}: the reverse alignment is of different sentences")
        flipped = sorted((i, j) for j, i in b.links)
        links = sorted(symmetrize(a.links, flipped, heuristic))
        results.append(dataclasses.replace(a, links=links, forward_links=a.links, reverse_links=flipped))
    return results
