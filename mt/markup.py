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
  (:func:`mt.words.words_of`); in ``html`` mode ``<br>`` and block-level tags also separate
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
import unicodedata
import xml.parsers.expat
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser

from mt.words import words_of

MODES = ("html", "xml")
MAX_GAP = 1  # target words an element may bridge between two of its words (scripts/markup_eval.py: 1 ≈ 2 > 3)
HTML_VOID = frozenset(
    "area base basefont bgsound br col embed frame hr img input keygen link meta param source track wbr".split()
)
HTML_RAW_TEXT = frozenset({"script", "style"})  # their content is code: carried verbatim, not translated
HTML_BREAKS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 h6 header hr li "
    "main nav ol p pre section table tbody td tfoot th thead tr ul".split()
)
Link = tuple[int, int]


class MarkupError(ValueError):
    """A line whose markup does not parse: an unterminated tag or comment; in ``xml`` mode also
    unbalanced tags and undefined entities. The message says what and at which column."""


@dataclass
class Token:
    """One construct of a line. kind: ``text``, ``start``, ``end`` or ``point``; raw: its
    characters in the line, exactly; text: the decoded characters (``text``) or the tag name."""

    kind: str
    raw: str
    text: str = ""


@dataclass
class Element:
    """A start tag and its end tag around source words.

    Attributes:
        start, end: the two tags, as written.
        order: index of the start tag among the line's tokens (source order).
        begin, stop: the plain-text characters [begin, stop) between the tags.
        first, last: the source words covered, inclusive (none when last < first).
        parent: the enclosing element (None: the line), in the word-level tree: elements sharing
            one word nest, the later inside the earlier.
        depth: 0 for an element of the line itself.
        open_inside, close_inside: the start tag sits after the first word's leading
            punctuation, the end tag before the last word's trailing punctuation.
    """

    start: str
    end: str
    order: int
    begin: int
    stop: int
    first: int
    last: int
    parent: int | None = None
    depth: int = 0
    open_inside: bool = False
    close_inside: bool = False


@dataclass
class Point:
    """Markup carried verbatim: raw, its source order, plain-text offset and innermost element."""

    raw: str
    order: int
    offset: int
    parent: int | None


@dataclass
class Markup:
    """A parsed line (:func:`parse`).

    Attributes:
        line, mode: the input.
        text: what the model translates: the decoded text without the tags.
        words, spans: whitespace words of ``text`` and their character spans.
        elements, points: the markup; elements in source order, parents first.
        children: element index (None: the line) → its children in the word-level tree.
        stacks: per source word, the elements covering it, outermost first.
        spellings: decoded text → the reference the source wrote it with (``"é"`` → ``"&eacute;"``).
    """

    line: str
    mode: str
    text: str
    words: list[str]
    spans: list[tuple[int, int]]
    elements: list[Element]
    points: list[Point]
    children: dict[int | None, list[int]]
    stacks: list[list[int]]
    spellings: dict[str, str]


