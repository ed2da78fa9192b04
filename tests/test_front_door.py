"""The front door for Python: mt.load → Translator.translate / align, mt.train; the CLI agrees
with it, and the doctests of its examples run here."""

import doctest
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import mt
import mt.inference.translator
from mt.alignment.aer import format_pharaoh
from mt.cli import align_main, translate_main
from mt.errors import CheckpointError, ConfigError, DataError, MtError
from mt.inference.evaluate import translate_nbest
from mt.inference.markup import markup_problems, parse
from mt.model.checkpoint import load_checkpoint, load_for_inference

from test_translate_nbest import run_cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKPOINT = FIXTURES / "checkpoint-2dea679.pt"  # tests/fixtures/README.md
SOURCES = ["Ein Hund läuft im Park.", "", "Zwei Männer spielen Fußball.", "Eine Frau sitzt auf einer Bank."]


@pytest.fixture(scope="module")
def translator():
    return mt.load(CHECKPOINT)


@pytest.mark.parametrize("module", [mt, mt.inference.translator], ids=lambda module: module.__name__)
def test_the_examples_in_the_docstrings_run(module):
    """Every method's example, run as a doctest on the committed fixture checkpoint."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = [test for test in finder.find(module, extraglobs={"mt": mt, "CHECKPOINT": str(CHECKPOINT)}) if test.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0 and results.failed == 0  # the report of a failure is in the captured stdout


def test_every_public_translator_method_has_an_example():
    translator_class = mt.inference.translator.Translator
    public = [name for name, member in inspect.getmembers(translator_class, callable) if not name.startswith("_")]
    assert {"load", "translate", "translate_lines", "align", "write_view"} <= set(public)
    for name in public:
        assert ">>>" in (getattr(translator_class, name).__doc__ or ""), name


def test_translate_is_what_mt_translate_prints_and_what_the_search_finds(translator, capsys, monkeypatch):
    code, out, err = run_cli(translate_main, [str(CHECKPOINT)], capsys, monkeypatch, stdin="\n".join(SOURCES) + "\n")
    assert code == 0, err
    translations = translator.translate(SOURCES)
    assert translations == out.split("\n")[:-1] and translations[1] == ""
    # the search itself, on a model loaded without the front door
    model, tokenizer, info = load_for_inference(CHECKPOINT)
    nbest = translate_nbest(model, tokenizer, SOURCES, info["decoding"])
    assert translations == [hypotheses[0].text if hypotheses else "" for hypotheses in nbest]


def test_n_best_gives_k_ranked_hypotheses_led_by_the_one_best(translator):
    nbest = translator.translate(SOURCES, beam_size=4, n_best=3)
    one_best = translator.translate(SOURCES, beam_size=4)
    assert len(nbest) == len(SOURCES) and nbest[1] == []
    for hypotheses, best in zip(nbest[:1] + nbest[2:], one_best[:1] + one_best[2:]):
        assert len(hypotheses) == 3 and hypotheses[0].text == best
        assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)
        assert len({tuple(h.pieces) for h in hypotheses}) == 3
        assert all(sum(h.token_log_probs) == pytest.approx(h.log_prob, abs=1e-4) for h in hypotheses)
    with pytest.raises(ConfigError, match="n_best 3 exceeds the beam size 2"):
        translator.translate(SOURCES, n_best=3)


def test_align_links_are_mt_align_s_pharaoh_line(translator, capsys, monkeypatch):
    source, target = "Ein Hund läuft im Park.", "A dog runs in the park ."
    code, out, err = run_cli(align_main, [str(CHECKPOINT), source, target], capsys, monkeypatch)
    assert code == 0, err
    [pair] = translator.align([source], [target])
    assert format_pharaoh(pair.links) == out.splitlines()[-1]
    assert pair.word_matrix.shape == (len(target.split()), len(source.split()))
    assert pair.word_matrix.sum(axis=1) == pytest.approx(1.0, abs=1e-5)
    # each target word links to its most-attended source word (the default: argmax, no threshold)
    assert pair.links == sorted((int(row.argmax()), j) for j, row in enumerate(pair.word_matrix))


def test_align_without_targets_aligns_each_source_to_its_translation(translator):
    """As the old code's mt-translate --align did (tests/fixtures/checkpoint-2dea679.beam1.jsonl)."""
    old = [json.loads(line) for line in (FIXTURES / "checkpoint-2dea679.beam1.jsonl").read_text().splitlines()]
    sources = [record["source"] for record in old]
    translator = mt.load(CHECKPOINT)
    translator.decoding = translator.with_defaults(beam_size=1)
    for pair, record in zip(translator.align(sources), old, strict=True):
        assert pair.links == [tuple(link) for link in record["hypotheses"][0]["alignment"]["links"]]


