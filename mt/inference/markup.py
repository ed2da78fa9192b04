"""Inline markup (HTML or XML tags) carried from a source line to its translation.

``mt-translate --markup html|xml``: each line is parsed (:func:`parse`), its text without the
tags is translated, the source words are aligned to the translation's words, and the tags are
put back (:func:`transfer`) by stack inheritance (Bergamot's ``src/translator/html.cpp``;
Steffen & van Genabith 2021, "TransIns: Document Translation with Markup Reinsertion", EMNLP
demos): each target word inherits the elements of the source words it is aligned to.

What is text and what is markup:

- **text**: character data and references, decoded for the model (``&amp;`` → ``&``) and written
  back with the source's own spelling of each reference (``&eacute;`` stays ``&eacute;``);
  other ``&``, ``<``, ``>`` of the translation are escaped. Words are whitespace words
  (:func:`mt.data.words.words_of`); in ``html`` mode ``<br>`` and block-level tags also separate
  words (``a<br>b`` is two), in ``xml`` mode no tag does.
- **elements** (a start tag and its end tag) cover the words they overlap: a tag inside a word
  covers the whole word, except that a tag between a word and its leading or trailing
  punctuation (``<b>Hello</b>,``) stays between them when the target word has such punctuation.
- **points**, carried verbatim to a word boundary and never translated: void and self-closing
  elements (``<br>``, ``<img …/>``), comments, CDATA sections, processing instructions,
  declarations, ``<script>`` and ``<style>`` with their content, elements that hold no word
  (``<b></b>``, ``<td>&nbsp;</td>``), and in ``html`` mode an end tag that closes nothing or a
  start tag never closed (HTML tolerates both; ``xml`` mode rejects them).

Guarantees, for any alignment: every tag of the source is in the output exactly once, byte for
byte (attributes untouched); elements stay paired and properly nested, so the output is
well-formed when the source is; the output's text is the translation; no tag splits a word
(punctuation at its edges aside). :func:`markup_problems` checks the first three on any output.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Sequence

from mt.inference.markup_parse import (  # noqa: F401  (MODES, MarkupError, parse, tokenize: this module's API too)
    MODES,
    Link,
    Markup,
    MarkupError,
    parse,
    pair_tags,
    tokenize,
    word_edges,
)
from mt.data.words import words_of

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
        kept: list[list[int]] = []
        for claim in sorted(claims):
            while kept and claim[0] <= claim[1] and claim[0] <= kept[-1][1]:
                _cut(kept[-1], claim, votes)
                if kept[-1][0] > kept[-1][1]:
                    kept.pop()
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


def _escape(text: str, spellings: dict[str, str]) -> str:
    """``text`` as markup: the source's spelling of each reference, else ``&``, ``<``, ``>`` escaped."""
    out, k = [], 0
    keys = sorted(spellings, key=len, reverse=True)
    while k < len(text):
        key = next((key for key in keys if text.startswith(key, k)), None)
        if key is None:
            out.append(html.escape(text[k], quote=False))
            k += 1
        else:
            out.append(spellings[key])
            k += len(key)
    return "".join(out)