# ------------------------------------------------------------------------------------ parsing
class _HtmlEvents(HTMLParser):
    """The standard library's HTML tokenizer, recording (kind, (line, column), payload) per
    construct; payload: the tag name, the data, or a reference without its ``;``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)  # references as their own events, to keep their spelling
        self.events: list[tuple[str, tuple[int, int], str]] = []

    def _add(self, kind: str, payload: str = "") -> None:
        self.events.append((kind, self.getpos(), payload))

    def handle_starttag(self, tag, attrs):
        self._add("point" if tag in HTML_VOID else "start", tag)

    def handle_startendtag(self, tag, attrs):
        self._add("point", tag)

    def handle_endtag(self, tag):
        self._add("end", tag)

    def handle_data(self, data):
        self._add("text", data)

    def handle_entityref(self, name):
        self._add("reference", "&" + name)

    def handle_charref(self, name):
        self._add("reference", "&#" + name)

    def handle_comment(self, data):
        self._add("point")

    def handle_decl(self, decl):
        self._add("point")

    def unknown_decl(self, data):  # <![CDATA[ … ]]>
        self._add("point")

    def handle_pi(self, data):
        self._add("point")


def _tokenize_html(line: str) -> list[Token]:
    parser = _HtmlEvents()
    parser.feed(line)
    rest = parser.rawdata  # what the tokenizer could not finish: an unterminated construct
    if len(rest) > 1 and rest[0] == "<" and (rest[1].isalpha() or rest[1] in "/!?"):
        what = "comment" if rest.startswith("<!--") else "tag"
        raise MarkupError(f"unterminated {what} at column {len(line) - len(rest) + 1}: {rest[:30]!r}")
    parser.close()
    line_starts = [0] + [k + 1 for k, char in enumerate(line) if char == "\n"]
    offsets = [line_starts[row - 1] + column for _, (row, column), _ in parser.events] + [len(line)]
    tokens = [Token("point", line[: offsets[0]])] if offsets[0] > 0 else []  # skipped by the tokenizer: "</>"
    for (kind, _, payload), begin, end in zip(parser.events, offsets, offsets[1:]):
        raw = line[begin:end]
        size = len(raw)
        if kind in ("text", "reference"):
            size = len(payload) + (kind == "reference" and line.startswith(";", begin + len(payload)))
            if size:
                text = raw[:size]
                tokens.append(Token("text", text, text if kind == "text" else html.unescape(text)))
        elif raw:
            tokens.append(Token(kind, raw, payload))
        if raw[size:]:  # what the tokenizer skipped after text ("a</>b"): markup, carried as it is
            tokens.append(Token("point", raw[size:]))
    merged: list[Token] = []  # <script>…</script> and <style>…</style> as one point each
    k = 0
    while k < len(tokens):
        token = tokens[k]
        if token.kind == "start" and token.text in HTML_RAW_TEXT:
            closing = [e for e in range(k + 1, len(tokens)) if tokens[e].kind == "end" and tokens[e].text == token.text]
            end = closing[0] if closing else len(tokens) - 1  # unclosed: to the end of the line
            merged.append(Token("point", "".join(t.raw for t in tokens[k : end + 1]), token.text))
            k = end + 1
        else:
            merged.append(token)
            k += 1
    return merged


def _tokenize_xml(line: str) -> list[Token]:
    data = f"<r>{line}</r>".encode()  # one root element, so that a line may hold several
    parser = xml.parsers.expat.ParserCreate()
    parser.buffer_text = False  # each reference its own character-data event
    events: list[tuple[str, int, str]] = []

    def on(kind: str):
        def handler(*args):
            payload = args[0] if args and kind in ("start", "end", "text") else ""
            events.append((kind, parser.CurrentByteIndex, payload))

        return handler

    parser.StartElementHandler, parser.EndElementHandler = on("start"), on("end")
    parser.CharacterDataHandler, parser.CommentHandler = on("text"), on("point")
    parser.ProcessingInstructionHandler, parser.DefaultHandler = on("point"), on("point")
    parser.StartCdataSectionHandler, parser.EndCdataSectionHandler = on("cdata"), on("cdata end")
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as error:
        column = len(data[: parser.ErrorByteIndex].decode("utf-8", "replace")) - 2  # 1-based, in the line
        message = xml.parsers.expat.errors.messages[error.code]
        if column > len(line):  # only the closing root tag is left: an element still open
            raise MarkupError("an element is not closed by the end of the line" if message == "mismatched tag"
                              else f"{message} at the end of the line") from None
        raise MarkupError(f"{message} at column {max(column, 1)}") from None
    events = events[1:-1]  # the root's own start and end
    offsets = [index for _, index, _ in events] + [len(data) - len(b"</r>")]
    tokens: list[Token] = []
    cdata_from = None
    for (kind, _, payload), begin, end in zip(events, offsets, offsets[1:]):
        raw = data[begin:end].decode()
        if kind == "cdata":
            cdata_from = begin
        elif kind == "cdata end":
            tokens.append(Token("point", data[cdata_from:end].decode()))
            cdata_from = None
        elif cdata_from is not None:
            continue  # inside <![CDATA[ … ]]>: part of that point
        elif kind == "end" and not raw:  # <x/>: expat reports a start and an empty end
            tokens[-1].kind = "point"
        elif raw:
            tokens.append(Token(kind, raw, payload))
    return tokens


def tokenize(line: str, mode: str) -> list[Token]:
    """The constructs of one line, in order; their ``raw`` strings concatenate to ``line``.

    Args:
        mode: ``html`` (:mod:`html.parser`, tolerant) or ``xml`` (expat, strict; the five XML
            entities and numeric references only).

    Raises:
        MarkupError: the line does not parse.  ValueError: an unknown mode.
    """
    if mode == "html":
        return _tokenize_html(line)
    if mode == "xml":
        return _tokenize_xml(line)
    raise ValueError(f"unknown markup mode {mode!r}; choose one of {', '.join(MODES)}")


def _pair(tokens: list[Token]) -> tuple[dict[int, int], list[int]]:
    """Match start and end tags by name, innermost first; unmatched ones become points in place.

    Returns: start token index → end token index, and the indices of the unmatched tags.
    """
    pairs, unmatched, open_tags = {}, [], []
    for k, token in enumerate(tokens):
        if token.kind == "start":
            open_tags.append(k)
        elif token.kind == "end":
            depth = next((d for d in range(len(open_tags) - 1, -1, -1) if tokens[open_tags[d]].text == token.text), None)
            if depth is None:
                unmatched.append(k)
                continue
            unmatched += open_tags[depth + 1 :]  # never closed: closing an outer element ends them
            pairs[open_tags[depth]] = k
            del open_tags[depth:]
    unmatched += open_tags
    for k in unmatched:
        tokens[k].kind = "point"
    return pairs, sorted(unmatched)


def _edges(word: str) -> tuple[int, int]:
    """Lengths of the leading and trailing punctuation of ``word`` (0, 0 if it is all punctuation)."""
    is_punctuation = [unicodedata.category(char).startswith("P") for char in word]
    if all(is_punctuation):
        return 0, 0
    lead = is_punctuation.index(False)
    return lead, is_punctuation[::-1].index(False)


def parse(line: str, mode: str) -> Markup:
    """Split one line into the text to translate and its markup (see the module docstring).

    Raises:
        MarkupError: the line does not parse (:func:`tokenize`).
    """
    tokens = tokenize(line, mode)
    tokens, separating = _fold_wordless(tokens, _pair(tokens)[0])
    pairs, _ = _pair(tokens)
    parts: list[str] = []
    offsets, length, pending_break, text_end = [], 0, False, ""
    for k, token in enumerate(tokens):
        if token.kind == "text" and token.text:
            if pending_break and length and not text_end.isspace() and not token.text[0].isspace():
                parts.append(" ")  # the tag between two words keeps them two words
                length += 1
            pending_break, text_end = False, token.text[-1]
        offsets.append(length)
        if token.kind == "text":
            parts.append(token.text)
            length += len(token.text)
        elif k in separating or (mode == "html" and token.text in HTML_BREAKS):
            pending_break = True
    text = "".join(parts)
    words, spans = words_of(text)

    elements: list[Element] = []
    points: list[Point] = []
    open_elements: list[int] = []
    closing = {end: start for start, end in pairs.items()}
    for k, token in enumerate(tokens):
        parent = open_elements[-1] if open_elements else None
        if token.kind == "start":  # it holds a word: _fold_wordless made the others points
            begin, stop = offsets[k], offsets[pairs[k]]
            covered = [i for i, (word_begin, word_end) in enumerate(spans) if word_begin < stop and word_end > begin]
            element = Element(token.raw, tokens[pairs[k]].raw, k, begin, stop, covered[0], covered[-1], parent)
            lead, _ = _edges(words[element.first])
            _, trail = _edges(words[element.last])
            element.open_inside = lead > 0 and begin == spans[element.first][0] + lead
            element.close_inside = trail > 0 and stop == spans[element.last][1] - trail
            open_elements.append(len(elements))
            elements.append(element)
        elif token.kind == "end" and k in closing:
            open_elements.pop()
        elif token.kind == "point":
            points.append(Point(token.raw, k, offsets[k], parent))

    children: dict[int | None, list[int]] = {None: []}
    for index, element in enumerate(elements):
        children[index] = []
        _insert(elements, children, index, element.parent)
    stacks: list[list[int]] = [[] for _ in words]
    for index in _preorder(children, None):
        element = elements[index]
        element.depth = 0 if element.parent is None else elements[element.parent].depth + 1
        for i in range(element.first, element.last + 1):
            stacks[i].append(index)
    spellings: dict[str, str] = {}
    for token in tokens:
        if token.kind == "text" and token.raw != token.text:
            spellings.setdefault(token.text, token.raw)
    return Markup(line, mode, text, words, spans, elements, points, children, stacks, spellings)


def _fold_wordless(tokens: list[Token], pairs: dict[int, int]) -> tuple[list[Token], set[int]]:
    """Each outermost element without a word (its text, if any, all whitespace) as one point.

    Returns: the tokens, and the indices of the points that held whitespace: they still
    separate the words around them, though their whitespace goes with them, not to the model.
    """
    folded, separating, k = [], set(), 0
    while k < len(tokens):
        end = pairs.get(k)
        inside = tokens[k : end + 1] if end is not None else []
        if inside and all(t.kind != "text" or not t.text.strip() for t in inside):
            if any(t.kind == "text" and t.text for t in inside):
                separating.add(len(folded))
            folded.append(Token("point", "".join(t.raw for t in inside), tokens[k].text))
            k = end + 1
        else:
            folded.append(tokens[k])
            k += 1
    return folded, separating


def _insert(elements: list[Element], children: dict, index: int, node: int | None) -> None:
    """Put element ``index`` under ``node`` in the word-level tree, keeping every element's words
    within its parent's and siblings' words apart. Siblings can share a word only when tags sit
    inside it: one within that word nests in the other; two crossing ones, the later gives it up."""
    element = elements[index]
    if node is not None:
        element.first = max(element.first, elements[node].first)
        element.last = min(element.last, elements[node].last)
    siblings = [c for c in children[node] if elements[c].first <= elements[c].last]
    if element.first <= element.last and siblings and elements[siblings[-1]].last >= element.first:
        previous = elements[siblings[-1]]
        if previous.first <= element.first and element.last <= previous.last:
            _insert(elements, children, index, siblings[-1])
            return
        if element.first <= previous.first and previous.last <= element.last:  # the previous one nests in this
            children[node].remove(siblings[-1])
            children[index].append(siblings[-1])
            previous.parent = index
        else:
            element.first, element.open_inside = previous.last + 1, False
    element.parent = node
    children[node].append(index)


def _preorder(children: dict, node: int | None) -> list[int]:
    order = []
    for child in children[node]:
        order += [child, *_preorder(children, child)]
    return order


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
    trails = [0] + [_edges(words[k - 1])[1] if any(elements[e].close_inside for e in ends_at.get(k, [])) else 0
                    for k in range(1, n + 1)]
    leads = [_edges(words[k])[0] if any(elements[e].open_inside for e in starts_at.get(k, [])) else 0 for k in range(n)]
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
    source_unpaired = Counter(source_tokens[k].raw for k in _pair(source_tokens)[1])
    output_unpaired = Counter(output_tokens[k].raw for k in _pair(output_tokens)[1])
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
) -> tuple[list[str], dict]:
    """Align each parsed source's text to its translation with the model, then :func:`transfer`.

    Args:
        markups, translations: one translation per parsed line (the same line may come several
            times, once per hypothesis).
        method: the alignment method (:func:`mt.align.default_method` of the checkpoint).

    Returns: the translations with markup, and position → :class:`~mt.align.PairAlignment` for
        the pairs that have markup and words on both sides (the others need no links: a line
        without markup is not aligned at all).
    """
    from mt.align import align

    todo = [
        k
        for k, (markup, translation) in enumerate(zip(markups, translations))
        if (markup.elements or markup.points) and markup.words and translation.strip()
    ]
    alignments = align(
        model, tokenizer, [markups[k].text for k in todo], [translations[k] for k in todo],
        method=method, batch_size=batch_size, device=device, keep_attention=False,
    ) if todo else []
    by_position = dict(zip(todo, alignments))
    outputs = [
        transfer(markup, translation, by_position[k].links if k in by_position else [], max_gap)
        for k, (markup, translation) in enumerate(zip(markups, translations))
    ]
    return outputs, by_position
