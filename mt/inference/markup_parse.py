"""Parsing a line of HTML or XML for ``mt-translate --markup`` (:mod:`mt.inference.markup`): its tokens,
its plain text and words, and its elements and points over those words.

The rules of what is text and what is markup are :mod:`mt.inference.markup`'s docstring; this module
only reads (the standard library's ``html.parser`` and expat; references in ``html`` text with
:func:`html.unescape`'s own pattern, one by one, to keep each one's spelling) and builds the
:class:`Markup` that :func:`mt.inference.markup.transfer` writes back.
"""

from __future__ import annotations

import html
import re
import unicodedata
import xml.parsers.expat
from dataclasses import dataclass
from html.entities import html5
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
    characters in the line, exactly; text: the decoded characters (``text``) or the tag name;
    stray: a start or end tag that :func:`pair_tags` found no partner for (now a ``point``)."""

    kind: str
    raw: str
    text: str = ""
    stray: bool = False


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
        breaks: its tags separate words (``html`` block-level elements: ``<p>``).
        name: the tag name (``html``: lower case).
        end_order: index of the end tag among the line's tokens.
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
    breaks: bool = False
    name: str = ""
    end_order: int = -1


@dataclass
class Point:
    """Markup carried verbatim: raw, its source order, plain-text offset and innermost element;
    breaks: it separates words (``<br>``, a whitespace-only element); stray: for a start or end
    tag that closes nothing or is never closed (``html`` mode), its name; element: for an element
    that holds no word (``<b> </b>``), its name (else ``""``)."""

    raw: str
    order: int
    offset: int
    parent: int | None
    breaks: bool = False
    stray: str = ""
    element: str = ""


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
        spelling: ``text`` in pieces (begin, end, raw) as the source wrote them, in order: each
            reference (``"é"`` as ``"&eacute;"``) and each run of literal characters one piece;
            raw ``""`` for a space that only a word-separating tag stands for (``a<br>b``).
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
    spelling: list[tuple[int, int, str]]


# ------------------------------------------------------------------------------------ parsing
class _HtmlEvents(HTMLParser):
    """The standard library's HTML tokenizer, recording (kind, (line, column), payload) per
    construct; payload: the tag name or the decoded data."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # references are read again by _html_pieces, per occurrence
        self.events: list[tuple[str, tuple[int, int], str]] = []
        self.raw_text: str | None = None  # inside <script> or <style>: data is code, never decoded

    def _add(self, kind: str, payload: str = "") -> None:
        self.events.append((kind, self.getpos(), payload))

    def handle_starttag(self, tag, attrs):
        self._add("point" if tag in HTML_VOID else "start", tag)
        self.raw_text = tag if tag in HTML_RAW_TEXT else self.raw_text

    def handle_startendtag(self, tag, attrs):
        self._add("point", tag)

    def handle_endtag(self, tag):
        self._add("end", tag)
        self.raw_text = None if tag == self.raw_text else self.raw_text

    def handle_data(self, data):
        self._add("code" if self.raw_text else "text", data)

    def handle_comment(self, data):
        self._add("point")

    def handle_decl(self, decl):
        self._add("point")

    def unknown_decl(self, data):  # <![CDATA[ … ]]>
        self._add("point")

    def handle_pi(self, data):
        self._add("point")


_HTML_REFERENCE = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")  # html.unescape's own


def html_reference(text: str, k: int) -> tuple[str, str] | None:
    """The character reference HTML reads at ``text[k]`` (the rules of :func:`html.unescape`,
    which ``html.parser`` applies): (its spelling, decoded), or None where an ``&`` is a bare
    ``&`` (``R&D``, ``&foo;``) or ``text[k]`` no ``&``."""
    match = _HTML_REFERENCE.match(text, k)
    if match is None:
        return None
    if match.group(1)[0] == "#":
        return match.group(), html.unescape(match.group())
    name = match.group(1)  # the longest known name, "&ampx" is "&amp" then "x" (HTML5 §13.2.5.73)
    known = [name] if name in html5 else [name[:x] for x in range(len(name) - 1, 1, -1) if name[:x] in html5][:1]
    return ("&" + known[0], html5[known[0]]) if known else None


