"""Gold word alignments and alignment error rate (AER, Och & Ney 2003).

Links are ``(src_word, tgt_word)`` pairs of 0-based whitespace-word positions. A gold set has
sure links S and possible links P ⊇ S; for predicted links A, summed over the corpus:

    precision = |A ∩ P| / |A|      recall = |A ∩ S| / |S|
    AER = 1 − (|A ∩ S| + |A ∩ P|) / (|A| + |S|)      F1 = 2·precision·recall / (precision + recall)

(Och & Ney 2003, "A Systematic Comparison of Various Statistical Alignment Models", §5.)

Gold files in the common layout (lilt/alignment-scripts, awesome-align): ``NAME.src-tgt``
holds one ``SRC ||| TGT`` pair per line, words split by spaces; ``NAME.talp`` one line of
1-based links per pair, ``i-j`` sure, ``ipj`` (or ``i?j``) possible. ``NAME`` spells the two
languages, first side first: ``encs``, ``deen``, ``en-cs``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mt.errors import DataError

Link = tuple[int, int]
T = TypeVar("T")

_LINK = re.compile(r"^(\d+)([-p?])(\d+)$")


def format_pharaoh(links: Sequence[tuple[int, int]]) -> str:
    """``[(0, 0), (2, 1)]`` → ``"0-0 2-1"`` (source index first, 0-based)."""
    return " ".join(f"{i}-{j}" for i, j in links)


def parse_pharaoh(line: str) -> list[tuple[int, int]]:
    """``"0-0 2-1"`` → ``[(0, 0), (2, 1)]``.

    Raises:
        ValueError: a token that is not ``i-j`` with non-negative integers.
    """
    links = []
    for token in line.split():
        i, sep, j = token.partition("-")
        if not (sep and i.isdigit() and j.isdigit()):
            raise ValueError(f"not a Pharaoh link: {token!r}")
        links.append((int(i), int(j)))
    return links


def _parse_lines(path: str | Path, parse: Callable[[str], T]) -> list[T]:
    """``parse`` applied to each line of ``path``; a ValueError becomes a DataError naming ``FILE:LINE``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    parsed = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                parsed.append(parse(line))
            except ValueError as error:
                raise DataError(f"{path}:{number}: {error}") from None
    return parsed


def read_pharaoh(path: str | Path) -> list[list[tuple[int, int]]]:
    """The links of each line of a Pharaoh file (``i-j`` pairs, 0-based).

    Raises:
        DataError: the file is missing, or a line does not parse (named as ``FILE:LINE``).
    """
    return _parse_lines(path, parse_pharaoh)


def parse_links(line: str, one_based: bool = False, reverse: bool = False) -> tuple[set[Link], set[Link]]:
    """One line of links → (sure, possible), 0-based; possible includes sure.

    Args:
        line: ``i-j`` sure links and ``i?j`` / ``ipj`` possible links, separated by spaces.
        one_based: positions in ``line`` count from 1.
        reverse: swap the two sides (``i-j`` becomes ``(j, i)``).

    Raises:
        ValueError: a token that is not a link, or a position 0 when ``one_based``.
    """
    sure, possible = set(), set()
    for token in line.split():
        match = _LINK.match(token)
        if not match:
            raise ValueError(f"not a link: {token!r} (expected i-j, i?j or ipj)")
        i, j = int(match.group(1)), int(match.group(3))
        if one_based:
            if i == 0 or j == 0:
                raise ValueError(f"position 0 in {token!r}, but the links are 1-based")
            i, j = i - 1, j - 1
        link = (j, i) if reverse else (i, j)
        possible.add(link)
        if match.group(2) == "-":
            sure.add(link)
    return sure, possible


def read_links(path: str | Path, one_based: bool = False, reverse: bool = False) -> list[tuple[set[Link], set[Link]]]:
    """(sure, possible) links of each line of ``path`` (see :func:`parse_links`).

    Raises:
        DataError: the file is missing, or a line does not parse (named as ``FILE:LINE``).
    """
    return _parse_lines(path, lambda line: parse_links(line, one_based, reverse))


@dataclass
class GoldAlignment:
    """Sentence pairs with human word alignments, 0-based, ``(src_word, tgt_word)``.

    Attributes:
        src_lang, tgt_lang: language codes of the two sides.
        src, tgt: one text per pair, words separated by spaces.
        sure, possible: one set of links per pair; ``possible[k] ⊇ sure[k]``.
    """

    src_lang: str
    tgt_lang: str
    src: list[str]
    tgt: list[str]
    sure: list[set[Link]]
    possible: list[set[Link]]

    def __len__(self) -> int:
        return len(self.src)

    def reversed(self) -> GoldAlignment:
        """The same gold set with the two sides swapped."""
        flip = lambda sets: [{(j, i) for i, j in links} for links in sets]  # noqa: E731
        return GoldAlignment(self.tgt_lang, self.src_lang, self.tgt, self.src, flip(self.sure), flip(self.possible))

    def oriented(self, src_lang: str, tgt_lang: str) -> GoldAlignment:
        """This set with ``src_lang`` first, reversed if needed.

        Raises:
            ValueError: the set is not for this language pair.
        """
        if (self.src_lang, self.tgt_lang) == (src_lang, tgt_lang):
            return self
        if (self.tgt_lang, self.src_lang) == (src_lang, tgt_lang):
            return self.reversed()
        raise ValueError(f"the gold set is {self.src_lang}-{self.tgt_lang}, not {src_lang}-{tgt_lang}")


