"""mt-train experiment=smoke → mt-translate → mt-evaluate → mt-align, through the installed console scripts."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
import torch

from mt.alignment.aer import parse_pharaoh
from mt.alignment.align import align
from mt.model.checkpoint import load_checkpoint, load_for_inference
from mt.inference.decoding import max_lengths

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


def test_test_scores_are_sacrebleu_on_the_written_hypotheses_of_the_best_checkpoint(smoke_run):
    run_dir, _, data_dir = smoke_run
    # the scores again, by sacreBLEU itself, from the hypothesis file and the raw reference text
    # (smoke: the first 100 sentences of the test split)
    hypotheses = (run_dir / "test_2016_flickr.hyp.en").read_text(encoding="utf-8").splitlines()
    with gzip.open(data_dir / "multi30k" / "test_2016_flickr.en.gz", "rt", encoding="utf-8") as f:
        references = [line.rstrip("\n") for line in f][:100]
    scores = json.loads((run_dir / "test_scores.json").read_text())
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score, abs=1e-9)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score, abs=1e-9)
    assert any(h for h in hypotheses)  # not an empty output that every reference set scores alike
    # the scored checkpoint is the one with the best validation BLEU (the first of equals)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda record: record["val_bleu"])  # max keeps the first of equals
    best_state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert scores["checkpoint_step"] == best["step"] == best_state["step"]
    assert best_state["val_bleu"] == best["val_bleu"]


def test_translate_arguments_and_stdin(smoke_run):
    run_dir, _, _ = smoke_run
    out = run("mt-translate", run_dir, "Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.").stdout
    lines = out.splitlines()
    assert len(lines) == 2 and all(lines)
    out = run("mt-translate", run_dir / "checkpoints" / "best.pt", "--beam-size", "1", stdin="Ein Hund.\n\nEine Frau singt.\n").stdout
    lines = out.split("\n")
    assert len(lines) == 4 and lines[0] and lines[1] == "" and lines[2] and lines[3] == ""


def test_translate_n_best_jsonl_with_alignments_of_mt_align(smoke_run):
    run_dir, _, _ = smoke_run
    sources = ["Ein Mann fährt Fahrrad.", "", "Zwei Hunde spielen im Schnee."]
    out = run("mt-translate", run_dir, "--n-best", "2", "--output-format", "jsonl", "--align", stdin="\n".join(sources) + "\n")
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["source"] for r in records] == sources and records[1]["hypotheses"] == []
    text = run("mt-translate", run_dir, *[s for s in sources if s]).stdout.splitlines()
    assert [records[0]["hypotheses"][0]["text"], records[2]["hypotheses"][0]["text"]] == text
    for record in (records[0], records[2]):
        best = record["hypotheses"][0]
        assert len(record["hypotheses"]) == 2 and best["score"] >= record["hypotheses"][1]["score"]
        assert sum(best["token_log_probs"]) == pytest.approx(best["log_prob"], abs=1e-4)
        aligned = run("mt-align", run_dir, "--", record["source"], best["text"]).stdout.splitlines()
        assert len(best["alignment"]["tgt_words"]) > 1
        assert parse_pharaoh(aligned[-1]) == [tuple(link) for link in best["alignment"]["links"]]


def test_export_to_ctranslate2_gives_mt_translate_greedy_pieces(smoke_run, tmp_path):
    """mt-export --format ctranslate2, then ctranslate2.Translator greedy on 100 validation
    sentences: the same pieces as mt-translate --beam-size 1, with the same output limit, but
    where the two part at a near tie (:func:`tie_gap`: the smoke model is barely trained, and
    float32 sums in another order may pick either of two pieces within 1e-3 nats)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    run_dir, _, data_dir = smoke_run
    run("mt-export", run_dir, "--format", "ctranslate2", "--out", tmp_path / "ct2")
    with gzip.open(data_dir / "multi30k" / "val.de.gz", "rt", encoding="utf-8") as f:
        sources = [next(f).rstrip("\n") for _ in range(100)]
    out = run("mt-translate", run_dir, "--beam-size", "1", "--output-format", "jsonl", stdin="\n".join(sources) + "\n")
    ours = [json.loads(line)["hypotheses"][0]["pieces"][:-1] for line in out.stdout.splitlines()]  # without "</s>"

    import sentencepiece

    model, tokenizer, info = load_for_inference(run_dir)
    decoding = info["decoding"]
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "ct2" / "sentencepiece.model"))
    translator = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu", compute_type="float32")
    theirs = []
    for source in sources:
        pieces = processor.encode(source, out_type=str)
        src_ids = torch.ones(1, len(pieces) + 1, dtype=torch.long)  # + EOS, as ours counts the source
        limit = int(max_lengths(src_ids, 0, decoding.max_len_a, decoding.max_len_b, 10**6))  # ours: EOS included
        result = translator.translate_batch([pieces], beam_size=1, max_decoding_length=limit - 1)
        theirs.append(result[0].hypotheses[0])
    parted = [(source, a, b) for source, a, b in zip(sources, theirs, ours) if a != b]
    assert len(parted) <= 5, f"{len(parted)} of 100 sentences differ"
    for source, a, b in parted:
        assert tie_gap(model, tokenizer, source, a, b) < 1e-3, (source, a, b)


