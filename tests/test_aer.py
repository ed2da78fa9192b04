"""AER scorer, gold loader and symmetrization heuristics on small cases worked out by hand."""

import json
import subprocess
import sys

import pytest

from mt.alignment.aer import gold_languages, load_gold, parse_links, read_links, score_alignments
from mt.errors import DataError
from mt.alignment.symmetrize import grow_diag_final_and, symmetrize


def test_scores_by_hand():
    # S = {0-0, 1-1}, P = S + {2-1}; A = {0-0, 2-1, 2-2}
    # |A∩S| = 1, |A∩P| = 2, |A| = 3, |S| = 2
    # precision 2/3, recall 1/2, F1 = 2·(2/3)(1/2)/(2/3 + 1/2) = 4/7, AER = 1 − (1 + 2)/(3 + 2) = 2/5
    sure = [{(0, 0), (1, 1)}]
    possible = [{(0, 0), (1, 1), (2, 1)}]
    scores = score_alignments([[(0, 0), (2, 1), (2, 2)]], sure, possible)
    assert scores.precision == pytest.approx(2 / 3)
    assert scores.recall == pytest.approx(1 / 2)
    assert scores.f1 == pytest.approx(4 / 7)
    assert scores.aer == pytest.approx(2 / 5)
    assert (scores.n_pairs, scores.n_predicted, scores.n_sure, scores.n_possible) == (1, 3, 2, 3)


def test_scores_sum_counts_over_the_corpus_not_sentence_averages():
    # pair 1: A = {0-0} = S → 1 of 1; pair 2: A = {0-0, 1-0, 2-0}, S = {0-0}, P adds nothing
    # corpus: |A| = 4, |S| = 2, |A∩S| = |A∩P| = 2 → precision 1/2, recall 1, AER = 1 − 4/6 = 1/3
    scores = score_alignments([{(0, 0)}, {(0, 0), (1, 0), (2, 0)}], [{(0, 0)}, {(0, 0)}], [set(), set()])
    assert scores.precision == pytest.approx(1 / 2)
    assert scores.recall == pytest.approx(1.0)
    assert scores.aer == pytest.approx(1 / 3)


def test_possible_links_alone_cost_nothing_in_recall():
    # only possible gold links, predicted exactly: precision 1, recall 0/0 → 0, AER = 1 − 1/1 = 0
    scores = score_alignments([{(0, 1)}], [set()], [{(0, 1)}])
    assert scores.precision == 1.0 and scores.aer == 0.0


def test_empty_prediction_has_aer_one():
    scores = score_alignments([set()], [{(0, 0)}], [{(0, 0)}])
    assert scores.aer == 1.0 and scores.precision == 0.0 and scores.recall == 0.0


def test_parse_links_sure_possible_one_based_and_reversed():
    sure, possible = parse_links("1-2 3p1 2?2", one_based=True)
    assert sure == {(0, 1)}
    assert possible == {(0, 1), (2, 0), (1, 1)}
    sure, possible = parse_links("0-2 1p0", reverse=True)
    assert sure == {(2, 0)} and possible == {(2, 0), (0, 1)}
    with pytest.raises(ValueError, match="1-based"):
        parse_links("0-1", one_based=True)
    with pytest.raises(ValueError, match="not a link"):
        parse_links("1x2")


def write_gold(folder, name, pairs, links):
    (folder / f"{name}.src-tgt").write_text("".join(f"{s} ||| {t}\n" for s, t in pairs), encoding="utf-8")
    (folder / f"{name}.talp").write_text("".join(line + "\n" for line in links), encoding="utf-8")
    return folder / name


def test_load_gold_reads_the_layout_and_orients_it(tmp_path):
    prefix = write_gold(tmp_path, "encs", [("a big dog", "velký pes"), ("hello", "ahoj")], ["2-1 3-2 1p1", "1-1"])
    gold = load_gold(prefix)
    assert (gold.src_lang, gold.tgt_lang) == ("en", "cs")
    assert gold.src == ["a big dog", "hello"] and gold.tgt == ["velký pes", "ahoj"]
    assert gold.sure == [{(1, 0), (2, 1)}, {(0, 0)}]
    assert gold.possible == [{(1, 0), (2, 1), (0, 0)}, {(0, 0)}]
    flipped = gold.oriented("cs", "en")
    assert flipped.src == gold.tgt and flipped.sure[0] == {(0, 1), (1, 2)}
    assert gold.oriented("en", "cs") is gold
    with pytest.raises(ValueError, match="en-cs"):
        gold.oriented("de", "en")
    assert load_gold(tmp_path / "encs.talp").src == gold.src  # either file names the set


@pytest.mark.parametrize(
    "pairs, links, message",
    [
        ([("a b", "c")], ["3-1"], r"encs.talp:1: link 3-1 is outside a 2×1-word pair"),
        ([("a b", "c"), ("d", "e")], ["1-1"], "has 2 pairs but .* has 1 lines"),
        ([("a b", "c")], ["1-1 0-1"], r"encs.talp:1: .*1-based"),
    ],
)
def test_load_gold_names_the_bad_file_and_line(tmp_path, pairs, links, message):
    prefix = write_gold(tmp_path, "encs", pairs, links)
    with pytest.raises(DataError, match=message):
        load_gold(prefix)