def test_translate_with_markup_keeps_every_tag_on_the_translation(translator):
    lines = ['Ein <b class="x">Hund</b> läuft im <i>Park</i>.', "Zwei Männer &amp; <u>ein</u> Ball.", "<br/>"]
    plain = translator.translate([parse(line, "html").text for line in lines])
    marked = translator.translate(lines, markup="html")
    for line, output, translation in zip(lines[:2], marked, plain):
        assert markup_problems(line, output, "html") == []
        assert sorted(re.findall(r"<[^>]+>", output)) == sorted(re.findall(r"<[^>]+>", line))
        assert " ".join(re.sub(r"<[^>]+>", " ", output).replace("&amp;", "&").split()) == " ".join(translation.split())
    assert marked[2] == "<br/>"  # tags only: nothing to translate, the tags stay


def test_markup_that_does_not_parse_is_an_error_naming_the_line(translator):
    with pytest.raises(DataError, match="^line 2: ") as error:
        translator.translate(["Ein <b>Hund</b>.", "Ein <b>Hund"], markup="xml")
    assert "\n" not in str(error.value)
    lines = translator.translate_lines(["Ein <b>Hund</b>.", "Ein <b>Hund"], markup="xml")
    assert lines[1].hypotheses == [] and lines[1].marked == [""] and lines[1].error.startswith("line 2: ")
    assert lines[0].error is None and lines[0].marked[0].count("<b>") == 1


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: mt.load("missing.pt"), CheckpointError, "checkpoint missing.pt not found"),
        (lambda: mt.load(CHECKPOINT, device="gpu"), ConfigError, "'gpu'"),
        (lambda: mt.load(CHECKPOINT, precision="fp8"), ConfigError, "precision fp8"),
        (lambda: mt.load(CHECKPOINT).translate(["Hund"], markup="yaml"), ConfigError, "markup 'yaml'"),
        (lambda: mt.load(CHECKPOINT).align(["Ein Hund"], ["A dog"], method="nope"), MtError, "nope"),
        (lambda: mt.train(["train.no_such_key=1"]), ConfigError, "no_such_key"),
    ],
    ids=["missing-checkpoint", "device", "precision", "markup", "method", "train-override"],
)
def test_mistakes_raise_one_line_errors(call, error, message):
    with pytest.raises(error, match=re.escape(message)) as raised:
        call()
    assert isinstance(raised.value, MtError) and "\n" not in str(raised.value)


def test_train_runs_mt_train_s_code_and_its_checkpoint_loads(tmp_path, multi30k_mirror):
    overrides = [
        "experiment=smoke", "data.max_train_sentences=300", "tokenizer.vocab_size=300", "train.batch_tokens=1024",
        "data.max_valid_sentences=4", "data.max_test_sentences=4", "train.max_steps=5", "train.valid_every=5",
        "train.precision=fp32", "decoding.max_len_b=3", f"data.data_dir={tmp_path / 'data'}",
        *([f"data.mirror={multi30k_mirror}"] if multi30k_mirror else []),
    ]  # fmt: skip
    run_dir = tmp_path / "run"
    scores = mt.train(overrides, out_dir=run_dir)
    assert scores["steps"] == 5 and scores["n_sentences"] == 4
    assert scores == json.loads((run_dir / "test_scores.json").read_text())
    config = load_checkpoint(run_dir / "checkpoints" / "best.pt")["config"]
    assert config["model"]["d_model"] == 64 and config["train"]["max_steps"] == 5  # the experiment, then the overrides
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")) == overrides
    assert len(mt.load(run_dir).translate(["Ein Hund.", "", "Zwei Männer."])) == 3


def test_importing_mt_does_not_import_torch():
    code = "import mt, sys; assert 'torch' not in sys.modules and 'hydra' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
