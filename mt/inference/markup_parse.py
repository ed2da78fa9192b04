"""Parsing a line of HTML or XML for ``mt-translate --markup`` (:mod:`mt.inference.markup`): its tokens,
its plain text and words, and its elements and points over those words.

The rules of what is text and what is markup are :mod:`mt.inference.markup`'s docstring; this module
only reads (the standard library's ``html.parser`` and expat, never regexes) and builds the
:class:`Markup` that :func:`mt.inference.markup.transfer` writes back.
"""

from __future__ import annotations

import html
import unicodedata
import xml.parsers.expat
from dataclasses import dataclass
from html.parser import HTMLParser

from mt.data.words import words_of

MODES = ("html", "xml")
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


def pair_tags(tokens: list[Token]) -> tuple[dict[int, int], list[int]]:
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


def word_edges(word: str) -> tuple[int, int]:
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
    tokens, separating = _fold_wordless(tokens, pair_tags(tokens)[0])
    pairs, _ = pair_tags(tokens)
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
            lead, _ = word_edges(words[element.first])
            _, trail = word_edges(words[element.last])
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
