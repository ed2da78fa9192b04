"""Writing a translation with a parsed line's markup (:func:`render`, the second half of
:func:`mt.inference.markup.transfer`): the tags on their target words, the points at their
boundaries, and the text spelled as :mod:`mt.inference.markup`'s docstring says (copies of the
source as the source wrote them, the model's text escaped only where it must be).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import accumulate
from typing import NamedTuple

from mt.data.words import words_of
from mt.inference.markup_parse import Element, Link, Markup, html_decode, html_reference, word_edges


def _escape(text: str, mode: str) -> str:
    """Translated ``text`` as markup that reads back as ``text``, escaping only what must be: ``<``,
    and ``&`` where a reference would be read (``html``: ``&amp`` or ``&eacute;``, not ``R&D``; ``xml``:
    every ``&``, and ``>`` after ``]]``)."""
    out = []
    for k, char in enumerate(text):
        if char == "<":
            char = "&lt;"
        elif char == "&" and (mode == "xml" or html_reference(text, k) is not None):
            char = "&amp;"
        elif char == ">" and mode == "xml" and text.endswith("]]", 0, k):
            char = "&gt;"
        out.append(char)
    return "".join(out)


def _source_spelling(markup: Markup, begin: int, end: int, separated: bool) -> str | None:
    """``markup.text[begin:end]`` as the source wrote it, or None where that cannot be cut out
    of the source: a reference straddles an end, the piece would read back otherwise (``html``),
    or it holds a space that only a separating tag stood for and ``separated`` is False (no
    such tag where it goes)."""
    raw, read = [], []  # the spelling, and the text it must read back as (without such spaces)
    for piece_begin, piece_end, spelling in markup.spelling:
        text = markup.text[piece_begin:piece_end]
        if piece_end <= begin or piece_begin >= end:
            continue
        if text == spelling:  # literal characters: any part of them
            raw.append(spelling[max(begin, piece_begin) - piece_begin : min(end, piece_end) - piece_begin])
            read.append(raw[-1])
        elif not (begin <= piece_begin and piece_end <= end) or (not spelling and not separated):
            return None
        else:
            raw.append(spelling)
            read.append(text if spelling else "")
    spelled = "".join(raw)
    return spelled if markup.mode != "html" or html_decode(spelled) == "".join(read) else None


def _carried(markup: Markup, translation: str, links: list[Link]) -> tuple[dict[tuple[int, int], int], dict[int, int]]:
    """The translation's character ranges that are copies of the source: its words equal to a
    source word they are linked to (the nearest), and the whitespace between two such words that
    follow each other in the source, and at the line's ends, where it equals the source's.

    Returns: (begin, end) in the translation → begin of the same characters in ``markup.text``,
        and target word → the source word it copies.
    """
    words, spans = words_of(translation)
    source_spans = markup.spans
    copied: dict[int, int] = {}  # target word → source word
    for j, word in enumerate(words):
        equal = [i for i, k in links if k == j and 0 <= i < len(markup.words) and markup.words[i] == word]
        if equal:
            copied[j] = min(equal, key=lambda i: (abs(i - j), i))
    carried = {spans[j]: source_spans[i][0] for j, i in copied.items()}
    gaps = [((0, spans[0][0] if spans else len(translation)), 0)]
    if spans:
        gaps.append(((spans[-1][1], len(translation)), source_spans[-1][1] if source_spans else 0))
    for j in range(1, len(words)):
        if j - 1 in copied and j in copied and copied[j] == copied[j - 1] + 1:
            gaps.append(((spans[j - 1][1], spans[j][0]), source_spans[copied[j - 1]][1]))
    for (begin, end), source_begin in gaps:
        if markup.text[source_begin : source_begin + end - begin] == translation[begin:end]:
            carried[begin, end] = source_begin
    return carried, copied


def render(markup: Markup, translation: str, intervals: Sequence[tuple[int, int] | None], links: Iterable[Link]) -> str:
    """Write the translation with the elements on their target words and every point in place.

    Tags come from diffing the element stacks of consecutive target words: at each boundary the
    ending elements close (innermost first) before the whitespace and the starting ones open
    (outermost first) after it; a tag that sat between a source word and its punctuation sits
    between the target word and its punctuation, if it has some. Where points go:
    :func:`_points_at`; what each boundary holds: :func:`_layout`, written by
    :class:`_BoundaryWriter`, each target word after its boundary by :func:`_write_word`.

    Args:
        intervals: from :func:`place`.  links: the same links, for where points go.
    """
    links = list(links)
    words, spans = words_of(translation)
    carried, copied = _carried(markup, translation, links)
    starts_at, ends_at = _tag_boundaries(intervals)
    inside = _inside_words(markup, intervals, copied, spans, starts_at, ends_at)
    points_at = _points_at(markup, intervals, links, len(words), copied, inside)
    layout = _layout(markup, words, spans, len(translation), starts_at, ends_at, points_at, carried)
    spell = partial(_spell, markup, translation, carried)
    out: list[str] = []
    for k, boundary in enumerate(layout):
        _BoundaryWriter(out, spell, markup.elements, boundary).write()
        if k < len(words):
            _write_word(out, spell, spans[k], boundary.lead, layout[k + 1].trail, inside.get(k, []))
    return "".join(out)


def _spell(markup: Markup, translation: str, carried: dict[tuple[int, int], int], begin: int, end: int,
           separated: bool = False) -> str:
    """``translation[begin:end]`` as markup: the source's spelling of a copy (``carried``: from
    :func:`_carried`; ``separated``: as :func:`_source_spelling`), else escaped."""
    for (copy_begin, copy_end), source_begin in carried.items():
        if copy_begin <= begin and end <= copy_end:
            source = source_begin + begin - copy_begin
            spelled = _source_spelling(markup, source, source + end - begin, separated)
            if spelled is not None:
                return spelled
    return _escape(translation[begin:end], markup.mode)


def _tag_boundaries(intervals: Sequence[tuple[int, int] | None]) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """The placed elements by target boundary (boundary k: before target word k).

    Returns: starts_at: boundary k → the elements whose first target word is k, and ends_at:
        boundary k → those whose last target word is k - 1, each in element order.
    """
    starts_at: dict[int, list[int]] = {}
    ends_at: dict[int, list[int]] = {}
    for index, interval in enumerate(intervals):
        if interval is not None:
            starts_at.setdefault(interval[0], []).append(index)
            ends_at.setdefault(interval[1] + 1, []).append(index)
    return starts_at, ends_at


class _Boundary(NamedTuple):
    """What boundary k holds: the tags and points between target words k - 1 and k (:func:`_layout`).

    Points are tuples as :func:`_points_at` gives them.

    Attributes:
        ending: the elements whose end tag goes here, innermost first.
        starting: the elements whose start tag goes here, outermost first.
        before, after: the points among those tags, as :func:`_around_tags` gives them, less ``within``.
        inside_closes: ``ending[:inside_closes]`` close between word k - 1 and its trailing
            punctuation (its last ``trail`` characters; 0: none do).
        inside_opens: ``starting[inside_opens:]`` open between word k's leading punctuation
            (``lead`` characters) and the rest of it (``len(starting)``: none do).
        gap: the whitespace between the words, [begin, end) in the translation (at the line's
            ends: from its start, to its end).
        source_gap: where that whitespace begins in ``markup.text`` if it is a copy of the source's
            (:func:`_carried`), else None.
        within: the points outside the tags that sat inside that copied whitespace.
        trail, lead: the characters of word k - 1's trailing and of word k's leading punctuation
            that the tags split off (0: none; ``lead`` is 0 unless ``inside_opens < len(starting)``).
        separated: a tag or point here separates words, so a space that only such a tag stood for
            in the source may be spelled as the source did: not at all (:func:`_source_spelling`).
    """

    ending: list[int]
    starting: list[int]
    before: list[list[tuple]]
    after: list[list[tuple]]
    inside_closes: int
    inside_opens: int
    gap: tuple[int, int]
    source_gap: int | None
    within: list[tuple]
    trail: int
    lead: int
    separated: bool


def _layout(markup: Markup, words: list[str], spans: list[tuple[int, int]], text_length: int,
            starts_at: dict[int, list[int]], ends_at: dict[int, list[int]], points_at: dict[int, list[tuple]],
            carried: dict[tuple[int, int], int]) -> list[_Boundary]:
    """Every boundary's tags and points: boundary k (before target word k) for k = 0 … len(words).

    Args:
        words, spans: the translation's words and their character spans; text_length: its length.
        starts_at, ends_at: from :func:`_tag_boundaries`, less the tags inside words (:func:`_inside_words`).
        points_at: from :func:`_points_at`.  carried: from :func:`_carried`.
    """
    elements, n = markup.elements, len(words)
    layout = []
    for k in range(n + 1):
        ending = sorted(ends_at.get(k, []), key=lambda e: -elements[e].depth)  # innermost first
        starting = sorted(starts_at.get(k, []), key=lambda e: elements[e].depth)  # outermost first
        before, after = _around_tags(points_at.get(k, []), ending, starting, k == 0, k == n, len(markup.text))
        # punctuation split off by a tag: trail characters end word k - 1, lead characters start word k
        trail = word_edges(words[k - 1])[1] if k > 0 and any(elements[e].close_inside for e in ending) else 0
        lead = word_edges(words[k])[0] if k < n and any(elements[e].open_inside for e in starting) else 0
        # the tags inside one between a word and its punctuation go there too, unless a point that
        # separates words would land there and split the word (a whitespace-only element)
        inside_closes = max((c + 1 for c, e in enumerate(ending) if elements[e].close_inside), default=0)
        if any(point[4] for c in range(inside_closes) for point in before[c]):
            trail = 0
        inside_closes = inside_closes if trail else 0
        inside_opens = min((c for c, e in enumerate(starting) if elements[e].open_inside), default=len(starting))
        if any(point[4] for c in range(inside_opens + 1, len(starting) + 1) for point in after[c]):
            lead = 0
        inside_opens = inside_opens if lead else len(starting)
        # a copy of the source's whitespace keeps the points outside the tags where they were in it
        gap = (spans[k - 1][1] if k > 0 else 0, spans[k][0] if k < n else text_length)
        source_gap = carried.get(gap)
        within = []
        if source_gap is not None:
            within = [p for p in before[-1] + after[0] if source_gap < p[3] < source_gap + gap[1] - gap[0]]
            before[-1], after[0] = [p for p in before[-1] if p not in within], [p for p in after[0] if p not in within]
        separated = any(elements[e].breaks for e in ending + starting) or any(p[4] for p in points_at.get(k, []))
        layout.append(_Boundary(ending, starting, before, after, inside_closes, inside_opens, gap, source_gap,
                                within, trail, lead, separated))  # fmt: skip
    return layout


class _BoundaryWriter:
    """Writes one boundary (:class:`_Boundary`) onto ``out``: its end tags, the whitespace
    ``translation[gap[0]:gap[1]]`` with the points in it, its start tags, and the punctuation that
    the tags split off the words.

    Attributes:
        cursor: the position in the translation written up to (in the gap).
        pending: the points that go inside the copied whitespace, as (position in the translation,
            source order, text), the next one last.
    """

    def __init__(self, out: list[str], spell: Callable[..., str], elements: list[Element], boundary: _Boundary):
        self.out, self.spell, self.elements, self.boundary = out, spell, elements, boundary
        gap, source_gap = boundary.gap, boundary.source_gap
        self.pending = sorted(((gap[0] + p[3] - source_gap, p[5], p[0]) for p in boundary.within), reverse=True)
        self.cursor = gap[0]

    def write(self) -> None:
        """End tags (each after the points before it), whitespace, start tags (each after the points
        before it), with the split-off punctuation between the tags that go inside it and the rest."""
        out, spell, elements, boundary = self.out, self.spell, self.elements, self.boundary
        ending, starting, before, after = boundary.ending, boundary.starting, boundary.before, boundary.after
        gap, inside_closes, inside_opens = boundary.gap, boundary.inside_closes, boundary.inside_opens
        closes, opens = self.tag_cuts()
        word_end = gap[0]
        for c, element in enumerate(ending):
            if c == inside_closes and c > 0:
                out.append(spell(word_end - boundary.trail, word_end))
            self.points(before[c], closes[c] if c >= inside_closes else gap[0], False)
            self.whitespace_to(closes[c], elements[element].end_order)
            out.append(elements[element].end)
        if inside_closes == len(ending) and inside_closes > 0:
            out.append(spell(word_end - boundary.trail, word_end))
        self.points(before[len(ending)], opens[0] if starting else gap[1], False)
        for c, element in enumerate(starting):
            self.points(after[c], opens[c], True)
            self.whitespace_to(opens[c], elements[element].order)
            if c == inside_opens:  # gap[1] is where word k starts
                out.append(spell(gap[1], gap[1] + boundary.lead))
            out.append(elements[element].start)
        self.points(after[len(starting)], gap[1], True)
        self.whitespace_to(gap[1])

    def tag_cuts(self) -> tuple[list[int], list[int]]:
        """Where in the whitespace each end tag (of ``ending``) and start tag (of ``starting``) goes,
        as positions in the translation, never before the tag written ahead of it."""
        elements, boundary, gap = self.elements, self.boundary, self.boundary.gap
        closes = list(accumulate((self.cut(elements[e].stop, gap[0]) if c >= boundary.inside_closes else gap[0]
                                  for c, e in enumerate(boundary.ending)), max, initial=gap[0]))[1:]  # fmt: skip
        opened = (self.cut(elements[e].begin, gap[1]) if c < boundary.inside_opens else gap[1]
                  for c, e in enumerate(boundary.starting))  # fmt: skip
        return closes, list(accumulate(opened, max, initial=max(closes, default=gap[0])))[1:]

    def cut(self, offset: int, default: int) -> int:
        """Where in the whitespace a tag goes: the closing ones before it and the opening ones after
        it, unless the whitespace is a copy of the source's and the tag sat inside it there
        (``offset``: in ``markup.text``; returns a position in the translation)."""
        gap, source_gap = self.boundary.gap, self.boundary.source_gap
        inside = source_gap is not None and 0 <= offset - source_gap <= gap[1] - gap[0]
        return gap[0] + offset - source_gap if inside else default

    def whitespace_to(self, position: int, order: float = float("inf")) -> None:
        """Write the whitespace up to ``position``, and the points in it before source order ``order``."""
        position, pending, separated = max(position, self.cursor), self.pending, self.boundary.separated
        while pending and (pending[-1][0] < position or pending[-1][0] == position and pending[-1][1] < order):
            point_cut, _, text = pending.pop()
            self.out.extend([self.spell(self.cursor, point_cut, separated), text])
            self.cursor = point_cut
        self.out.append(self.spell(self.cursor, position, separated))
        self.cursor = position

    def points(self, group: list[tuple], limit: int, after_whitespace: bool) -> None:
        """Write ``group``'s points, each where it sat in the whitespace if that is a copy (up to
        ``limit``), else before or after the whitespace."""
        for point in group:
            self.whitespace_to(min(self.cut(point[3], limit if after_whitespace else self.cursor), limit), point[5])
            self.out.append(point[0])


def _write_word(out: list[str], spell: Callable[..., str], span: tuple[int, int], lead: int, trail: int,
                inside: list[tuple[int, int, str]]) -> None:
    """Write a target word (``span`` in the translation) less the ``lead`` and ``trail`` characters
    of punctuation that its boundaries write, with the tags and points that sat inside the source
    word it copies (``inside``: (character in the word, source order, text), from
    :func:`_inside_words` and :func:`_points_at`)."""
    begin, end = span[0] + lead, span[1] - trail
    for position, _, text in sorted(inside):
        position = min(max(span[0] + position, begin), end)
        out += [spell(begin, position), text]
        begin = position
    out.append(spell(begin, end))


def _inside_words(markup: Markup, intervals, copied: dict[int, int], spans, starts_at: dict, ends_at: dict) -> dict:
    """Tags that sat inside a source word (``wo<b>rd</b>``) go inside the target word that copies it,
    at the same character, when all of them can go there and the tags stay nested. They are taken
    out of ``starts_at`` and ``ends_at``.

    Returns: target word → [(character in the word, source order, tag)].
    """
    elements, inside, started_early = markup.elements, {}, set()
    depth = lambda e: elements[e].depth  # noqa: E731
    for j, i in copied.items():
        base, length = markup.spans[i][0], spans[j][1] - spans[j][0]
        starting = sorted(starts_at.get(j, []), key=depth)  # outermost first
        ending = sorted(ends_at.get(j + 1, []), key=lambda e: -depth(e))  # innermost first
        opens = {e for e in starting if 0 < elements[e].begin - base < length}
        closes = {e for e in ending if 0 < elements[e].stop - base < length}
        # an element that gave this word up to its sibling (markup_parse._insert) starts inside it
        early = {e for e in starts_at.get(j + 1, []) if 0 < elements[e].begin - base < length}
        opens |= early
        if not opens and not closes:
            continue
        tags = sorted(
            [(elements[e].begin - base, elements[e].order, elements[e].start, e, True) for e in opens]
            + [(elements[e].stop - base, elements[e].end_order, elements[e].end, e, False) for e in closes]
        )
        sequence = [(e, True) for e in starting if e not in opens] + [(e, is_start) for *_, e, is_start in tags]
        sequence += [(e, False) for e in ending if e not in closes]
        stack = sorted(  # the elements open before the word
            (e for e, interval in enumerate(intervals)
             if interval and (interval[0] < j <= interval[1] or interval[0] == j and e in started_early)),
            key=depth,
        )  # fmt: skip
        nested = True
        for e, is_start in sequence:
            if is_start:
                stack.append(e)
            elif stack[-1:] == [e]:
                stack.pop()
            else:
                nested = False
        after = [e for e in starts_at.get(j + 1, []) if e not in early]  # opened after the early ones
        if nested and [depth(e) for e in stack] == sorted(depth(e) for e in stack) and all(
                depth(e) > depth(f) for e in after for f in early):
            inside[j] = [(position, order, tag) for position, order, tag, _, _ in tags]
            starts_at[j] = [e for e in starts_at.get(j, []) if e not in opens]
            starts_at[j + 1] = after
            started_early |= early
            ends_at[j + 1] = [e for e in ends_at.get(j + 1, []) if e not in closes]
    return inside


class _Item(NamedTuple):
    """Something :func:`_points_at` places: a point of the source, or an element whose words all
    vanished (written whole where it started)."""

    order: int  # source order
    text: str  # as written (a vanished element: :func:`_skeleton`)
    offset: int  # plain-text offset in markup.text
    parent: int | None  # the innermost element around it (None: the line)
    word: int | None  # a vanished element's first source word (None: a point, or it had none)
    breaks: bool  # it separates words
    stray: str  # a stray tag's name, else ""
    empty: str  # the name of an element that holds no word or whose words vanished, else ""
    element: Element | None  # the element whose words vanished


def _points_at(markup: Markup, intervals, links: Iterable[Link], n_tgt_words: int, copied: dict[int, int],
               inside: dict[int, list]) -> dict[int, list[tuple]]:
    """Where each point goes: target boundary k (before target word k) → its points in source order,
    as (text, ancestor elements, glued to the word before it, plain-text offset, separates words,
    source order).

    Points are the source's points and the elements whose words all vanished (written empty with
    their points and children, where they started). A point goes before the first target word
    linked to a source word after it (Bergamot's rule), moved inside its parent element's words;
    one that sat inside a source word goes inside the target word that copies it, if any (added
    to ``inside``: target word → [(character in the word, source order, text)]).
    """
    copy_of = {i: j for j, i in sorted(copied.items(), reverse=True)}  # source word → first target word copying it
    elements = markup.elements
    source_of = _first_sources(markup, links, n_tgt_words)
    at: dict[int, list[tuple]] = {}
    last_slot: dict[str, int] = {}  # tag name → slot of the last stray tag or empty element of that name
    for item in sorted(_point_items(markup, intervals), key=lambda item: item.order):
        if _into_copied_word(markup, intervals, copy_of, inside, item):
            continue
        slot = _bergamot_slot(markup, source_of, n_tgt_words, item)
        name = item.stray or item.empty
        if name:  # tags of one name keep their order, and a stray one stays out of the elements of its name
            same = [(e.order, i) for e, i in zip(elements, intervals) if item.stray and i and e.name == item.stray]
            low = max([last_slot.get(name, 0)] + [last + 1 for order, (_, last) in same if order < item.order])
            high = min([n_tgt_words] + [first for order, (first, _) in same if order > item.order])
            slot = min(max(slot, low), high) if low <= high else low
            last_slot[name] = slot
        if item.parent is not None:
            slot = min(max(slot, intervals[item.parent][0]), intervals[item.parent][1] + 1)
        glued = item.offset > 0 and not markup.text[item.offset - 1].isspace()
        chain = _ancestors(elements, item.parent)
        at.setdefault(slot, []).append((item.text, chain, glued, item.offset, item.breaks, item.order))
    return at


def _first_sources(markup: Markup, links: Iterable[Link], n_tgt_words: int) -> list[int | None]:
    """The first source word linked to each target word (None: none is)."""
    source_of: list[int | None] = [None] * n_tgt_words
    for i, j in links:
        if 0 <= i < len(markup.words) and 0 <= j < n_tgt_words and (source_of[j] is None or i < source_of[j]):
            source_of[j] = i
    return source_of


def _ancestors(elements: list[Element], element: int | None) -> set[int]:
    """``element`` and the elements around it (empty for None: the line)."""
    chain = set()
    while element is not None:
        chain.add(element)
        element = elements[element].parent
    return chain


def _skeleton(markup: Markup, index: int) -> str:
    """Element ``index`` written without its text: its tags around its children's skeletons and its
    points, in source order."""
    elements = markup.elements
    inner = [(elements[c].order, _skeleton(markup, c)) for c in markup.children[index]]
    inner += [(p.order, p.raw) for p in markup.points if p.parent == index]
    return elements[index].start + "".join(text for _, text in sorted(inner)) + elements[index].end


def _point_items(markup: Markup, intervals) -> list[_Item]:
    """The source's points and its elements whose words all vanished, points first, each unless it
    sits in a vanished element (then it is written in that element's skeleton)."""
    items = [
        _Item(p.order, p.raw, p.offset, p.parent, None, p.breaks, p.stray, p.element, None)
        for p in markup.points
        if p.parent is None or intervals[p.parent]
    ]
    items += [
        _Item(e.order, _skeleton(markup, k), e.begin, e.parent, e.first if e.first <= e.last else None, e.breaks, "",
              e.name, e)
        for k, e in enumerate(markup.elements)
        if intervals[k] is None and (e.parent is None or intervals[e.parent] is not None)
    ]  # fmt: skip
    return items


def _bergamot_slot(markup: Markup, source_of: list[int | None], n_tgt_words: int, item: _Item) -> int:
    """The target boundary before the first target word linked to a source word after ``item``
    (Bergamot's rule); the line's ends stay the line's ends."""
    boundary = sum(begin < item.offset for begin, _ in markup.spans) if item.word is None else item.word
    if boundary <= 0:  # no source word before it
        return 0
    if boundary >= len(markup.words):
        return n_tgt_words
    return next((j for j, i in enumerate(source_of) if i is not None and i >= boundary), n_tgt_words)


def _into_copied_word(markup: Markup, intervals, copy_of: dict[int, int], inside: dict[int, list],
                      item: _Item) -> bool:
    """Put ``item`` inside the target word that copies the source word it sat inside (added to
    ``inside``), if that word lies in its parent element (or the parent starts inside it) and, for a
    stray tag or an empty element, no tag of its name could be passed there. Returns whether it did."""
    elements, parent = markup.elements, item.parent
    i = next((i for i, (begin, end) in enumerate(markup.spans) if begin < item.offset < end), None)
    j = copy_of.get(i)
    within_parent = parent is None or intervals[parent][0] <= j <= intervals[parent][1] if j is not None else False
    started_here = parent is not None and any(o == elements[parent].order for _, o, _ in inside.get(j, []))
    if item.stray:  # inside a word a stray tag could pass tags of its name: only where it has none
        alone = not any(e.name == item.stray for e in elements) and not any(
            p.element == item.stray for p in markup.points)
    else:
        alone = not item.empty or not any(p.stray == item.empty for p in markup.points)
    if not (alone and (within_parent or started_here)):
        return False
    base, element = markup.spans[i][0], item.element
    if element and item.text == element.start + element.end and element.stop <= markup.spans[i][1]:
        # its start and end tag where they were, around the characters it held
        inside.setdefault(j, []).extend([(item.offset - base, item.order, element.start),
                                         (element.stop - base, element.end_order, element.end)])  # fmt: skip
    else:
        inside.setdefault(j, []).append((item.offset - base, item.order, item.text))
    return True


def _around_tags(points, ending, starting, line_start: bool, line_end: bool, text_length: int):
    """Points of one boundary among its tags: ``before[c]`` go just before ``ending[c]``'s end
    tag (``before[-1]``: after them all, before the whitespace), ``after[c]`` just before
    ``starting[c]``'s start tag (``after[-1]``: after them all). A point stays inside its
    ancestors; otherwise it goes before the whitespace when it was glued to the word before it,
    after it when not; at the line's ends it keeps its side of the line's own whitespace. Points
    outside the tags keep their source order: the ones before a point that goes before the
    whitespace go there too."""
    before: list[list[tuple]] = [[] for _ in range(len(ending) + 1)]
    after: list[list[tuple]] = [[] for _ in range(len(starting) + 1)]
    free = []  # (point, goes before the whitespace)
    for point in points:
        _, chain, glued, offset, *_ = point
        closing = [c for c, e in enumerate(ending) if e in chain]
        opening = [c for c, e in enumerate(starting) if e in chain]
        if closing:
            before[closing[0]].append(point)
        elif opening:
            after[opening[-1] + 1].append(point)
        elif line_end:
            free.append((point, offset < text_length))
        elif line_start:
            free.append((point, offset == 0))
        else:
            free.append((point, glued))
    last_before = max((f for f, (_, goes_before) in enumerate(free) if goes_before), default=-1)
    for f, (point, _) in enumerate(free):
        (before[-1] if f <= last_before else after[0]).append(point)
    return before, after