def tie_gap(model, tokenizer, source: str, a: list[str], b: list[str]) -> float:
    """|log p(a_t) − log p(b_t)| under ``model`` after the common prefix, t the first position
    where the greedy target pieces ``a`` and ``b`` (without EOS) differ (an ended one: EOS)."""
    a, b = a + ["</s>"], b + ["</s>"]
    t = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    piece_id = lambda piece: tokenizer.eos_id if piece == "</s>" else tokenizer.tgt.piece_to_id(piece)  # noqa: E731
    src_ids = torch.tensor([tokenizer.encode_src([source])[0] + [tokenizer.eos_id]])
    tgt_in = torch.tensor([[tokenizer.bos_id] + [piece_id(piece) for piece in b[:t]]])
    with torch.no_grad():
        log_probs = model(src_ids, tgt_in).log_softmax(-1)[0, -1]
    return abs(float(log_probs[piece_id(a[t])] - log_probs[piece_id(b[t])]))


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


GOLD_PAIRS = [  # de ||| en with hand links (1-based, German first); not square, not diagonal, so
    # that reading a link or a gold set the wrong way round changes the scores
    ("Ein Hund rennt .", "A black dog is running .", "1-1 2-3 3-4 3-5 4-6 2p2"),
    ("Zwei Männer spielen Fußball .", "Two men are playing soccer .", "1-1 2-2 3p3 3-4 4-5 5-6"),
    ("Eine Frau mit Hut sitzt .", "A woman in a hat is sitting .", "1-1 2-2 3-3 4p4 4-5 5p6 5-7 6-8"),
]


def gold_links(src_first: str) -> tuple[list[set], list[set]]:
    """Sure and possible links of :data:`GOLD_PAIRS`, 0-based, as (German, English) pairs or, with
    ``src_first="en"``, as (English, German) pairs; parsed here, without mt.alignment.aer."""
    sure, possible = [], []
    for _, _, links in GOLD_PAIRS:
        pair_sure, pair_possible = set(), set()
        for token in links.split():
            kind = "-" if "-" in token else "p"
            de, en = (int(side) - 1 for side in token.split(kind))
            link = (de, en) if src_first == "de" else (en, de)
            pair_possible.add(link)
            if kind == "-":
                pair_sure.add(link)
        sure.append(pair_sure)
        possible.append(pair_possible)
    return sure, possible


def aer_by_hand(predicted: list, src_first: str) -> float:
    """AER = 1 - (|A∩S| + |A∩P|) / (|A| + |S|), counts summed over the pairs (Och & Ney 2003)."""
    sure, possible = gold_links(src_first)
    hits_sure = sum(len(set(a) & s) for a, s in zip(predicted, sure))
    hits_possible = sum(len(set(a) & p) for a, p in zip(predicted, possible))
    n_predicted, n_sure = sum(len(set(a)) for a in predicted), sum(len(s) for s in sure)
    return 1 - (hits_sure + hits_possible) / (n_predicted + n_sure)


def layer_aers_by_hand(run_dir, checkpoint: str, method: str, src_first: str) -> list[float]:
    """AER of each decoder layer's ``method`` links on the gold pairs, oriented as the model
    translates (``src_first``), from a model loaded in this process."""
    model, tokenizer, _ = load_for_inference(Path(run_dir) / "checkpoints" / checkpoint)
    de, en = [s for s, _, _ in GOLD_PAIRS], [t for _, t, _ in GOLD_PAIRS]
    sources, targets = (de, en) if src_first == "de" else (en, de)
    return [
        aer_by_hand([a.links for a in align(model, tokenizer, sources, targets, method=method, layer=layer)], src_first)
        for layer in range(len(model.decoder_layers))
    ]