def render(markup: Markup, translation: str, intervals: Sequence[tuple[int, int] | None], links: Iterable[Link]) -> str:
    """Write the translation with the elements on their target words and every point in place.

    Tags come from diffing the element stacks of consecutive target words: at each boundary the
    ending elements close (innermost first) before the whitespace and the starting ones open
    (outermost first) after it; a tag that sat between a source word and its punctuation sits
    between the target word and its punctuation, if it has some. Where points go:
    :func:`_points_at`.

    Args:
        intervals: from :func:`place`.  links: the same links, for where points go.
    """
    elements = markup.elements
    words, spans = words_of(translation)
    n = len(words)
    starts_at: dict[int, list[int]] = {}
    ends_at: dict[int, list[int]] = {}
    for index, interval in enumerate(intervals):
        if interval is not None:
            starts_at.setdefault(interval[0], []).append(index)
            ends_at.setdefault(interval[1] + 1, []).append(index)
    points_at = _points_at(markup, intervals, links, n)
    # punctuation split off by a tag: trails[k] characters end word k - 1, leads[k] start word k
    trails = [0] + [word_edges(words[k - 1])[1] if any(elements[e].close_inside for e in ends_at.get(k, [])) else 0
                    for k in range(1, n + 1)]
    leads = [word_edges(words[k])[0] if any(elements[e].open_inside for e in starts_at.get(k, [])) else 0 for k in range(n)]
    escape = lambda text: _escape(text, markup.spellings)  # noqa: E731
    out = []
    for k in range(n + 1):
        ending = sorted(ends_at.get(k, []), key=lambda e: -elements[e].depth)  # innermost first
        starting = sorted(starts_at.get(k, []), key=lambda e: elements[e].depth)  # outermost first
        # the tags inside one between a word and its punctuation go there too
        inside_closes = max((c + 1 for c, e in enumerate(ending) if elements[e].close_inside), default=0)
        inside_closes = inside_closes if trails[k] else 0
        inside_opens = min((c for c, e in enumerate(starting) if elements[e].open_inside), default=len(starting))
        inside_opens = inside_opens if k < n and leads[k] else len(starting)
        before, after = _around_tags(points_at.get(k, []), ending, starting, k == 0, k == n, len(markup.text))
        for c, element in enumerate(ending):
            if c == inside_closes and c > 0:
                out.append(escape(words[k - 1][-trails[k] :]))
            out += [*before[c], elements[element].end]
        if inside_closes == len(ending) and inside_closes > 0:
            out.append(escape(words[k - 1][-trails[k] :]))
        out += before[len(ending)]
        out.append(escape(translation[spans[k - 1][1] if k > 0 else 0 : spans[k][0] if k < n else len(translation)]))
        for c, element in enumerate(starting):
            out += after[c]
            if c == inside_opens:
                out.append(escape(words[k][: leads[k]]))
            out.append(elements[element].start)
        out += after[len(starting)]
        if k < n:
            lead = leads[k] if inside_opens < len(starting) else 0
            out.append(escape(words[k][lead : len(words[k]) - trails[k + 1]]))
    return "".join(out)


def _points_at(markup: Markup, intervals, links: Iterable[Link], n_tgt_words: int) -> dict[int, list[tuple]]:
    """Where each point goes: target boundary k (before target word k) → its points in source order,
    as (text, ancestor elements, glued to the word before it, plain-text offset).

    Points are the source's points and the elements whose words all vanished (written empty with
    their points and children, where they started). A point goes before the first target word
    linked to a source word after it (Bergamot's rule), moved inside its parent element's words.
    """
    elements = markup.elements
    source_of = [None] * n_tgt_words  # the first source word of each target word
    for i, j in links:
        if 0 <= i < len(markup.words) and 0 <= j < n_tgt_words and (source_of[j] is None or i < source_of[j]):
            source_of[j] = i

    def ancestors(element: int | None) -> set[int]:
        chain = set()
        while element is not None:
            chain.add(element)
            element = elements[element].parent
        return chain

    def skeleton(index: int) -> str:
        inner = [(elements[c].order, skeleton(c)) for c in markup.children[index]]
        inner += [(p.order, p.raw) for p in markup.points if p.parent == index]
        return elements[index].start + "".join(text for _, text in sorted(inner)) + elements[index].end

    items = [(p.order, p.raw, p.offset, p.parent, None) for p in markup.points if p.parent is None or intervals[p.parent]]
    items += [
        (e.order, skeleton(k), e.begin, e.parent, e.first if e.first <= e.last else None)
        for k, e in enumerate(elements)
        if intervals[k] is None and (e.parent is None or intervals[e.parent] is not None)
    ]
    at: dict[int, list[tuple]] = {}
    for _, text, offset, parent, word in sorted(items, key=lambda item: item[0]):
        boundary = sum(begin < offset for begin, _ in markup.spans) if word is None else word  # source words before it
        if boundary <= 0:
            slot = 0
        elif boundary >= len(markup.words):
            slot = n_tgt_words
        else:
            slot = next((j for j, i in enumerate(source_of) if i is not None and i >= boundary), n_tgt_words)
        if parent is not None:
            slot = min(max(slot, intervals[parent][0]), intervals[parent][1] + 1)
        glued = offset > 0 and not markup.text[offset - 1].isspace()
        at.setdefault(slot, []).append((text, ancestors(parent), glued, offset))
    return at


