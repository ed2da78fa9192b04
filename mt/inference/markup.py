"""Inline markup (HTML or XML tags) carried from a source line to its translation.

``mt-translate --markup html|xml``: each line is parsed (:func:`parse`), its text without the
tags is translated, the source words are aligned to the translation's words, and the tags are
put back (:func:`transfer`: :func:`place`, then :func:`mt.inference.markup_render.render`) by
stack inheritance (Bergamot's ``src/translator/html.cpp``; Steffen & van Genabith 2021,
"TransIns: Document Translation with Markup Reinsertion", EMNLP demos): each target word
inherits the elements of the source words it is aligned to.

What is text and what is markup:

- **text**: character data and references, decoded for the model (``R&amp;D`` → ``R&D``,
  ``caf&eacute;`` → ``café``) as the parser reads them: in ``html`` mode the rules of
  :func:`html.unescape` (a bare ``&``, as in ``R&D`` or ``&foo;``, is text), in ``xml`` mode expat's.
  Words are whitespace words (:func:`mt.data.words.words_of`); in ``html`` mode ``<br>``,
  block-level tags and elements holding only whitespace also separate words (``a<br>b`` is two),
  in ``xml`` mode only the latter do.
- **elements** (a start tag and its end tag) cover the words they overlap: a tag inside a word
  covers the whole word, except that a tag between a word and its leading or trailing
  punctuation (``<b>Hello</b>,``) stays between them when the target word has such punctuation.
- **points**, carried verbatim to a word boundary and never translated: void and self-closing
  elements (``<br>``, ``<img …/>``), comments, CDATA sections, processing instructions,
  declarations (``xml``: the prolog, ``<?xml …?>`` and ``<!DOCTYPE …>``), ``<script>`` and
  ``<style>`` with their content, elements that hold no word (``<b></b>``, ``<td>&nbsp;</td>``),
  and in ``html`` mode an end tag that closes nothing or a start tag never closed (HTML
  tolerates both; ``xml`` mode rejects them).

How the text is written back (the spelling rule): characters the translation copies from the
source keep the source's bytes, occurrence by occurrence: a target word equal to a source word
it is linked to (the nearest), and the whitespace between two such words that follow each other
in the source, or at the line's ends where it equals the source's (``caf&eacute; caf&#233;``
stays so; ``R&D`` stays ``R&D``). There, tags and points that sat inside the source word or
whitespace go back to the same character, so links that copy the line (identity links over
``parse(line).text``) give it back byte for byte. All other text is the model's and is escaped only
where it must be to read back the same: ``<``, and an ``&`` that would start a reference
(``html``: ``&amp`` → ``&amp;amp``, ``AT&T`` stays; ``xml``: every ``&``, and ``>`` after ``]]``).

Guarantees, for any alignment: every tag of the source is in the output exactly once, byte for
byte (attributes untouched); elements stay paired and properly nested, and each start and end
tag keeps its partner (known by spelling and occurrence), so the output is well-formed when the
source is; the output's words are the translation's (its text too, but for whitespace that a
word-separating tag carries); no tag splits a word unless the source word it copies held it
(punctuation at its edges aside). :func:`markup_problems` checks the first two on any output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from mt.data.words import words_of
from mt.inference.markup_parse import (  # noqa: F401  (MODES, MarkupError, parse, tokenize: this module's API too)
    MODES,
    Link,
    Markup,
    MarkupError,
    parse,
    pair_tags,
    tokenize,
)
from mt.inference.markup_render import render

MAX_GAP = 1  # target words an element may bridge between two of its words (scripts/markup_eval.py: 1 ≈ 2 > 3)


# ----------------------------------------------------------------------------------- transfer
def _best_run(positions: list[int], max_gap: int) -> tuple[int, int] | None:
    """The run of sorted ``positions`` with most members, runs split at gaps over ``max_gap``."""
    runs: list[list[int]] = []
    for position in positions:
        if runs and position - runs[-1][-1] - 1 <= max_gap:
            runs[-1].append(position)
        else:
            runs.append([position])
    if not runs:
        return None
    best = max(runs, key=len)  # the first of equals
    return best[0], best[-1]


def _trim(votes: set[int], low: int, high: int) -> list[int]:
    inside = [j for j in votes if low <= j <= high]
    return [min(inside), max(inside)] if inside else [high + 1, high]  # empty: first > last


def place(
    markup: Markup, n_tgt_words: int, links: Iterable[Link], max_gap: int = MAX_GAP
) -> list[tuple[int, int] | None]:
    """The target words of each element: one contiguous run, inside its parent's, apart from its
    siblings'.

    Each target word votes for every element in the stacks of the source words it is linked to.
    An element takes its largest run of voting words, where up to ``max_gap`` other words
    between two of them join the run (TransIns's and Bergamot's gap filling; one run, so it is
    emitted once). Two sibling runs that overlap are cut where most votes stay on their own side.
    Children are placed within their parent's run.

    Args:
        links: ``(src_word, tgt_word)`` pairs, 0-based; out-of-range ones are ignored.

    Returns: per element of ``markup.elements``, its (first, last) target word, or None when no
        word carries it (its words vanished: emitted empty, see :func:`render`).
    """
    votes: list[set[int]] = [set() for _ in markup.elements]
    for i, j in links:
        if 0 <= i < len(markup.words) and 0 <= j < n_tgt_words:
            for element in markup.stacks[i]:
                votes[element].add(j)
    intervals: list[tuple[int, int] | None] = [None] * len(markup.elements)

    def place_children(node: int | None, low: int, high: int) -> None:
        claims = []
        for child in markup.children[node]:
            run = _best_run(sorted(j for j in votes[child] if low <= j <= high), max_gap)
            if run is not None:
                claims.append([run[0], run[1], child])
        kept: list[list[int]] = []  # disjoint runs; a cut only shrinks them, so a claim is checked against each
        for claim in sorted(claims):
            for other in sorted(kept):
                if claim[0] <= claim[1] and other[0] <= claim[1] and claim[0] <= other[1]:
                    _cut(*((other, claim) if other[0] <= claim[0] else (claim, other)), votes)
            kept = [run for run in kept if run[0] <= run[1]]
            if claim[0] <= claim[1]:
                kept.append(claim)
        for first, last, child in kept:
            intervals[child] = (first, last)
            place_children(child, first, last)

    place_children(None, 0, n_tgt_words - 1)
    return intervals


def _cut(before: list[int], after: list[int], votes: list[set[int]]) -> None:
    """Split two overlapping sibling runs [first, last, element] at the word that keeps most votes
    on their own side (ties: both keep words, then the later cut: the first run keeps them);
    trims both in place."""
    cuts = range(after[0], before[1] + 2)
    kept = [
        (sum(before[0] <= j < cut for j in votes[before[2]]), sum(cut <= j <= after[1] for j in votes[after[2]]))
        for cut in cuts
    ]
    cut = max(cuts, key=lambda c: (sum(kept[c - after[0]]), min(kept[c - after[0]]) > 0, c))
    before[0], before[1] = _trim(votes[before[2]], before[0], cut - 1)
    after[0], after[1] = _trim(votes[after[2]], max(cut, after[0]), after[1])


def transfer(markup: Markup, translation: str, links: Iterable[Link], max_gap: int = MAX_GAP) -> str:
    """The translation with ``markup``'s tags put back (:func:`place`, then :func:`render`).

    Args:
        translation: plain text whose whitespace words are the links' target words.
        links: ``(src_word, tgt_word)`` pairs, 0-based, over ``markup.words`` and the
            translation's whitespace words.
    """
    links = list(links)
    return render(markup, translation, place(markup, len(words_of(translation)[0]), links, max_gap), links)


# --------------------------------------------------------------------------------- checking
def markup_problems(source: str, output: str, mode: str) -> list[str]:
    """What ``output`` does wrong in carrying ``source``'s markup: tags missing or added (each tag
    compared byte for byte), or, when the tags are the same, a start or end tag paired in one and
    not in the other, each tag known by its spelling and occurrence (the second ``<p>``). Empty:
    the output holds every tag of the source exactly once, and is well-formed wherever the source was.

    Raises:
        MarkupError: ``source`` does not parse.
    """
    source_tokens = tokenize(source, mode)
    try:
        output_tokens = tokenize(output, mode)
    except MarkupError as error:
        return [f"the output does not parse: {error}"]
    source_tags = Counter(t.raw for t in source_tokens if t.kind != "text")
    output_tags = Counter(t.raw for t in output_tokens if t.kind != "text")
    problems = [f"missing {tag!r} ×{n}" for tag, n in (source_tags - output_tags).items()]
    problems += [f"added {tag!r} ×{n}" for tag, n in (output_tags - source_tags).items()]
    if not problems:
        source_paired, output_paired = _paired(source_tokens), _paired(output_tokens)
        problems += [
            f"{tag!r} #{n}: " + ("paired in the source, not in the output" if paired else "paired in the output only")
            for (tag, n), paired in source_paired.items()
            if paired != output_paired[tag, n]
        ]
    return problems


def _paired(tokens) -> dict[tuple[str, int], bool]:
    """Each start and end tag, known by its spelling and occurrence among the tags spelled the same
    (the second ``<p>``), → whether :func:`pair_tags` pairs it. (Tags spelled the same may trade
    partners: elements reordered.)"""
    pairs, _ = pair_tags(tokens)
    paired = set(pairs) | set(pairs.values())
    seen: Counter = Counter()
    status = {}
    for k, token in enumerate(tokens):
        if token.kind in ("start", "end") or token.stray:
            seen[token.raw] += 1
            status[token.raw, seen[token.raw]] = k in paired
    return status


# ------------------------------------------------------------------------- with the model
def align_and_transfer(
    model,
    tokenizer,
    markups: Sequence[Markup],
    translations: Sequence[str],
    method: str,
    batch_size: int = 32,
    device="cpu",
    max_gap: int = MAX_GAP,
    encoder_states: Sequence | None = None,
    teacher=None,
) -> tuple[list[str], dict]:
    """Align each parsed source's text to its translation with the model, then :func:`transfer`.

    Args:
        markups, translations: one translation per parsed line (the same line may come several
            times, once per hypothesis).
        method: the alignment method (:func:`mt.alignment.align.default_method` of the checkpoint).
        encoder_states: per pair, (source ids, encoder outputs) of the search, or None
            (:func:`mt.alignment.align.align`).
        teacher: the aligner adapts to the pairs (:mod:`mt.alignment.adapt`), or None.

    Returns: the translations with markup, and position → :class:`~mt.alignment.align.PairAlignment` for
        the pairs that have markup and words on both sides (the others need no links: a line
        without markup is not aligned at all).
    """
    from mt.alignment.align import align

    todo = [
        k
        for k, (markup, translation) in enumerate(zip(markups, translations))
        if (markup.elements or markup.points) and markup.words and translation.strip()
    ]
    alignments = align(
        model, tokenizer, [markups[k].text for k in todo], [translations[k] for k in todo],
        method=method, batch_size=batch_size, device=device, keep_attention=False,
        encoder_states=[encoder_states[k] for k in todo] if encoder_states is not None else None, teacher=teacher,
    ) if todo else []
    by_position = dict(zip(todo, alignments))
    outputs = [
        transfer(markup, translation, by_position[k].links if k in by_position else [], max_gap)
        for k, (markup, translation) in enumerate(zip(markups, translations))
    ]
    return outputs, by_position


class MarkupTransfer:
    """``--markup``: called by :func:`mt.inference.evaluate.translate_nbest` after each batch, it aligns the
    batch's hypotheses to their sources (reusing the search's encoder outputs) and puts each
    line's tags on every hypothesis."""

    def __init__(self, model, tokenizer, markups, batch_size: int, device: str, method: str, teacher=None):
        self.model, self.tokenizer, self.markups = model, tokenizer, markups
        self.batch_size, self.device, self.method, self.teacher = batch_size, device, method, teacher
        self.marked: dict[int, list[str]] = {}  # line index → its hypotheses with markup
        self.best: dict[int, object] = {}  # line index → alignment of its best hypothesis

    def __call__(self, indices, src_ids, encoder_states, hypotheses) -> None:
        pairs = [
            (index, row, h.text)
            for row, (index, line_hypotheses) in enumerate(zip(indices, hypotheses))
            if self.markups[index]
            for h in line_hypotheses
        ]
        lengths = (src_ids != self.model.pad_id).sum(1).tolist()  # (batch,) source ids with EOS
        encoder = [
            (src_ids[row, : lengths[row]].tolist(), [s[row, : lengths[row]] for s in encoder_states])
            for _, row, _ in pairs
        ]
        outputs, alignments = align_and_transfer(
            self.model, self.tokenizer, [self.markups[index] for index, _, _ in pairs], [text for _, _, text in pairs],
            self.method, self.batch_size, self.device, encoder_states=encoder, teacher=self.teacher,
        )  # fmt: skip
        for position, ((index, _, _), output) in enumerate(zip(pairs, outputs)):
            if index not in self.marked and position in alignments:
                self.best[index] = alignments[position]
            self.marked.setdefault(index, []).append(output)

    def results(self) -> tuple[list[list[str]], dict]:
        """Per line, every hypothesis with the line's tags (a line without hypotheses: its tags
        alone; a line that did not parse: ""), and line index → alignment of its best hypothesis."""
        marked = [
            self.marked.get(index) or [transfer(markup, "", []) if markup else ""]
            for index, markup in enumerate(self.markups)
        ]
        return marked, self.best
