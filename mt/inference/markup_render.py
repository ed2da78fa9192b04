"""Writing a translation with a parsed line's markup (:func:`render`, the second half of
:func:`mt.inference.markup.transfer`): the tags on their target words, the points at their
boundaries, and the text spelled as :mod:`mt.inference.markup`'s docstring says (copies of the
source as the source wrote them, the model's text escaped only where it must be).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import accumulate

from mt.data.words import words_of
from mt.inference.markup_parse import Link, Markup, html_decode, html_reference, word_edges


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
    :func:`_points_at`.

    Args:
        intervals: from :func:`place`.  links: the same links, for where points go.
    """
    elements, links = markup.elements, list(links)
    words, spans = words_of(translation)
    n = len(words)
    carried, copied = _carried(markup, translation, links)

    def spell(begin: int, end: int, separated: bool = False) -> str:
        """``translation[begin:end]`` as markup: the source's spelling of a copy, else escaped."""
        for (copy_begin, copy_end), source_begin in carried.items():
            if copy_begin <= begin and end <= copy_end:
                source = source_begin + begin - copy_begin
                spelled = _source_spelling(markup, source, source + end - begin, separated)
                if spelled is not None:
                    return spelled
        return _escape(translation[begin:end], markup.mode)

    starts_at: dict[int, list[int]] = {}
    ends_at: dict[int, list[int]] = {}
    for index, interval in enumerate(intervals):
        if interval is not None:
            starts_at.setdefault(interval[0], []).append(index)
            ends_at.setdefault(interval[1] + 1, []).append(index)
    inside = _inside_words(markup, intervals, copied, spans, starts_at, ends_at)
    points_at = _points_at(markup, intervals, links, n, copied, inside)
    # punctuation split off by a tag: trails[k] characters end word k - 1, leads[k] start word k
    trails = [0] + [word_edges(words[k - 1])[1] if any(elements[e].close_inside for e in ends_at.get(k, [])) else 0
                    for k in range(1, n + 1)]
    leads = [word_edges(words[k])[0] if any(elements[e].open_inside for e in starts_at.get(k, [])) else 0
             for k in range(n)]  # fmt: skip
    layout = []  # per boundary: ending, starting, the points around them, the tags inside a word's punctuation
    for k in range(n + 1):
        ending = sorted(ends_at.get(k, []), key=lambda e: -elements[e].depth)  # innermost first
        starting = sorted(starts_at.get(k, []), key=lambda e: elements[e].depth)  # outermost first
        before, after = _around_tags(points_at.get(k, []), ending, starting, k == 0, k == n, len(markup.text))
        # the tags inside one between a word and its punctuation go there too, unless a point that
        # separates words would land there and split the word (a whitespace-only element)
        inside_closes = max((c + 1 for c, e in enumerate(ending) if elements[e].close_inside), default=0)
        if any(point[4] for c in range(inside_closes) for point in before[c]):
            trails[k] = 0
        inside_closes = inside_closes if trails[k] else 0
        inside_opens = min((c for c, e in enumerate(starting) if elements[e].open_inside), default=len(starting))
        if any(point[4] for c in range(inside_opens + 1, len(starting) + 1) for point in after[c]):
            leads[k] = 0 if k < n else leads[k]
        inside_opens = inside_opens if k < n and leads[k] else len(starting)
        # a copy of the source's whitespace keeps the points outside the tags where they were in it
        gap = (spans[k - 1][1] if k > 0 else 0, spans[k][0] if k < n else len(translation))
        source_gap = carried.get(gap)
        within = []
        if source_gap is not None:
            within = [p for p in before[-1] + after[0] if source_gap < p[3] < source_gap + gap[1] - gap[0]]
            before[-1], after[0] = [p for p in before[-1] if p not in within], [p for p in after[0] if p not in within]
        layout.append((ending, starting, before, after, inside_closes, inside_opens, gap, source_gap, within))
    out = []
    for k, (ending, starting, before, after, inside_closes, inside_opens, gap, source_gap, within) in enumerate(layout):
        separated = any(elements[e].breaks for e in ending + starting) or any(p[4] for p in points_at.get(k, []))

        def cut(offset: int, default: int) -> int:
            """Where in the whitespace a tag goes: the closing ones before it and the opening ones after
            it, unless the whitespace is a copy of the source's and the tag sat inside it there."""
            inside = source_gap is not None and 0 <= offset - source_gap <= gap[1] - gap[0]
            return gap[0] + offset - source_gap if inside else default

        closes = list(accumulate((cut(elements[e].stop, gap[0]) if c >= inside_closes else gap[0]
                                  for c, e in enumerate(ending)), max, initial=gap[0]))[1:]  # fmt: skip
        opened = (cut(elements[e].begin, gap[1]) if c < inside_opens else gap[1] for c, e in enumerate(starting))
        opens = list(accumulate(opened, max, initial=max(closes, default=gap[0])))[1:]
        pending = sorted(((gap[0] + p[3] - source_gap, p[5], p[0]) for p in within), reverse=True)
        cursor = gap[0]

        def whitespace_to(position: int, order: float = float("inf")) -> None:
            """Write the whitespace up to ``position``, and the points in it before source order ``order``."""
            nonlocal cursor
            position = max(position, cursor)
            while pending and (pending[-1][0] < position or pending[-1][0] == position and pending[-1][1] < order):
                point_cut, _, text = pending.pop()
                out.extend([spell(cursor, point_cut, separated), text])
                cursor = point_cut
            out.append(spell(cursor, position, separated))
            cursor = position

        def points(group: list[tuple], limit: int, after_whitespace: bool) -> None:
            """Write ``group``'s points, each where it sat in the whitespace if that is a copy (up to
            ``limit``), else before or after the whitespace."""
            for point in group:
                whitespace_to(min(cut(point[3], limit if after_whitespace else cursor), limit), point[5])
                out.append(point[0])

        word_end = gap[0]
        for c, element in enumerate(ending):
            if c == inside_closes and c > 0:
                out.append(spell(word_end - trails[k], word_end))
            points(before[c], closes[c] if c >= inside_closes else gap[0], False)
            whitespace_to(closes[c], elements[element].end_order)
            out.append(elements[element].end)
        if inside_closes == len(ending) and inside_closes > 0:
            out.append(spell(word_end - trails[k], word_end))
        points(before[len(ending)], opens[0] if starting else gap[1], False)
        for c, element in enumerate(starting):
            points(after[c], opens[c], True)
            whitespace_to(opens[c], elements[element].order)
            if c == inside_opens:
                out.append(spell(spans[k][0], spans[k][0] + leads[k]))
            out.append(elements[element].start)
        points(after[len(starting)], gap[1], True)
        whitespace_to(gap[1])
        if k < n:  # the word, with the tags and points that sat inside the source word it copies
            lead = leads[k] if inside_opens < len(starting) else 0
            begin, end = spans[k][0] + lead, spans[k][1] - trails[k + 1]
            for position, _, text in sorted(inside.get(k, [])):
                position = min(max(spans[k][0] + position, begin), end)
                out += [spell(begin, position), text]
                begin = position
            out.append(spell(begin, end))
    return "".join(out)


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

    items = [  # (source order, text, offset, parent, first word, separates words, stray tag's name, empty element's)
        (p.order, p.raw, p.offset, p.parent, None, p.breaks, p.stray, p.element)
        for p in markup.points
        if p.parent is None or intervals[p.parent]
    ]
    items += [
        (e.order, skeleton(k), e.begin, e.parent, e.first if e.first <= e.last else None, e.breaks, "", k)
        for k, e in enumerate(elements)
        if intervals[k] is None and (e.parent is None or intervals[e.parent] is not None)
    ]
    at: dict[int, list[tuple]] = {}
    last_slot: dict[str, int] = {}  # tag name → slot of the last stray tag or empty element of that name
    for order, text, offset, parent, word, breaks, stray, empty in sorted(items, key=lambda item: item[0]):
        element = elements[empty] if isinstance(empty, int) else None  # an element whose words vanished
        empty = element.name if element else empty
        boundary = sum(begin < offset for begin, _ in markup.spans) if word is None else word  # source words before it
        if boundary <= 0:
            slot = 0
        elif boundary >= len(markup.words):
            slot = n_tgt_words
        else:
            slot = next((j for j, i in enumerate(source_of) if i is not None and i >= boundary), n_tgt_words)
        i = next((i for i, (begin, end) in enumerate(markup.spans) if begin < offset < end), None)
        j = copy_of.get(i)
        within_parent = parent is None or intervals[parent][0] <= j <= intervals[parent][1] if j is not None else False
        started_here = parent is not None and any(o == elements[parent].order for _, o, _ in inside.get(j, []))
        if stray:  # inside a word a stray tag could pass tags of its name: only where it has none
            alone = not any(e.name == stray for e in elements) and not any(p.element == stray for p in markup.points)
        else:
            alone = not empty or not any(p.stray == empty for p in markup.points)
        if alone and (within_parent or started_here):
            base = markup.spans[i][0]
            if element and text == element.start + element.end and element.stop <= markup.spans[i][1]:
                # its start and end tag where they were, around the characters it held
                inside.setdefault(j, []).extend([(offset - base, order, element.start),
                                                 (element.stop - base, element.end_order, element.end)])  # fmt: skip
            else:
                inside.setdefault(j, []).append((offset - base, order, text))
            continue
        name = stray or empty
        if name:  # tags of one name keep their order, and a stray one stays out of the elements of its name
            same = [(e.order, i) for e, i in zip(elements, intervals) if stray and i and e.name == stray]
            low = max([last_slot.get(name, 0)] + [last + 1 for element_order, (_, last) in same if element_order < order])
            high = min([n_tgt_words] + [first for element_order, (first, _) in same if element_order > order])
            slot = min(max(slot, low), high) if low <= high else low
            last_slot[name] = slot
        if parent is not None:
            slot = min(max(slot, intervals[parent][0]), intervals[parent][1] + 1)
        glued = offset > 0 and not markup.text[offset - 1].isspace()
        at.setdefault(slot, []).append((text, ancestors(parent), glued, offset, breaks, order))
    return at


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