def gold_languages(name: str) -> tuple[str, str]:
    """``encs`` / ``en-cs`` / ``en_cs`` → ``("en", "cs")``.

    Raises:
        ValueError: the name does not spell two language codes.
    """
    match = re.fullmatch(r"([a-z]{2})([a-z]{2})|([a-z]{2,3})[-_]([a-z]{2,3})", name)
    if not match:
        raise ValueError(f"cannot tell the languages from the name {name!r}; name the files like encs.src-tgt")
    first, second = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
    return first, second


def load_gold(prefix: str | Path, src_lang: str | None = None, tgt_lang: str | None = None) -> GoldAlignment:
    """Load ``PREFIX.src-tgt`` and ``PREFIX.talp`` (1-based links) as a :class:`GoldAlignment`.

    ``prefix`` may also name either of the two files. The languages come from the file name
    (``encs`` → en, cs) unless given.

    Raises:
        DataError: a file missing or malformed, unequal line counts, a link past the end of
            its sentence, or a name that spells no languages (each named with ``FILE:LINE``).
    """
    prefix = Path(prefix)
    if prefix.suffix in (".src-tgt", ".talp"):
        prefix = prefix.with_suffix("")
    text_path, links_path = Path(f"{prefix}.src-tgt"), Path(f"{prefix}.talp")
    if src_lang is None or tgt_lang is None:
        try:
            src_lang, tgt_lang = gold_languages(prefix.name)
        except ValueError as error:
            raise DataError(f"{text_path}: {error}") from None
    if not text_path.is_file():
        raise DataError(f"{text_path}: no such file (a gold set is NAME.src-tgt + NAME.talp)")
    src, tgt = [], []
    with text_path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            sides = line.rstrip("\n").split(" ||| ")
            if len(sides) != 2:
                raise DataError(f"{text_path}:{number}: expected 'SRC ||| TGT'")
            src.append(sides[0].strip())
            tgt.append(sides[1].strip())
    links = read_links(links_path, one_based=True)
    if len(links) != len(src):
        raise DataError(f"{text_path} has {len(src)} pairs but {links_path} has {len(links)} lines")
    for number, (s, t, (_, possible)) in enumerate(zip(src, tgt, links), 1):
        n_src, n_tgt = len(s.split()), len(t.split())
        bad = [(i, j) for i, j in possible if i >= n_src or j >= n_tgt]
        if bad:
            i, j = bad[0]
            raise DataError(f"{links_path}:{number}: link {i + 1}-{j + 1} is outside a {n_src}×{n_tgt}-word pair")
    return GoldAlignment(src_lang, tgt_lang, src, tgt, [s for s, _ in links], [p for _, p in links])


@dataclass
class AlignmentScores:
    """Corpus-level alignment quality; all rates in [0, 1].

    Attributes:
        precision: |A ∩ P| / |A|.  recall: |A ∩ S| / |S|.  f1: their harmonic mean.
        aer: 1 − (|A ∩ S| + |A ∩ P|) / (|A| + |S|).
        n_pairs, n_predicted, n_sure, n_possible: counts (links summed over pairs).
    """

    precision: float
    recall: float
    f1: float
    aer: float
    n_pairs: int
    n_predicted: int
    n_sure: int
    n_possible: int


def score_alignments(
    predicted: Sequence[Iterable[Link]], sure: Sequence[set[Link]], possible: Sequence[set[Link]]
) -> AlignmentScores:
    """Precision, recall, F1 and AER of ``predicted`` against gold (Och & Ney 2003).

    ``possible`` is taken as P ∪ S, so a gold set that lists sure links only in S scores the
    same. An empty prediction has precision 0 (not undefined); empty gold, recall 0.

    Raises:
        ValueError: the three sequences differ in length.
    """
    if not len(predicted) == len(sure) == len(possible):
        raise ValueError(f"{len(predicted)} predicted lines but {len(sure)} gold lines")
    n_a = n_s = n_p = a_and_s = a_and_p = 0
    for links, s, p in zip(predicted, sure, possible):
        a, p = set(links), p | s
        n_a, n_s, n_p = n_a + len(a), n_s + len(s), n_p + len(p)
        a_and_s += len(a & s)
        a_and_p += len(a & p)
    precision = a_and_p / n_a if n_a else 0.0
    recall = a_and_s / n_s if n_s else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    aer = 1.0 - (a_and_s + a_and_p) / (n_a + n_s) if n_a + n_s else 0.0
    return AlignmentScores(precision, recall, f1, aer, len(sure), n_a, n_s, n_p)


def format_scores(scores: AlignmentScores) -> str:
    """Four lines ``precision: 81.25%`` … ``AER: 19.40%`` and a line of counts."""
    return "\n".join(
        [
            f"precision: {100 * scores.precision:.2f}%",
            f"recall: {100 * scores.recall:.2f}%",
            f"F1: {100 * scores.f1:.2f}%",
            f"AER: {100 * scores.aer:.2f}%",
            f"({scores.n_pairs} pairs, {scores.n_predicted} predicted, {scores.n_sure} sure and "
            f"{scores.n_possible} possible gold links)",
        ]
    )
