"""mt-train experiment=smoke → mt-translate → mt-evaluate → mt-align, through the installed console scripts."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sacrebleu

from mt.aer import parse_pharaoh

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def run(*args, stdin=None, env=None):
    result = subprocess.run(
        [str(BIN / args[0]), *map(str, args[1:])], input=stdin, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, multi30k_mirror):
    root = tmp_path_factory.mktemp("smoke")
    args = ["mt-train", "experiment=smoke", f"hydra.run.dir={root / 'run'}", f"data.data_dir={root / 'data'}"]
    if multi30k_mirror:
        args.append(f"data.mirror={multi30k_mirror}")
    run(*args)
    return root / "run", multi30k_mirror, root / "data"


def test_training_writes_every_artefact(smoke_run):
    run_dir, _, _ = smoke_run
    for name in (".hydra/config.yaml", "sentencepiece.model", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100, 150]
    for record in records:
        assert set(record) >= {"step", "epoch", "train_loss", "val_loss", "val_bleu", "lr", "tokens_per_s", "elapsed_s"}
        assert record["tokens_per_s"] > 0 and np.isfinite(record["val_loss"])
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    hypotheses = (run_dir / "test_2016_flickr.hyp.en").read_text(encoding="utf-8").splitlines()
    assert len(hypotheses) == 100
    scores = json.loads((run_dir / "test_scores.json").read_text())
    assert scores["n_sentences"] == 100
    assert scores["bleu_signature"].startswith("nrefs:1|case:mixed") and "tok:13a" in scores["bleu_signature"]
    assert scores["chrf_signature"].startswith("nrefs:1")


def test_translate_arguments_and_stdin(smoke_run):
    run_dir, _, _ = smoke_run
    out = run("mt-translate", run_dir, "Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.").stdout
    lines = out.splitlines()
    assert len(lines) == 2 and all(lines)
    out = run("mt-translate", run_dir / "checkpoints" / "best.pt", "--beam-size", "1", stdin="Ein Hund.\n\nEine Frau singt.\n").stdout
    lines = out.split("\n")
    assert len(lines) == 4 and lines[0] and lines[1] == "" and lines[2] and lines[3] == ""


def test_evaluate_json_matches_sacrebleu_on_its_own_output(smoke_run, tmp_path):
    run_dir, mirror, data_dir = smoke_run
    hyp_file = tmp_path / "hyp.en"
    args = ["mt-evaluate", run_dir, "--json", "--output", hyp_file, "--data-dir", data_dir]
    if mirror:
        args += ["--mirror", mirror]
    result = json.loads(run(*args).stdout)
    assert set(result) == {"bleu", "chrf", "bleu_signature", "chrf_signature", "n_sentences"}
    assert result["n_sentences"] == 1000
    with gzip.open(data_dir / "multi30k" / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]
    hyps = hyp_file.read_text(encoding="utf-8").splitlines()
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)


def test_evaluate_text_output_on_files(smoke_run, tmp_path):
    run_dir, _, _ = smoke_run
    (tmp_path / "src.de").write_text("Ein Hund rennt.\nZwei Männer.\n", encoding="utf-8")
    (tmp_path / "ref.en").write_text("A dog runs.\nTwo men.\n", encoding="utf-8")
    out = run("mt-evaluate", run_dir, "--src", tmp_path / "src.de", "--ref", tmp_path / "ref.en").stdout
    assert out.splitlines()[0].startswith("BLEU = ")
    assert out.splitlines()[1].startswith("chrF2 = ")
    assert "nrefs:1|case:mixed" in out


def test_align_exports_every_file(smoke_run, tmp_path):
    run_dir, _, _ = smoke_run
    sources = ["Ein Hund rennt im Park.", "Zwei Männer spielen Fußball am Strand.", "Eine Frau."]
    targets = ["A dog runs in the park.", "Two men play soccer on the beach.", "A woman."]
    (tmp_path / "src.de").write_text("\n".join(sources) + "\n", encoding="utf-8")
    (tmp_path / "tgt.en").write_text("\n".join(targets) + "\n", encoding="utf-8")
    out = tmp_path / "align"
    run("mt-align", run_dir, "--src", tmp_path / "src.de", "--tgt", tmp_path / "tgt.en", "--out", out, "--plot")

    attention = np.load(out / "attention.npz")
    records = [json.loads(line) for line in (out / "alignments.jsonl").read_text(encoding="utf-8").splitlines()]
    pharaoh = (out / "alignments.txt").read_text().splitlines()
    assert sorted(attention.files) == ["0", "1", "2"] and len(records) == len(pharaoh) == 3
    for k, (record, line) in enumerate(zip(records, pharaoh)):
        matrix = attention[str(k)]
        assert matrix.dtype == np.float32
        assert matrix.shape == (2, 2, len(record["tgt_tokens"]), len(record["src_tokens"]))  # smoke: 2 layers, 2 heads
        np.testing.assert_allclose(matrix.sum(-1), 1.0, atol=1e-4)
        assert record["index"] == k
        assert record["src_words"] == sources[k].split() and record["tgt_words"] == targets[k].split()
        word_matrix = np.array(record["word_matrix"])
        assert word_matrix.shape == (len(record["tgt_words"]), len(record["src_words"]))
        np.testing.assert_allclose(word_matrix.sum(1), 1.0, atol=1e-4)
        assert [list(link) for link in parse_pharaoh(line)] == record["links"]
        assert (out / "plots" / f"{k}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_align_inline_pair_and_self_translation(smoke_run):
    run_dir, _, _ = smoke_run
    lines = run("mt-align", run_dir, "Ein Hund rennt.", "A dog runs.").stdout.splitlines()
    assert lines[0].split() == ["Ein", "Hund", "rennt."]
    assert [line.split()[0] for line in lines[1:4]] == ["A", "dog", "runs."]
    assert len(parse_pharaoh(lines[4])) == 3
    lines = run("mt-align", run_dir, "Ein Hund rennt.").stdout.splitlines()
    assert lines[0].split() == ["Ein", "Hund", "rennt."]
    parse_pharaoh(lines[-1])


def test_user_mistakes_give_one_line_errors(smoke_run, tmp_path):
    run_dir, _, _ = smoke_run
    cases = [
        ["mt-translate", tmp_path / "missing.pt", "Hallo"],
        ["mt-align", run_dir, "Ein Hund.", "A dog.", "--layer", "7"],
        ["mt-evaluate", run_dir, "--src", tmp_path / "none.de", "--ref", tmp_path / "none.en"],
    ]
    for args in cases:
        result = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1 and "error:" in result.stderr, result.stderr
