"""Messy input never crashes and never changes the number of lines; property-based where it matters."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mt.alignment.aer import format_pharaoh, parse_pharaoh
from mt.model.checkpoint import save_checkpoint
from mt.config import DecodingConfig, TokenizerConfig, to_dict
from mt.data.lines import split_lines
from mt.inference.evaluate import translate
from mt.model.transformer import Transformer
from mt.data.tokenizer import Tokenizer

from conftest import tiny_config

BIN = Path(sys.executable).parent
TEXTS = ["Ein Hund rennt im Park.", "Zwei Männer spielen Fußball.", "Eine Frau liest ein Buch."] * 30
ONE_LINE = st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=40)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TEXTS, TEXTS, TokenizerConfig(vocab_size=60))


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    cfg = tiny_config(max_positions=16)
    return Transformer(cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).eval()


def test_split_lines_splits_on_newline_only():
    raw = "a\x0cb\u2028c\x1e\r\nsecond\rstill second\n\nlast".encode()
    assert split_lines(raw, "test") == ["a\x0cb\u2028c\x1e", "second\rstill second", "", "last"]
    assert split_lines(b"", "test") == []
    assert split_lines(b"\n", "test") == [""]


def test_invalid_utf8_is_replaced_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        lines = split_lines(b"ok\nbad \xff\xfe byte\n", "input.txt")
    assert lines == ["ok", "bad \ufffd\ufffd byte"]
    assert "input.txt: invalid UTF-8" in caplog.text


@given(st.lists(ONE_LINE, max_size=20))
def test_stdin_lines_round_trip(lines):
    lines = [line.rstrip("\r") for line in lines]
    raw = "".join(line + "\n" for line in lines).encode("utf-8")
    assert split_lines(raw, "stdin") == lines


@given(st.lists(st.tuples(st.integers(0, 500), st.integers(0, 500)), max_size=30))
def test_pharaoh_round_trip_property(links):
    assert parse_pharaoh(format_pharaoh(links)) == links


@given(st.lists(st.sampled_from("EinHundrentmParkZweiMänerFußbal."), min_size=1, max_size=30), st.data())
def test_tokenizer_round_trip_property(characters, data):
    words = "".join(characters)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(words) - 1, 1)), max_size=4)))
    text = " ".join(words[i:j] for i, j in zip([0, *cuts], [*cuts, len(words)]) if words[i:j])
    tokenizer = Tokenizer.train(TEXTS, TEXTS, TokenizerConfig(vocab_size=60))
    assert tokenizer.decode_tgt(tokenizer.encode_tgt([text])) == [text]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ONE_LINE, max_size=6))
def test_translate_returns_one_line_per_input_line(model, tokenizer, lines):
    outputs = translate(model, tokenizer, lines, DecodingConfig(beam_size=2, max_len_a=0.0, max_len_b=3, batch_size=4))
    assert len(outputs) == len(lines)
    assert all("\n" not in out for out in outputs)
    assert [out for line, out in zip(lines, outputs) if not line.strip()] == [""] * sum(not line.strip() for line in lines)


def test_console_scripts_survive_messy_input(tmp_path, model, tokenizer):
    save_checkpoint(
        {
            "model_config": to_dict(model.cfg),
            "model": model.state_dict(),
            "tokenizer": tokenizer.state(),
            "data": {"src_lang": "de", "tgt_lang": "en"},
            "decoding": {"beam_size": 2, "max_len_b": 3},
        },
        tmp_path / "model.pt",
    )
    lines = [
        "Ein Hund rennt.",
        "",
        "ctrl\x00\x07\x1b[31m chars\x0c and\u2028separators",
        "שלום עולם مرحبا بالعالم",
        "emoji 🐕‍🦺🏳️‍🌈 and mixed Ελληνικά 中文",
        " ".join(["lang"] * 200),  # far beyond max_positions=16
        "   ",
    ]
    raw = ("\n".join(lines) + "\n").encode() + b"invalid \xff\xfe utf-8\n"
    result = subprocess.run(
        [str(BIN / "mt-translate"), str(tmp_path / "model.pt")], input=raw, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode("utf-8").split("\n")
    assert len(out) == len(lines) + 2 and out[-1] == ""  # one line per input line, newline-terminated
    assert out[1] == "" and out[6] == ""
    stderr = result.stderr.decode()
    assert "truncated" in stderr and "invalid UTF-8" in stderr

    (tmp_path / "src.txt").write_bytes(raw)
    (tmp_path / "tgt.txt").write_bytes(raw)
    result = subprocess.run(
        [str(BIN / "mt-align"), str(tmp_path / "model.pt"), "--src", str(tmp_path / "src.txt"),
         "--tgt", str(tmp_path / "tgt.txt"), "--out", str(tmp_path / "align"), "--plot"],
        capture_output=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert "truncated" in result.stderr.decode()
    assert len((tmp_path / "align" / "alignments.txt").read_text().split("\n")) == len(lines) + 2
    assert len(list((tmp_path / "align" / "plots").glob("*.png"))) == len(lines) + 1


@pytest.mark.parametrize(
    "src, ref, message",
    [("a\nb\n", "a\n", "has 2 lines but"), ("", "", "is empty")],
)
def test_evaluate_file_mistakes_name_the_file(tmp_path, model, tokenizer, src, ref, message):
    save_checkpoint(
        {"model_config": to_dict(model.cfg), "model": model.state_dict(), "tokenizer": tokenizer.state(),
         "data": {"src_lang": "de", "tgt_lang": "en"}},
        tmp_path / "model.pt",
    )
    (tmp_path / "s.de").write_text(src)
    (tmp_path / "r.en").write_text(ref)
    result = subprocess.run(
        [str(BIN / "mt-evaluate"), str(tmp_path / "model.pt"), "--src", str(tmp_path / "s.de"), "--ref", str(tmp_path / "r.en")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr and "s.de" in result.stderr


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(ONE_LINE, ONE_LINE), min_size=1, max_size=4), st.sampled_from(["attention", "shift"]))
def test_word_alignment_never_crashes_and_links_stay_on_words(model, tokenizer, pairs, method):
    """Any text — zero-width or deleted characters, emoji, words past model.max_positions — gives
    one alignment per pair whose links point at real whitespace words."""
    from mt.alignment.align import align

    sources, targets = [s for s, _ in pairs], [t for _, t in pairs]
    for a, src, tgt in zip(align(model, tokenizer, sources, targets, method=method), sources, targets):
        assert a.src_words == src.split() and a.tgt_words == tgt.split()
        assert all(0 <= i < len(a.src_words) and 0 <= j < len(a.tgt_words) for i, j in a.links)
        assert len({j for _, j in a.links}) == len(a.links)  # argmax: at most one link per target word