def _html_pieces(raw: str) -> list[tuple[str, str]]:
    """Text as HTML reads it: (spelling, decoded) per character reference (:func:`html_reference`)
    and per run of other characters, bare ``&`` among them."""
    pieces: list[tuple[str, str]] = []
    literal_from, k = 0, raw.find("&")
    while k >= 0:
        reference = html_reference(raw, k)
        if reference is not None:
            if literal_from < k:
                pieces.append((raw[literal_from:k], raw[literal_from:k]))
            pieces.append(reference)
            literal_from = k + len(reference[0])
        k = raw.find("&", k + (len(reference[0]) if reference else 1))
    if literal_from < len(raw):
        pieces.append((raw[literal_from:], raw[literal_from:]))
    return pieces


def html_decode(raw: str) -> str:
    """``raw`` text decoded as ``html`` mode decodes it (:func:`html.unescape`)."""
    return "".join(decoded for _, decoded in _html_pieces(raw))


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
        if kind == "code":
            tokens.append(Token("text", raw, raw))
        elif kind == "text":  # the text, then what the tokenizer skipped after it ("a</>b"), if anything
            size = next((k for k in range(len(raw), -1, -1) if html_decode(raw[:k]) == payload), len(raw))
            for spelling, decoded in _html_pieces(raw[:size]):
                tokens.append(Token("text" if decoded else "point", spelling, decoded))  # "&#1;" decodes to nothing
        elif raw:
            tokens.append(Token(kind, raw, payload))
        if raw[size:]:
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


def _xml_prolog(line: str) -> list[str]:
    """The XML declaration, doctype, comments and processing instructions that open ``line`` (what
    expat reads before the first element or text), one string each with the whitespace before it."""
    parser = xml.parsers.expat.ParserCreate()
    pieces: list[str] = []
    started = []

    def on_prolog(data: str) -> None:  # only the default handler is set: it gets the prolog as written
        if not started:
            pieces.append(data)

    parser.DefaultHandler = on_prolog
    parser.StartElementHandler = lambda name, attributes: started.append(True)
    try:
        parser.Parse(line.encode(), True)
    except xml.parsers.expat.ExpatError:
        pass  # text or a second root: the prolog ended before it
    constructs, current, doctype_depth = [], "", 0  # doctype_depth: inside <!DOCTYPE, 1 + open [s
    for piece in pieces:  # expat gives a doctype in pieces: "<!DOCTYPE", " ", "x", " ", "[", …, "]", ">"
        if not doctype_depth and current.strip() and (piece.isspace() or piece.startswith("<")):
            constructs.append(current)
            current = ""
        current += piece
        if piece.startswith("<!DOCTYPE"):
            doctype_depth = 1
        elif doctype_depth:
            doctype_depth += (piece == "[") - (piece == "]") - (piece == ">" and doctype_depth == 1)
    return constructs + ([current] if current.strip() else [])


def _tokenize_xml(line: str) -> list[Token]:
    constructs = _xml_prolog(line)
    prolog = "".join(constructs)
    data = f"{prolog}<r>{line[len(prolog):]}</r>".encode()  # one root element, so that a line may hold several
    root = len(prolog.encode())
    parser = xml.parsers.expat.ParserCreate()
    parser.buffer_text = False  # each reference its own character-data event
    events: list[tuple[str, int, str]] = []

    def on(kind: str):
        def handler(*args):
            if parser.CurrentByteIndex >= root:  # the prolog: _xml_prolog
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
        index = parser.ErrorByteIndex
        index = index if index < root else index - len(b"<r>")
        column = _construct_start(line, len(data[:index].decode("utf-8", "replace"))) + 1  # 1-based, in the line
        message = xml.parsers.expat.errors.messages[error.code]
        if column > len(line):  # only the closing root tag is left: an element still open
            raise MarkupError("an element is not closed by the end of the line" if message == "mismatched tag"
                              else f"{message} at the end of the line") from None
        raise MarkupError(f"{message} at column {column}") from None
    events = events[1:-1]  # the root's own start and end
    offsets = [index for _, index, _ in events] + [len(data) - len(b"</r>")]
    tokens = [Token("point", construct) for construct in constructs]
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


