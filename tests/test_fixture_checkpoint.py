"""A checkpoint written by older code (commit 2dea679, tests/fixtures/README.md) still loads, and
translates and aligns exactly as that code did: through mt.load and through mt-translate."""

import json
from pathlib import Path

import pytest

import mt
from mt.cli import translate_main

from test_translate_nbest import run_cli

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKPOINT = FIXTURES / "checkpoint-2dea679.pt"
SOURCES = (FIXTURES / "checkpoint-2dea679.src.de").read_text(encoding="utf-8")


def old_records(beam_size: int) -> list[dict]:
    """What ``mt-translate CHECKPOINT --beam-size B --output-format jsonl --align`` printed at 2dea679."""
    lines = (FIXTURES / f"checkpoint-2dea679.beam{beam_size}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def assert_same_as_old(records: list[dict], old: list[dict]) -> None:
    """Text, pieces and alignment exactly; scores, log-probs and attention within float noise."""
    assert len(records) == len(old) == 3
    for record, expected in zip(records, old):
        assert record["index"] == expected["index"] and record["source"] == expected["source"]
        assert len(record["hypotheses"]) == len(expected["hypotheses"]) == 1
        [hypothesis], [reference] = record["hypotheses"], expected["hypotheses"]
        assert hypothesis["text"] == reference["text"]
        assert hypothesis["pieces"] == reference["pieces"]
        for key in ("score", "log_prob"):
            assert hypothesis[key] == pytest.approx(reference[key], abs=1e-4), key
        assert hypothesis["token_log_probs"] == pytest.approx(reference["token_log_probs"], abs=1e-4)
        alignment, reference_alignment = hypothesis["alignment"], reference["alignment"]
        for key in ("src_words", "tgt_words", "links", "pharaoh"):
            assert alignment[key] == reference_alignment[key], key
        for row, reference_row in zip(alignment["word_matrix"], reference_alignment["word_matrix"], strict=True):
            assert row == pytest.approx(reference_row, abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_the_old_checkpoint_translates_as_it_did_through_mt_load(beam_size):
    translator = mt.load(CHECKPOINT)
    lines = translator.translate_lines(SOURCES.splitlines(), beam_size=beam_size, align=True)
    assert_same_as_old([line.record(index, alignment=True) for index, line in enumerate(lines)], old_records(beam_size))
    assert translator.translate(SOURCES.splitlines(), beam_size=beam_size) == [
        record["hypotheses"][0]["text"] for record in old_records(beam_size)
    ]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_the_old_checkpoint_translates_as_it_did_through_mt_translate(beam_size, capsys, monkeypatch):
    argv = [str(CHECKPOINT), "--beam-size", str(beam_size), "--output-format", "jsonl", "--align"]
    code, out, err = run_cli(translate_main, argv, capsys, monkeypatch, stdin=SOURCES)
    assert code == 0, err
    assert_same_as_old([json.loads(line) for line in out.splitlines()], old_records(beam_size))
