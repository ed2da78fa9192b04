"""Symmetrization of two directional word alignments (Och & Ney 2003; Koehn et al. 2005).

Both inputs are ``(src_word, tgt_word)`` links of the same pair: ``forward`` from a
src→tgt model, ``reverse`` from a tgt→src model with its links already flipped to
(src, tgt) order.
"""

from __future__ import annotations

from collections.abc import Iterable

from mt.config import SYMMETRIZATION_HEURISTICS as HEURISTICS  # the schema names them, for data.alignments_symmetrize

Link = tuple[int, int]

# the 8 neighbours of a link, horizontal/vertical first (as in Moses' symal)
_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def grow_diag_final_and(forward: Iterable[Link], reverse: Iterable[Link]) -> set[Link]:
    """Koehn et al. (2005, "Edinburgh System Description for the 2005 IWSLT Speech Translation
    Evaluation"), as in Moses' ``grow-diag-final-and``.

    Start from the intersection; *grow-diag*: repeatedly add a union link that neighbours an
    accepted link (8 directions) when its source or its target word is still unaligned;
    *final-and*: add the remaining links of each direction whose source and target words
    are both unaligned.

    Returns: the symmetrized links.
    """
    forward, reverse = set(forward), set(reverse)
    union = forward | reverse
    links = forward & reverse
    src_aligned = {i for i, _ in links}
    tgt_aligned = {j for _, j in links}

    def accept(link: Link) -> None:
        links.add(link)
        src_aligned.add(link[0])
        tgt_aligned.add(link[1])

    grew = True
    while grew:
        grew = False
        for i, j in sorted(links):
            for di, dj in _NEIGHBOURS:
                candidate = (i + di, j + dj)
                if candidate in union and candidate not in links and (
                    candidate[0] not in src_aligned or candidate[1] not in tgt_aligned
                ):
                    accept(candidate)
                    grew = True
    for direction in (forward, reverse):
        for i, j in sorted(direction):
            if i not in src_aligned and j not in tgt_aligned:
                accept((i, j))
    return links


def symmetrize(forward: Iterable[Link], reverse: Iterable[Link], heuristic: str = "grow-diag-final-and") -> set[Link]:
    """Combine two directional alignments of one sentence pair.

    Args:
        heuristic: ``intersect`` (high precision), ``union`` (high recall) or
            ``grow-diag-final-and`` (in between; the usual choice).

    Raises:
        ValueError: an unknown heuristic (the message lists the valid ones).
    """
    if heuristic == "intersect":
        return set(forward) & set(reverse)
    if heuristic == "union":
        return set(forward) | set(reverse)
    if heuristic == "grow-diag-final-and":
        return grow_diag_final_and(forward, reverse)
    raise ValueError(f"unknown symmetrization {heuristic!r}; choose one of {', '.join(HEURISTICS)}")