def test_load_gold_rejects_lines_without_separator_and_unknown_names(tmp_path):
    (tmp_path / "encs.src-tgt").write_text("no separator here\n")
    (tmp_path / "encs.talp").write_text("1-1\n")
    with pytest.raises(DataError, match=r"encs.src-tgt:1: expected 'SRC \|\|\| TGT'"):
        load_gold(tmp_path / "encs")
    write_gold(tmp_path, "czech", [("a", "b")], ["1-1"])
    with pytest.raises(DataError, match="cannot tell the languages"):
        load_gold(tmp_path / "czech")
    assert load_gold(tmp_path / "czech", "en", "cs").sure == [{(0, 0)}]


@pytest.mark.parametrize("name, langs", [("encs", ("en", "cs")), ("de-en", ("de", "en")), ("ron_eng", ("ron", "eng"))])
def test_gold_languages(name, langs):
    assert gold_languages(name) == langs


def test_read_links_names_file_and_line(tmp_path):
    path = tmp_path / "gold.txt"
    path.write_text("0-0\n1-1 bad\n")
    with pytest.raises(DataError, match=r"gold.txt:2: not a link: 'bad'"):
        read_links(path)


# ------------------------------------------------------------------------------ symmetrization
def test_intersect_and_union():
    forward, reverse = {(0, 0), (1, 1)}, {(0, 0), (2, 1)}
    assert symmetrize(forward, reverse, "intersect") == {(0, 0)}
    assert symmetrize(forward, reverse, "union") == {(0, 0), (1, 1), (2, 1)}
    with pytest.raises(ValueError, match="grow-diag-final-and"):
        symmetrize(forward, reverse, "grow")


def test_grow_diag_does_not_add_links_between_aligned_words():
    # intersection: the diagonal 0-0 1-1 2-2; the union adds 0-2 and 2-0, diagonal neighbours
    # of 1-1, but their source and target words are both aligned already → not added
    forward = {(0, 0), (1, 1), (2, 2), (0, 2)}
    reverse = {(0, 0), (1, 1), (2, 2), (2, 0)}
    assert grow_diag_final_and(forward, reverse) == {(0, 0), (1, 1), (2, 2)}


def test_grow_diag_then_final_and():
    # intersection {0-0}; grow: 1-1 (diagonal of 0-0, source 1 unaligned), then 2-1 (below 1-1,
    # source 2 unaligned); 3-4 touches nothing but final-and adds it (both words unaligned);
    # 4-1 is neither adjacent nor between unaligned words (target 1 is aligned) → left out
    forward = {(0, 0), (1, 1), (3, 4), (4, 1)}
    reverse = {(0, 0), (2, 1)}
    assert grow_diag_final_and(forward, reverse) == {(0, 0), (1, 1), (2, 1), (3, 4)}
    assert (4, 1) in symmetrize(forward, reverse, "union")


# ---------------------------------------------------------------------------------- the CLI
def run_score(*args):
    return subprocess.run(
        [sys.executable, "-c", "from mt.cli import align_score_main; align_score_main()", *map(str, args)],
        capture_output=True, text=True,
    )


def test_align_score_cli_reverses_and_rebases_gold(tmp_path):
    # gold is target-first and 1-based: "1-2" = tgt 0 ↔ src 1, "1p1" = tgt 0 ↔ src 0 (possible)
    (tmp_path / "gold.talp").write_text("1-2 2-3 1p1\n")
    (tmp_path / "pred.txt").write_text("1-0 0-0 0-1\n")  # src-tgt, 0-based
    result = run_score(tmp_path / "gold.talp", tmp_path / "pred.txt", "--one-based-gold", "--reverse-gold", "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    # S = {1-0, 2-1}, P = S + {0-0}; A = {1-0, 0-0, 0-1}: |A∩S| = 1, |A∩P| = 2 → AER = 1 − 3/5
    assert scores["aer"] == pytest.approx(0.4)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(0.5)
    text = run_score(tmp_path / "gold.talp", tmp_path / "pred.txt", "--one-based-gold", "--reverse-gold").stdout
    assert "AER: 40.00%" in text and "precision: 66.67%" in text


def test_align_score_cli_errors_are_one_line(tmp_path):
    (tmp_path / "gold.talp").write_text("1-1\n2-2\n")
    (tmp_path / "pred.txt").write_text("0-0\n")
    result = run_score(tmp_path / "gold.talp", tmp_path / "pred.txt", "--one-based-gold")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"mt-align-score: error: {tmp_path / 'pred.txt'} has 1 lines but {tmp_path / 'gold.talp'} has 2"]
    (tmp_path / "pred.txt").write_text("0-0\n0p1\n")
    result = run_score(tmp_path / "gold.talp", tmp_path / "pred.txt", "--one-based-gold")
    assert "pred.txt:2: not a Pharaoh link" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "pred.txt").write_text("0-0\n1-1\n")
    result = run_score(tmp_path / "gold.talp", tmp_path / "pred.txt")  # forgot --one-based-gold
    assert "never uses position 0" in result.stderr
