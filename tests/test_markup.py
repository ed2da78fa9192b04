"""mt.inference.markup (parse, place, render) on hand-made cases, the failure modes users reported of
Bergamot and ModernMT, a hostile set and random lines; mt-translate --markup end to end."""

from __future__ import annotations

import html
import json
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mt.cli import translate_main
from mt.inference.markup import MAX_GAP, MarkupError, markup_problems, parse, place, tokenize, transfer

from conftest import random_model, save_inference_checkpoint
from test_translate_nbest import run_cli

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from markup_eval import HOSTILE, tag_sources  # noqa: E402


def monotone(markup) -> list[tuple[int, int]]:
    return [(i, i) for i in range(len(markup.words))]


def tag_inside_a_word(line: str, mode: str = "html") -> bool:
    """A tag or point between two word characters (``wo<b>rd``)."""
    tokens = tokenize(line, mode)
    return any(
        tokens[k].kind != "text" and tokens[k - 1].kind == tokens[k + 1].kind == "text"
        and tokens[k - 1].text[-1:].isalnum() and tokens[k + 1].text[:1].isalnum()
        for k in range(1, len(tokens) - 1)
    )  # fmt: skip


def carried(line: str, translation: str, links, mode: str = "html") -> str:
    """Transfer, and check the promises that hold for any alignment: every tag exactly once, still
    paired, the translation as the output's text, and no tag inside a word unless the source had one."""
    output = transfer(parse(line, mode), translation, links)
    assert markup_problems(line, output, mode) == []
    assert parse(output, mode).words == translation.split()
    assert tag_inside_a_word(line, mode) or not tag_inside_a_word(output, mode)
    return output


def identity(line: str, mode: str = "html") -> str:
    markup = parse(line, mode)
    return transfer(markup, markup.text, monotone(markup))


# ------------------------------------------------------------------------- parsing and round trips
ROUND_TRIPS = [
    ("html", 'Ein <b class="x">roter</b> Ball.'),
    ("html", 'Ein <a href="/p?a=1&amp;b=2" title=\'say "hi" > there\'>roter Ball</a> &amp; caf&eacute; &#8364;5 &lt;3.'),
    ("html", "<p>Zwei <i>Männer <b>spielen</b></i> Fußball.</p>"),
    ("html", "„<b>Hallo</b>“, sagte <I>er</I><br/> <!-- x <b> --><b></b>."),
    ("html", "<td>&nbsp;</td> Ein <span title=\"Grüße\">Hund</span> <script>if (a<b) x='</b>';</script>rennt."),
    ("xml", '<x:g id="1">Ein</x:g> <ph/>Ball &lt;3 &#x263A;<![CDATA[ a < b ]]> <?pi x?>'),
]


@pytest.mark.parametrize("mode, line", ROUND_TRIPS)
def test_tokens_concatenate_to_the_line_and_a_monotone_alignment_gives_it_back(mode, line):
    assert "".join(token.raw for token in tokenize(line, mode)) == line
    markup = parse(line, mode)
    assert transfer(markup, markup.text, monotone(markup)) == line  # entities and attributes byte for byte


def test_text_is_the_decoded_text_without_markup():
    markup = parse('Ein <b title="a>b">roter</b> Ball &amp; caf&eacute;<!-- nicht --><script>x</script>.', "html")
    assert markup.text == "Ein roter Ball & café."
    assert markup.words == ["Ein", "roter", "Ball", "&", "café."]
    assert [raw for _, _, raw in markup.spelling] == ["Ein ", "roter", " Ball ", "&amp;", " caf", "&eacute;", "."]
    assert parse("eins<br>zwei<p>drei</p>vier", "html").words == ["eins", "zwei", "drei", "vier"]  # block tags break
    assert parse("eins<b>zwei</b>", "html").words == ["einszwei"]
    assert parse("eins<br/>zwei", "xml").words == ["einszwei"]  # no tag breaks words in XML


def test_references_keep_the_source_spelling_and_the_translation_is_escaped():
    line = "caf&eacute; &amp; &#8364;"
    assert carried(line, "€ & café", [(2, 0), (1, 1), (0, 2)]) == "&#8364; &amp; caf&eacute;"
    assert carried("a b", "x < y & z > w &amp &not", []) == "x &lt; y & z > w &amp;amp &amp;not"  # only what must be
    assert carried("a b", "x < y & z > w", [], "xml") == "x &lt; y &amp; z > w"