def _construct_start(line: str, k: int) -> int:
    """Where the tag or reference holding character ``k`` of ``line`` starts (expat points at
    the name in ``</b>``, or inside a declaration), else ``k``."""
    tag, reference = line.rfind("<", 0, k + 1), line.rfind("&", 0, k + 1)
    if tag > reference and ">" not in line[tag:k]:
        return tag
    return reference if reference >= 0 and not any(char in " ;<" for char in line[reference:k]) else k


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
        tokens[k].kind, tokens[k].stray = "point", True
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
    tokens, separating, wordless = _fold_wordless(tokens, pair_tags(tokens)[0])
    pairs, _ = pair_tags(tokens)
    breaking = {k for k, token in enumerate(tokens) if k in separating or (mode == "html" and token.kind != "text"
                                                                            and token.text in HTML_BREAKS)}
    parts: list[str] = []
    spelling: list[tuple[int, int, str]] = []
    offsets, length, pending_break, text_end = [], 0, False, ""
    for k, token in enumerate(tokens):
        if token.kind == "text":
            if pending_break and length and not text_end.isspace() and not token.text[0].isspace():
                parts.append(" ")  # the tag between two words keeps them two words
                spelling.append((length, length + 1, ""))
                length += 1
            pending_break, text_end = False, token.text[-1]
        offsets.append(length)
        if token.kind == "text":
            parts.append(token.text)
            spelling.append((length, length + len(token.text), token.raw))
            length += len(token.text)
        elif k in breaking:
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
            element = Element(token.raw, tokens[pairs[k]].raw, k, begin, stop, covered[0], covered[-1], parent,
                              breaks=k in breaking, name=token.text, end_order=pairs[k])
            lead, _ = word_edges(words[element.first])
            _, trail = word_edges(words[element.last])
            element.open_inside = lead > 0 and begin == spans[element.first][0] + lead
            element.close_inside = trail > 0 and stop == spans[element.last][1] - trail
            open_elements.append(len(elements))
            elements.append(element)
        elif token.kind == "end" and k in closing:
            open_elements.pop()
        elif token.kind == "point":
            points.append(Point(token.raw, k, offsets[k], parent, k in breaking, token.text if token.stray else "",
                                token.text if k in wordless else ""))

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
    return Markup(line, mode, text, words, spans, elements, points, children, stacks, spelling)


def _fold_wordless(tokens: list[Token], pairs: dict[int, int]) -> tuple[list[Token], set[int], set[int]]:
    """Each outermost element without a word (its text, if any, all whitespace) as one point.

    Returns: the tokens, the indices of the points that held whitespace (they still separate the
    words around them, though their whitespace goes with them, not to the model), and the indices
    of all such points.
    """
    folded, separating, wordless, k = [], set(), set(), 0
    while k < len(tokens):
        end = pairs.get(k)
        inside = tokens[k : end + 1] if end is not None else []
        if inside and all(t.kind != "text" or not t.text.strip() for t in inside):
            if any(t.kind == "text" and t.text for t in inside):
                separating.add(len(folded))
            wordless.add(len(folded))
            folded.append(Token("point", "".join(t.raw for t in inside), tokens[k].text))
            k = end + 1
        else:
            folded.append(tokens[k])
            k += 1
    return folded, separating, wordless


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