def _around_tags(points, ending, starting, line_start: bool, line_end: bool, text_length: int):
    """Points of one boundary among its tags: ``before[c]`` go just before ``ending[c]``'s end
    tag (``before[-1]``: after them all, before the whitespace), ``after[c]`` just before
    ``starting[c]``'s start tag (``after[-1]``: after them all). A point stays inside its
    ancestors; otherwise it goes before the whitespace when it was glued to the word before it,
    after it when not; at the line's ends it keeps its side of the line's own whitespace."""
    before: list[list[str]] = [[] for _ in range(len(ending) + 1)]
    after: list[list[str]] = [[] for _ in range(len(starting) + 1)]
    for text, chain, glued, offset in points:
        closing = [c for c, e in enumerate(ending) if e in chain]
        opening = [c for c, e in enumerate(starting) if e in chain]
        if closing:
            before[closing[0]].append(text)
        elif opening:
            after[opening[-1] + 1].append(text)
        elif line_end:
            (after[0] if offset >= text_length else before[-1]).append(text)
        elif line_start:
            (before[0] if offset == 0 else after[0]).append(text)
        else:
            (before[-1] if glued else after[0]).append(text)
    return before, after


# --------------------------------------------------------------------------------- checking
def markup_problems(source: str, output: str, mode: str) -> list[str]:
    """What ``output`` does wrong in carrying ``source``'s markup: tags missing or added (each tag
    compared byte for byte), or tags paired in the source that no longer pair. Empty: the output
    holds every tag of the source exactly once, and is well-formed wherever the source was.

    Raises:
        MarkupError: ``source`` does not parse.
    """
    source_tokens = tokenize(source, mode)
    try:
        output_tokens = tokenize(output, mode)
    except MarkupError as error:
        return [f"the output does not parse: {error}"]
    source_unpaired = Counter(source_tokens[k].raw for k in pair_tags(source_tokens)[1])
    output_unpaired = Counter(output_tokens[k].raw for k in pair_tags(output_tokens)[1])
    source_tags = Counter(t.raw for t in source_tokens if t.kind != "text")
    output_tags = Counter(t.raw for t in output_tokens if t.kind != "text")
    problems = [f"missing {tag!r} ×{n}" for tag, n in (source_tags - output_tags).items()]
    problems += [f"added {tag!r} ×{n}" for tag, n in (output_tags - source_tags).items()]
    problems += [f"no longer paired: {tag!r} ×{n}" for tag, n in (output_unpaired - source_unpaired).items()]
    return problems


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
) -> tuple[list[str], dict]:
    """Align each parsed source's text to its translation with the model, then :func:`transfer`.

    Args:
        markups, translations: one translation per parsed line (the same line may come several
            times, once per hypothesis).
        method: the alignment method (:func:`mt.alignment.align.default_method` of the checkpoint).
        encoder_states: per pair, (source ids, encoder outputs) of the search, or None
            (:func:`mt.alignment.align.align`).

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
        encoder_states=[encoder_states[k] for k in todo] if encoder_states is not None else None,
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

    def __init__(self, model, tokenizer, markups, batch_size: int, device: str, method: str):
        self.model, self.tokenizer, self.markups = model, tokenizer, markups
        self.batch_size, self.device, self.method = batch_size, device, method
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
            self.method, self.batch_size, self.device, encoder_states=encoder,
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