@pytest.fixture(scope="module")
def gold_prefix(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gold")
    (folder / "deen.src-tgt").write_text("".join(f"{s} ||| {t}\n" for s, t, _ in GOLD_PAIRS), encoding="utf-8")
    (folder / "deen.talp").write_text("".join(links + "\n" for _, _, links in GOLD_PAIRS))
    return folder / "deen"


@pytest.fixture(scope="module")
def reverse_run(smoke_run, gold_prefix, tmp_path_factory):
    """An en→de smoke model that logs AER on the (reversed) de-en gold set at each validation.
    fp32, so that this process can recompute the AER of its checkpoints exactly."""
    _, mirror, data_dir = smoke_run
    run_dir = tmp_path_factory.mktemp("reverse") / "run"
    args = [
        "mt-train", "experiment=smoke", "data.src_lang=en", "data.tgt_lang=de", "train.max_steps=100",
        "train.precision=fp32",
        f"data.alignment_gold={gold_prefix}", "data.alignment_gold_train_copies=2",
        f"hydra.run.dir={run_dir}", f"data.data_dir={data_dir}",
    ]
    if mirror:
        args.append(f"data.mirror={mirror}")
    run(*args)
    return run_dir


def test_training_logs_aer_on_the_gold_set(reverse_run):
    records = [json.loads(line) for line in (reverse_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [50, 100]
    for record in records:
        assert 0.0 <= record["aer"] <= 1.0
        assert set(record["aer_by_layer"]) == {"attention", "shift"}
        assert all(len(aers) == 2 for aers in record["aer_by_layer"].values())  # smoke: 2 decoder layers
        assert record["aer"] == record["aer_by_layer"]["attention"][0]  # default: penultimate layer
    # the last validation's AERs are those of last.pt's links against the gold set read en-first
    for method in ("attention", "shift"):
        expected = [round(aer, 5) for aer in layer_aers_by_hand(reverse_run, "last.pt", method, "en")]
        assert records[-1]["aer_by_layer"][method] == expected, method


def test_align_shift_symmetrized_on_a_gold_set(smoke_run, reverse_run, gold_prefix, tmp_path):
    run_dir, _, _ = smoke_run
    out = tmp_path / "sym"
    result = run(
        "mt-align", run_dir, "--gold", gold_prefix, "--method", "shift", "--layer", "auto", "--dev-gold", gold_prefix,
        "--reverse-checkpoint", reverse_run, "--symmetrize", "intersect", "--out", out,
    )
    # each model chose its layer on the dev gold set read the way it translates: the listed AERs
    # are those computed here with the gold links oriented by hand
    for prefix, run_dir_, src_first in (("", run_dir, "de"), ("reverse model: ", reverse_run, "en")):
        aers = layer_aers_by_hand(run_dir_, "best.pt", "shift", src_first)
        listing = ", ".join(f"{layer}: {100 * aer:.1f}" for layer, aer in enumerate(aers))
        best = min(range(len(aers)), key=aers.__getitem__)
        assert f"mt-align: {prefix}--layer auto → {best} (dev AER % by layer: {listing})" in result.stderr.splitlines()
    scores = dict(line.split(": ") for line in result.stdout.splitlines() if ": " in line)
    records = [json.loads(line) for line in (out / "alignments.jsonl").read_text(encoding="utf-8").splitlines()]
    pharaoh = [parse_pharaoh(line) for line in (out / "alignments.txt").read_text().splitlines()]
    assert len(records) == len(pharaoh) == len(GOLD_PAIRS)
    for record, links, (src, tgt, _) in zip(records, pharaoh, GOLD_PAIRS):
        assert record["src_words"] == src.split() and record["tgt_words"] == tgt.split()
        forward = {tuple(link) for link in record["forward_links"]}
        reverse = {tuple(link) for link in record["reverse_links"]}
        assert set(links) == forward & reverse
        assert all(i < len(record["src_words"]) and j < len(record["tgt_words"]) for i, j in forward | reverse)
    assert scores["AER"] == f"{100 * aer_by_hand(pharaoh, 'de'):.2f}%"

    # the same links through mt-align-score on the files (gold is German first, 1-based)
    score = run("mt-align-score", f"{gold_prefix}.talp", out / "alignments.txt", "--one-based-gold", "--json")
    assert json.loads(score.stdout)["aer"] == pytest.approx(float(scores["AER"].rstrip("%")) / 100, abs=1e-4)

    # a model of the wrong direction is refused in one line
    wrong = subprocess.run(
        [str(BIN / "mt-align"), run_dir, "Ein Hund.", "A dog.", "--reverse-checkpoint", run_dir],
        capture_output=True, text=True, timeout=120,
    )
    assert wrong.returncode == 2 and "translates de→en, not en→de" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1


def test_aer_table_script_scores_every_row(smoke_run, reverse_run, gold_prefix):
    run_dir, _, _ = smoke_run
    script = Path(__file__).resolve().parent.parent / "scripts" / "aer_table.py"
    result = subprocess.run(
        [sys.executable, script, "--forward", run_dir, "--reverse", reverse_run, "--gold", gold_prefix],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = json.loads(result.stdout.splitlines()[-1])
    # diagonal + 2 models × 2 methods × 2 layers × (argmax, τ 0.3) + 2 methods × 2 layer choices × 3 heuristics
    assert len(table) == 1 + 16 + 12
    assert all(0.0 <= aer <= 100.0 for aer in table.values())
    assert "de→en attention, layer 0 (default)" in table and "en→de shift, layer 1, τ 0.3" in table


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