@pytest.mark.parametrize(
    "mode, line, message",
    [
        ("html", "Ein <b roter Ball", "unterminated tag at column 5"),
        ("html", "Ein <!-- Kommentar", "unterminated comment at column 5"),
        ("xml", "Ein <b>roter</i> Ball", "mismatched tag at column 13"),  # expat points at the name, we at "</"
        ("xml", "Ein <b>roter Ball", "an element is not closed by the end of the line"),
        ("xml", "Ein&nbsp;Ball", "undefined entity at column 4"),
    ],
)
def test_malformed_lines_raise_one_line_errors(mode, line, message):
    with pytest.raises(MarkupError) as error:
        parse(line, mode)
    assert str(error.value) .startswith(message) and "\n" not in str(error.value)


def test_html_tolerates_unbalanced_tags_and_carries_them_as_points():
    line = "Ein </i> roter <b>Ball <u>rennt</b> weg"
    markup = parse(line, "html")
    assert [e.start for e in markup.elements] == ["<b>"]
    assert sorted(p.raw for p in markup.points) == ["</i>", "<u>"]
    assert carried(line, "A red ball runs away", [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]) == (
        "A </i>red <b>ball <u>runs</b> away"
    )


# ----------------------------------------------------------------- the failure modes users reported
def test_a_tag_inside_a_word_covers_the_whole_target_word():
    """bergamot-translator #253, #312: tags inside words must not split target words."""
    assert carried("Ein <b>ro</b>ter Ball", "A red ball", [(0, 0), (1, 1), (2, 2)]) == "A <b>red</b> ball"
    assert carried("Das ist un<i>glaub</i>lich.", "This is incredible.", [(0, 0), (1, 1), (2, 2)]) == (
        "This is <i>incredible.</i>"
    )


def test_a_tag_on_part_of_a_word_is_not_swallowed():
    """bergamot-translator #288: a tag on part of a word must not vanish."""
    assert carried("Die <b>Haus</b>tür", "The front door", [(0, 0), (1, 1), (1, 2)]) == "The <b>front door</b>"


def test_empty_and_void_elements_are_kept_before_the_first_target_word_after_them():
    """bergamot-translator #267: empty elements were dropped."""
    line = "Ein <img src='a.png'> roter <span class=\"c\"></span>Ball."
    assert carried(line, "A red ball.", [(0, 0), (1, 1), (2, 2)]) == "A <img src='a.png'>red <span class=\"c\"></span>ball."
    # reordered: <br> stood before "gestern", so it goes before the first target word aligned after it
    assert carried("Er hat <br>gestern angerufen", "He called yesterday", [(0, 0), (3, 1), (2, 2)]) == (
        "He <br>called yesterday"
    )
    assert carried("Ein Hund<br>", "A dog", [(0, 0), (1, 1)]) == "A dog<br>"
    assert carried("<br>Ein Hund", "A dog", [(0, 0), (1, 1)]) == "<br>A dog"


def test_punctuation_stays_on_its_side_of_a_tag():
    """modernmt #399: punctuation moved to the wrong side of a closing tag."""
    assert carried("Er sagte <b>Hallo</b>.", "He said hello.", [(0, 0), (1, 1), (2, 2)]) == "He said <b>hello</b>."
    assert carried("<b>Hallo</b>, Welt", "Hello, world", [(0, 0), (1, 1)]) == "<b>Hello</b>, world"
    assert carried("<b>Hallo,</b> Welt", "Hello, world", [(0, 0), (1, 1)]) == "<b>Hello,</b> world"
    assert carried("„<i>Ja</i>“, sagte er", 'He said "yes".', [(0, 2), (1, 1), (2, 0)]) == 'He said "<i>yes</i>".'
    assert carried("<b>Hallo</b>!", "Hello", [(0, 0)]) == "<b>Hello</b>"  # no punctuation in the target word
    assert carried("(<b><i>Hallo</i></b>)", "(Hello)", [(0, 0)]) == "(<b><i>Hello</i></b>)"


