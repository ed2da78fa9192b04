"""The aligner adapts its lexicon to the text it aligns, with eflomal as the unsupervised part.

The aligner's lexicon (:class:`mt.model.aligner.Lexicon`) holds the teacher's link counts of
the training pairs only; on new text its rare words have no counts and the frozen states know
little of them. eflomal (Östling & Tiedemann 2016) does what a statistical aligner does on new
text: it re-estimates its lexicon on that very text. Here eflomal aligns the new pairs with
priors learnt from the training links (eflomal's ``makepriors`` route; the align stage stores
them in its checkpoints, so no training text is needed), the two directions are symmetrized as
the stage's links were (``data.alignments_symmetrize``), the links' counts are added to the
lexicon's for those pairs (:meth:`mt.model.aligner.Lexicon.extra_counts`), and the aligner
aligns with that lexicon. The translation model and the aligner's weights are untouched.

A pair aligned this way counts its own teacher links, as each training pair's counts held its
own in training (:func:`mt.model.aligner.count_links`); a new pair's count ``Teacher.weight``
(8) times, which a dev set chose over once (docs/results/alignment.md). The links given out
then combine the adapted aligner's with eflomal's of the same run, grow-diag-final-and
(Koehn et al. 2003) with the aligner's as the forward direction (``Teacher.links``): on the
same dev set ahead of the aligner's alone, of the intersection and of the union. Where a
reverse model's links are symmetrized with them, each direction gives the links its aligner
and eflomal agree on (the intersection), and the symmetrization combines the directions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib.util
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from mt.alignment.symmetrize import HEURISTICS, symmetrize
from mt.alignment.targets import (
    piece_owners,
    piece_to_word_links,
    run_eflomal,
    segmentation_piece_links,
    unit_tokens,
)
from mt.data.tokenizer import Tokenizer
from mt.data.words import Segmentation
from mt.model.aligner import count_links
from mt.model.transformer import Transformer

log = logging.getLogger(__name__)

# decided on CzEnAli (docs/results/alignment.md, "Adapting to new text")
MIN_PAIRS = 1  # fewer pairs than this at once are aligned without adapting
WEIGHT = 8.0  # each new pair's links count this many times
# the links given out (Teacher.links): auto = the aligner's combined with the teacher's by
# grow-diag-final-and, or their intersection where a reverse model's links are symmetrized with them
LINKS = "auto"
LINK_CHOICES = ("auto", "aligner", *HEURISTICS)
AUTO_LINKS, AUTO_LINKS_SYMMETRIZED = "grow-diag-final-and", "intersect"


@dataclass(frozen=True)
class Teacher:
    """How the aligner's training links were made, enough to make them for new pairs.

    Attributes:
        priors: eflomal's priors file learnt from the training links, gzip-compressed
            (:func:`mt.alignment.targets.eflomal_priors`).
        unit: what eflomal aligned, ``word`` or ``piece`` (``data.alignments_unit``).
        symmetrize: how the two directions were combined (``data.alignments_symmetrize``).
        weight: how many times each new pair's links count (not stored: ``mt-align --adapt-weight``,
            or ``dataclasses.replace(translator.teacher, weight=W)``).
        links: the links given out (not stored: ``mt-align --adapt-links``): ``aligner``, the
            adapted aligner's; or a heuristic of :data:`mt.alignment.symmetrize.HEURISTICS`
            combining them with the teacher's links of the same pairs, the aligner's taken as
            the forward direction (``intersect``: the links both make); ``auto`` (default):
            ``grow-diag-final-and``, but ``intersect`` where the links are then symmetrized with
            a reverse model's (:meth:`for_symmetrizing`). The word matrices stay the aligner's.
    """

    priors: bytes
    unit: str
    symmetrize: str
    weight: float = WEIGHT
    links: str = LINKS
    _lines: list[str] = field(default_factory=list, init=False, repr=False, compare=False)

    def state(self) -> dict:
        """Plain data for a checkpoint's ``alignment_teacher``."""
        return {"priors": self.priors, "unit": self.unit, "symmetrize": self.symmetrize}

    @classmethod
    def from_state(cls, state: dict | None) -> Teacher | None:
        """Inverse of :meth:`state`; None for a checkpoint without one."""
        return cls(state["priors"], state["unit"], state["symmetrize"]) if state else None

    def for_symmetrizing(self) -> Teacher:
        """This teacher for links that a reverse model's will be symmetrized with: ``auto`` links
        become the intersection of the aligner's and eflomal's (CzEnAli, 1,191-update bases, both
        directions symmetrized by grow-diag-final-and: 21.30 AER on the first 2,000 pairs against
        21.85 for the aligner's alone; each direction's grow-diag-final-and, 24.29 on all pairs,
        adds too many links; docs/results/alignment.md)."""
        return dataclasses.replace(self, links=AUTO_LINKS_SYMMETRIZED) if self.links == "auto" else self

    def priors_lines(self) -> list[str]:
        """The priors file's lines (decompressed once)."""
        if not self._lines:
            self._lines.extend(gzip.decompress(self.priors).decode().splitlines(keepends=True))
        return self._lines


def teacher_piece_links(
    teacher: Teacher, tokenizer: Tokenizer, segmentations: Sequence[Segmentation], src_texts: Sequence[str],
    tgt_texts: Sequence[str],
) -> list[np.ndarray]:
    """eflomal's symmetrized links of the pairs, aligned with the teacher's priors, as piece links.

    Args:
        segmentations: the pairs as :func:`mt.data.words.segment` cut them (pieces past the
            model's length get no links).
        src_texts, tgt_texts: their texts.

    Returns: per pair, (n_links, 2) int64 (src_piece, tgt_piece) positions in its segmentation.

    Raises:
        ConfigError: eflomal is not installed.
    """
    return _piece_links(teacher, segmentations, _unit_links(teacher, tokenizer, src_texts, tgt_texts))