def test_an_element_is_emitted_once_across_a_short_gap():
    """Bergamot merges adjacent ``</b><b>``; here an element never opens twice: up to MAX_GAP words
    between two of its words join it, a longer gap leaves the smaller run out."""
    assert MAX_GAP >= 1
    assert carried("<b>rote große</b> Ball", "red and big ball", [(0, 0), (1, 2), (2, 3)]) == "<b>red and big</b> ball"
    two = carried("<b>rief</b> ihn sofort <b>an</b>", "called him at once", [(0, 0), (1, 1), (2, 2), (3, 0)])
    assert two == "<b>called</b> him at once<b></b>"  # two elements for one word: the first keeps it
    split = carried("<u>a b c</u> d e f", "A D E F B C", [(0, 0), (1, 4), (2, 5), (3, 1), (4, 2), (5, 3)])
    assert split == "A D E F <u>B C</u>"  # the larger run keeps the tag; once, contiguous


def test_an_element_whose_words_vanish_is_written_empty_at_its_place():
    assert carried("Ein <b>sehr</b> roter Ball", "A red ball", [(0, 0), (2, 1), (3, 2)]) == "A <b></b>red ball"
    line = "Ein <a href='x'><b>sehr <br/>sehr</b> <!-- c --></a> roter Ball"
    assert carried(line, "A red ball", [(0, 0), (3, 1), (4, 2)]) == "A <a href='x'><b><br/></b><!-- c --></a>red ball"
    assert carried("<b>Hallo</b> <i>Welt</i>", "", []) == "<b></b><i></i>"


def test_closing_tags_go_before_the_space_and_opening_tags_after_it():
    line = "<b>eins zwei</b>  <i>drei</i>"
    assert carried(line, "one  two three", [(0, 0), (1, 1), (2, 2)]) == "<b>one  two</b> <i>three</i>"


def test_nested_and_sibling_elements_follow_reordering_and_stay_nested():
    line = "<p>Das <b>Auto <i>meines</i> Vaters</b> ist rot</p>"
    links = [(0, 1), (1, 3), (2, 0), (3, 2), (4, 4), (5, 5)]  # My father's car ... (for the test)
    assert carried(line, "My father 's car is red", links) == "<p><b><i>My</i> father 's car</b> is red</p>"
    assert carried("<b>Hund</b> <i>Katze</i>", "cat dog", [(0, 1), (1, 0)]) == "<i>cat</i> <b>dog</b>"


def test_siblings_claiming_one_word_are_cut_apart_and_both_kept():
    output = carried("<b>sehr</b> <i>gut</i>", "great", [(0, 0), (1, 0)])
    assert output in ("<b>great</b><i></i>", "<b></b><i>great</i>")
    intervals = place(parse("<b>a b</b> <i>c d</i>", "html"), 3, [(0, 0), (1, 1), (2, 1), (3, 2)])
    assert intervals[0][1] < intervals[1][0]  # disjoint


def test_elements_sharing_a_word_nest_and_crossing_ones_give_the_word_up():
    markup = parse("x<i>a</i><b>b</b> y", "html")  # one word: the later element nests in the earlier
    assert markup.elements[1].parent == 0 and markup.stacks[0] == [0, 1]
    assert carried("x<i>a</i><b>b</b> y", "XAB Y", [(0, 0), (1, 1)]) == "<i><b>XAB</b></i> Y"
    markup = parse("a <b>b c</b><i>d e</i> f", "html")  # "cd" is in both: the later one gives it up
    assert [(e.first, e.last) for e in markup.elements] == [(1, 2), (3, 3)]


# ------------------------------------------------------------------- defects found by fuzzing (one each)
@pytest.mark.parametrize("line", ["Wir machen R&D", "AT&T", "Q&A und B&B", "a &", "x &amp y &amp; z", "&foo; bar"])
def test_a_bare_ampersand_is_text_and_never_lost(line):
    markup = parse(line, "html")
    assert markup.text == html.unescape(line)  # the model gets every character: "R&D", not "RD"
    assert identity(line) == line