def teacher_word_links(
    teacher: Teacher, tokenizer: Tokenizer, src_texts: Sequence[str], tgt_texts: Sequence[str]
) -> list[list[tuple[int, int]]]:
    """The teacher alone on the pairs: eflomal's symmetrized links from the priors, as sorted
    0-based ``(src_word, tgt_word)`` links (piece links become the links of their words).

    Raises:
        ConfigError: eflomal is not installed.
    """
    return _word_links(teacher, tokenizer, src_texts, tgt_texts, _unit_links(teacher, tokenizer, src_texts, tgt_texts))


def _piece_links(teacher: Teacher, segmentations: Sequence[Segmentation], links: list) -> list[np.ndarray]:
    out = []
    for seg, pair in zip(segmentations, links):
        if teacher.unit == "word":
            out.append(segmentation_piece_links(seg, pair).astype(np.int64))
        else:  # pieces as the tokenizer cut them, minus those the segmentation cut off
            kept = [(s, t) for s, t in sorted(pair) if s < len(seg.src_pieces) and t < len(seg.tgt_pieces)]
            out.append(np.array(kept, dtype=np.int64).reshape(-1, 2))
    return out


def _word_links(
    teacher: Teacher, tokenizer: Tokenizer, src_texts: Sequence[str], tgt_texts: Sequence[str], links: list
) -> list[list[tuple[int, int]]]:
    if teacher.unit == "word":
        return [sorted(pair) for pair in links]
    return [
        sorted(piece_to_word_links(np.array(sorted(pair), dtype=np.int64).reshape(-1, 2), *piece_owners(tokenizer, s, t)))
        for pair, s, t in zip(links, src_texts, tgt_texts)
    ]


def _unit_links(teacher: Teacher, tokenizer: Tokenizer, src_texts: Sequence[str], tgt_texts: Sequence[str]) -> list:
    forward, reverse = run_eflomal(*unit_tokens(tokenizer, src_texts, tgt_texts, teacher.unit), teacher.priors_lines())
    return [symmetrize(f, r, teacher.symmetrize) for f, r in zip(forward, reverse)]


def teacher_counts(
    model: Transformer, tokenizer: Tokenizer, links: Sequence[np.ndarray], segmentations: Sequence[Segmentation]
) -> tuple:
    """:func:`mt.model.aligner.count_links` of the pairs' piece links (:func:`teacher_piece_links`),
    keyed as the model's lexicon, each counted once."""
    return count_links(
        [[p.id for p in seg.src_pieces] for seg in segmentations],
        [[p.id for p in seg.tgt_pieces] for seg in segmentations],
        links, tokenizer.eos_id, model.aligner.lexicon.tgt_vocab, model.cfg.aligner.null,
    )  # fmt: skip


@contextlib.contextmanager
def adapted(
    model: Transformer, tokenizer: Tokenizer, teacher: Teacher | None, segmentations: Sequence[Segmentation],
    src_texts: Sequence[str], tgt_texts: Sequence[str], min_pairs: int = MIN_PAIRS,
) -> Iterator[list[list[tuple[int, int]]] | None]:
    """Within the block, the aligner's lexicon also counts eflomal's links of these pairs,
    ``teacher.weight`` times each.

    Nothing changes (and the block gets None) without a teacher, for a model whose aligner has
    no lexicon, or for fewer than ``min_pairs`` pairs.

    Args:
        teacher: the checkpoint's (:class:`Teacher`), or None.
        segmentations, src_texts, tgt_texts: the pairs to align, as :func:`teacher_piece_links`.

    Yields: the teacher's links of the pairs as :func:`teacher_word_links` gives them (the same
        eflomal run as the counts: for ``teacher.links``), or None where nothing was adapted.

    Raises:
        ConfigError: eflomal is not installed.
    """
    lexicon = model.aligner.lexicon if model.aligner is not None else None
    if teacher is None or lexicon is None or len(segmentations) < min_pairs or not segmentations:
        yield None
        return
    started = time.perf_counter()
    unit_links = _unit_links(teacher, tokenizer, src_texts, tgt_texts)
    counts = teacher_counts(model, tokenizer, _piece_links(teacher, segmentations, unit_links), segmentations)
    log.info("adapted the aligner's lexicon to %d pairs in %.1f s", len(segmentations), time.perf_counter() - started)
    keys, pair_counts, source_keys, source_counts = counts
    with lexicon.extra_counts(keys, pair_counts * teacher.weight, source_keys, source_counts * teacher.weight):
        yield _word_links(teacher, tokenizer, src_texts, tgt_texts, unit_links)


def combined_links(
    teacher: Teacher,
    aligner_links: Sequence[Sequence[tuple[int, int]]],
    teacher_links: Sequence[Sequence[tuple[int, int]]],
) -> list[list[tuple[int, int]]]:
    """The links given out under ``teacher.links``: the aligner's as they are (``aligner``), or
    combined with the teacher's by that heuristic (``auto``: grow-diag-final-and), the aligner's
    as the forward direction (:func:`mt.alignment.symmetrize.symmetrize`). All 0-based
    ``(src_word, tgt_word)``, sorted."""
    links = AUTO_LINKS if teacher.links == "auto" else teacher.links
    if links == "aligner":
        return [sorted(pair) for pair in aligner_links]
    return [sorted(symmetrize(a, t, links)) for a, t in zip(aligner_links, teacher_links)]


def eflomal_installed() -> bool:
    """Whether eflomal can be imported (``pip install -e ".[baselines]"``)."""
    return importlib.util.find_spec("eflomal") is not None