@pytest.mark.parametrize(
    "line", ["caf&eacute; caf&#233; caf&#xE9; café", "ä und &#228;", "AT&T &amp; AT&amp;T", "a&nbsp;b&#160;c"]
)
def test_each_reference_keeps_its_own_spelling_per_occurrence(line):
    assert identity(line) == line


def test_translated_words_are_escaped_only_where_they_must_be():
    markup = parse("<b>R&amp;D</b> caf&eacute;", "html")
    output = transfer(markup, "R&D café AT&T &amp", [(0, 0), (1, 1)])
    assert output == "<b>R&amp;D</b> caf&eacute; AT&T &amp;amp"  # copies as spelled; new text as little as possible
    assert parse(output, "html").text == "R&D café AT&T &amp"


def test_cut_compares_a_claim_with_every_kept_sibling():
    """_cut compared a claim only with the last kept sibling, by start: <u> was emptied."""
    links = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (1, 4), (1, 5), (1, 6), (1, 7), (2, 3)]
    output = carried("<b>x</b> <i>y</i> <u>z</u>", "t0 t1 t2 t3 t4 t5 t6 t7", links)
    assert "<u>t3</u>" in output


def test_a_whitespace_only_element_never_splits_a_word_from_its_punctuation():
    output = carried("„<u>Hallo <b> </b></u>“ sagte er", "He said „hello“", [(0, 2), (2, 0), (3, 1)])
    assert "„hello“" in parse(output, "html").words and "<b> </b>" in output


def test_void_tags_at_one_boundary_keep_their_order():
    for links in ([(0, 0), (2, 1), (1, 2)], [(0, 0), (1, 1), (2, 2)], [(2, 0), (0, 1), (1, 2)]):
        output = carried("x <br/>a<img/> b", "X B A", links)
        assert output.index("<br/>") < output.index("<img/>")


@pytest.mark.parametrize(
    "line, translation, links",
    [
        ("<b>a</b> <B>b c", "T0 T1 T2 T3", [(2, 1), (0, 2), (0, 0), (2, 0), (2, 2), (1, 1)]),
        ("<i>a <b>b</b> c <B>d</i> e", "T0 T1 T2 T3", [(3, 1), (0, 0), (1, 0), (1, 2), (2, 3), (3, 2), (0, 2)]),
        ("a <b>b</b> c</b> d", "T0 T1 T2", [(2, 0), (3, 1), (1, 2), (3, 0)]),
        ("x </b> y <b>z</b>", "T0", [(1, 0), (2, 0), (0, 0)]),
        ("<p>a b</p> c<p>d e", "T0 T1 T2 T3 T4", [(1, 2), (3, 2), (0, 4), (4, 3), (0, 2), (2, 2)]),
    ],
)
def test_a_stray_tag_stays_out_of_the_elements_of_its_name(line, translation, links):
    """In malformed HTML a stray <B> (or </b>) moved inside <b>…</b> takes its partner."""
    carried(line, translation, links)  # markup_problems: every tag keeps its partner, by occurrence


@pytest.mark.parametrize("line", ['<?xml version="1.0"?> Ein <b>Hund</b>', "<!DOCTYPE x> <b>Hund</b>", "<!-- c --><?pi x?>a"])
def test_xml_prolog_passes_through(line):
    assert identity(line, "xml") == line
    assert carried(line, "A dog", [(0, 0), (1, 1)], "xml").startswith(line[: line.index(">") + 1])


@pytest.mark.parametrize(
    "line, column",
    [("&foo; x", 1), ("a <!DOCTYPE x>", 3), ("x <?xml version='1.0'?>", 3), ("a &nbsp; b", 3), ("<b>a</i>", 5),
     ("ü <b x=1>", 3), ("<b a='1' a='2'>x</b>", 1)],
)
def test_xml_errors_name_the_column_where_the_construct_starts(line, column):
    with pytest.raises(MarkupError, match=f"at column {column}$"):
        parse(line, "xml")


def test_markup_problems_pairs_tags_by_occurrence():
    assert markup_problems("<p>a b</p> c<p>d e", "<p>X<p> Y Z</p> W", "html") == [
        "'<p>' #1: paired in the source, not in the output",
        "'<p>' #2: paired in the output only",
    ]
    assert markup_problems("<b>x</B> <b>y</b>", "<b>Y</b> <b>X</B>", "html") == []  # reordered: partners traded
    assert markup_problems("<p>a b</p> c<p>d e", "<p>X Y</p> Z<p>W", "html") == []


def test_the_carried_check_sees_a_tag_inside_a_word():
    assert tag_inside_a_word("wo<b>rd</b>") and tag_inside_a_word("a wo<!-- c -->rd")
    assert not tag_inside_a_word("<b>word</b>, „<i>x</i>“ a<br>")

    def split(markup, translation, links):  # a transfer that puts the tag inside the word
        return translation[:1] + markup.elements[0].start + translation[1:] + markup.elements[0].end

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys.modules[__name__], "transfer", split)
        with pytest.raises(AssertionError):
            carried("Ein <b>Hund</b>", "dog", [(1, 0)])


# --------------------------------------------------------------------------------- the hostile set
@pytest.mark.parametrize("line", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_lines_keep_every_tag_under_any_alignment(line):
    markup = parse(line, "html")
    rng = random.Random(0)
    n_src = len(markup.words)
    for n_tgt in (0, 1, 3, max(n_src, 1), n_src + 4):
        translation = " ".join(f"w{j}ü" for j in range(n_tgt))
        for _ in range(4):
            links = [(rng.randrange(n_src), rng.randrange(n_tgt)) for _ in range(rng.randint(0, 2 * n_src))] if n_src and n_tgt else []
            carried(line, translation, links)
    carried(line, markup.text, monotone(markup))


ODD_LINES = [
    "</>", "a</>b", "<!>", "a <3 b", "1 < 2 > 1", "<p>a<p>b", "<b>a</b\n>", "<svg><path d='M0 0'/></svg> x",
    "a\nb<b>c</b> d", "&#x110000; x", "<b>&#10;</b>x", "a<b> </b>b", "<B>a</b>", "x &amp y",
]


@pytest.mark.parametrize("line", ODD_LINES, ids=range(len(ODD_LINES)))
def test_what_the_html_tokenizer_skips_or_tolerates_is_still_carried(line):
    assert "".join(token.raw for token in tokenize(line, "html")) == line  # "</>" is skipped by html.parser
    markup = parse(line, "html")
    rng = random.Random(0)
    for n_tgt in (0, 1, 3):
        links = [(rng.randrange(len(markup.words)), rng.randrange(n_tgt)) for _ in range(3)] if markup.words and n_tgt else []
        carried(line, " ".join(f"t{j}" for j in range(n_tgt)), links)


def test_the_checker_sees_lost_added_and_unpaired_tags():
    assert markup_problems("<b>a</b> b", "a b", "html") == ["missing '<b>' ×1", "missing '</b>' ×1"]
    assert markup_problems("a", "<br>a", "html") == ["added '<br>' ×1"]
    assert markup_problems("<b>a</b> <i>b</i>", "<b>a <i>b</b></i>", "html") == [
        "'<i>' #1: paired in the source, not in the output",
        "'</i>' #1: paired in the source, not in the output",
    ]
    assert markup_problems("<b>a</b>", "<b>a", "xml")[0].startswith("the output does not parse")
    assert markup_problems("</p>a", "a</p>", "html") == []  # unpaired in the source too


def test_hostile_set_covers_what_the_issue_lists():
    text = "\n".join(HOSTILE)
    for needle in ("<b></b>", "<b>.</b>", "<![CDATA[", "<!--", "<script>", "title='say \"hi\" > there'", "ü"):
        assert needle in text
    assert max(line.count("<span") for line in HOSTILE) >= 20
    assert max(len(tokenize(line, "html")) for line in HOSTILE) >= 1000


# ------------------------------------------------------------------------------- random lines
WORDS = ["Ein", "Hund,", "rennt", "„schnell“", "im", "Park.", "(heute)"]
TAGS = ["b", "i", "span class='x'", 'a href="/p?a=1&amp;b=2"']
POINTS = ["<br/>", "<!-- c -->", "<img src='x.png'/>", "<u></u>"]


@st.composite
def tagged_lines(draw) -> tuple[str, int]:
    """A line built the way render writes: opening tags after the space, closing ones before it,
    points before the opening tags (at the end: after the closing ones); nested or disjoint spans."""
    n = draw(st.integers(1, 7))
    words = [draw(st.sampled_from(WORDS)) for _ in range(n)]
    spans: list[tuple[int, int, str]] = []
    for _ in range(draw(st.integers(0, 6))):
        first = draw(st.integers(0, n - 1))
        last = draw(st.integers(first, n - 1))
        if all(b < first or last < a or (a <= first and last <= b) or (first <= a and b <= last) for a, b, _ in spans):
            spans.append((first, last, draw(st.sampled_from(TAGS))))
    points = {draw(st.integers(0, n)): draw(st.sampled_from(POINTS)) for _ in range(draw(st.integers(0, 3)))}
    order = sorted(range(len(spans)), key=lambda s: (spans[s][0] - spans[s][1], s))  # outermost first
    pieces = []
    for i, word in enumerate(words):
        opens = "".join(f"<{spans[s][2]}>" for s in order if spans[s][0] == i)
        closes = "".join(f"</{spans[s][2].split()[0]}>" for s in reversed(order) if spans[s][1] == i)
        pieces.append(points.get(i, "") + opens + word + closes)
    return " ".join(pieces) + points.get(n, ""), n


@given(tagged_lines())
def test_a_monotone_alignment_reproduces_the_line_as_stack_diffing_writes_it(case):
    """Naive reference: with target word i aligned to source word i, each target word's stack is
    its source word's, and diffing stacks writes the line exactly as it was built."""
    line, _ = case
    markup = parse(line, "html")
    assert transfer(markup, markup.text, monotone(markup)) == line


@given(tagged_lines(), st.integers(0, 9), st.lists(st.tuples(st.integers(0, 8), st.integers(0, 9)), max_size=20))
def test_any_alignment_keeps_every_tag_once_paired_and_the_text(case, n_tgt, links):
    line, _ = case
    carried(line, " ".join(f"t{j}." for j in range(n_tgt)), links)


# ---------------------------------------------------------------------------- the eval's tagging
def test_the_evaluation_tags_leave_the_text_alone_and_cover_every_kind():
    sources = ["A dog runs in the park .", "Two men play football on green grass today ."] * 7 + ["Hi"]
    tagged, spans = tag_sources(sources, seed=0)
    assert tagged == tag_sources(sources, seed=0)[0]  # a fixed seed
    assert [parse(t, "html").words for t in tagged] == [s.split() for s in sources]
    kinds = {span["kind"] for line in spans for span in line}
    assert kinds >= {"single", "nested outer", "nested inner", "adjacent", "one word", "start", "end"}
    assert any("<br/>" in t or "<img" in t for t in tagged)
    for line, line_spans in zip(tagged, spans):
        starts = {e.start: (e.first, e.last) for e in parse(line, "html").elements}
        assert all(starts[s["start_tag"]] == (s["words"][0], s["words"][-1]) for s in line_spans)


# ------------------------------------------------------------------------------ mt-translate --markup
@pytest.fixture(scope="module")
def checkpoint(bilingual_tokenizer, tmp_path_factory):
    model = random_model(bilingual_tokenizer)
    path = tmp_path_factory.mktemp("markup") / "model.pt"
    return save_inference_checkpoint(model, bilingual_tokenizer, path, beam_size=2, max_len_a=0.5, max_len_b=3, batch_size=4)


LINES = [
    'Ein <b class="x">Hund</b> rennt im <i>Park</i>.', "Ein <b>Hund", "<br/>", "", "Zwei M&#228;nner &amp; <u>ein</u> Hund.",
    "Hund &amp; Park",  # no tags: not aligned by --markup, but by --align
]


def test_translate_markup_text_output_carries_tags_and_reports_bad_lines(checkpoint, capsys, monkeypatch):
    stdin = "\n".join(LINES) + "\n"
    code, plain, _ = run_cli(translate_main, [checkpoint], capsys, monkeypatch, stdin="\n".join(
        parse(line, "html").text if "<b>Hund" not in line else "" for line in LINES) + "\n")
    assert code == 0
    code, out, err = run_cli(translate_main, [checkpoint, "--markup", "xml"], capsys, monkeypatch, stdin=stdin)
    assert code == 1
    assert err.splitlines() == ["mt-translate: error: line 2: an element is not closed by the end of the line"]
    outputs = out.splitlines()
    assert len(outputs) == len(LINES) and outputs[1] == "" and outputs[2] == "<br/>" and outputs[3] == ""
    for line, output, translation in zip(LINES, outputs, plain.splitlines()):
        if line != "Ein <b>Hund":
            assert markup_problems(line, output, "xml") == []
            assert parse(output, "xml").words == translation.split()  # the same translation as without --markup


def test_translate_markup_jsonl_has_the_markup_of_every_hypothesis(checkpoint, capsys, monkeypatch):
    stdin = "\n".join(LINES) + "\n"
    code, out, err = run_cli(
        translate_main, [checkpoint, "--markup", "html", "--n-best", "2", "--output-format", "jsonl", "--align"],
        capsys, monkeypatch, stdin=stdin,
    )
    assert code == 0 and err == ""  # html tolerates the unclosed <b>
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == len(LINES)
    for line, record in zip(LINES, records):
        markup = parse(line, "html")
        assert record["source_markup"] == line and record["source"] == markup.text
        hypotheses = record["hypotheses"]
        if markup.text.strip():
            assert len(hypotheses) == 2 and record["translation_markup"] == hypotheses[0]["markup"]
            links = [tuple(link) for link in hypotheses[0]["alignment"]["links"]]
            assert hypotheses[0]["markup"] == transfer(markup, hypotheses[0]["text"], links)
            for h in hypotheses:
                assert markup_problems(line, h["markup"], "html") == []
                assert parse(h["markup"], "html").words == h["text"].split()
        else:
            assert hypotheses == [] and record["translation_markup"] == line.strip()


def test_translate_markup_n_best_text_lines(checkpoint, capsys, monkeypatch):
    code, out, _ = run_cli(
        translate_main, [checkpoint, "--markup", "html", "--n-best", "2", LINES[0], "<br/>"], capsys, monkeypatch
    )
    assert code == 0
    rows = [row.split(" ||| ") for row in out.splitlines()]
    assert [int(i) for i, _, _ in rows] == [0, 0, 1]
    assert rows[2][1:] == ["<br/>", "0.000000"]  # markup alone: nothing to translate, the tags still come out
    assert all(markup_problems(LINES[0], text, "html") == [] for _, text, _ in rows[:2])


def test_translate_markup_with_an_aligner_uses_the_alignment_of_a_fresh_align(bilingual_tokenizer, tmp_path, capsys, monkeypatch):
    """--markup on a checkpoint with an aligner reuses the search's encoder states to align
    (MarkupTransfer): the links it used must be those of align() run afresh on the same pair."""
    from mt.alignment.align import align
    from mt.config import AlignerConfig
    from mt.model.checkpoint import load_for_inference

    model = random_model(bilingual_tokenizer, aligner=AlignerConfig(enabled=True, n_layers=1, n_heads=2, align_heads=1,
                                                                    ffn_dim=64, dropout=0.0))  # fmt: skip
    path = save_inference_checkpoint(model, bilingual_tokenizer, tmp_path / "aligner.pt", beam_size=2, max_len_a=1.0,
                                     max_len_b=4, batch_size=4)  # fmt: skip
    lines = ['Ein <b class="x">Hund</b> rennt im <i>Park</i>.', "Zwei <u>M&auml;nner</u>", "<b>Fußball</b> &amp; Park spielen"]
    code, out, err = run_cli(
        translate_main, [str(path), "--markup", "html", "--n-best", "2", "--output-format", "jsonl", "--align"],
        capsys, monkeypatch, stdin="\n".join(lines) + "\n",
    )
    assert code == 0, err
    records = [json.loads(row) for row in out.splitlines()]
    loaded, tokenizer, info = load_for_inference(path)
    assert info["aligner"]
    for line, record in zip(lines, records):
        markup = parse(line, "html")
        best = record["hypotheses"][0]
        assert best["text"].split()  # something to align
        (fresh,) = align(loaded, tokenizer, [markup.text], [best["text"]], method="aligner")
        assert [tuple(link) for link in best["alignment"]["links"]] == [tuple(link) for link in fresh.links]
        assert best["markup"] == transfer(markup, best["text"], fresh.links)
