"""mt-translate --n-best / --output-format jsonl / --align, and translate_nbest under it."""

import dataclasses
import io
import json
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir

from mt.model.checkpoint import save_checkpoint
from mt.cli import align_main, translate_main
from mt.config import DecodingConfig, from_hydra, to_dict
from mt.inference.evaluate import translate, translate_nbest
from mt.data.tokenizer import Tokenizer

from conftest import REPO, random_model, save_inference_checkpoint

SOURCES = ["Ein Hund rennt im Park.", "Zwei Männer spielen.", "Fußball im Park", "Hund"]
DECODING = DecodingConfig(beam_size=4, max_len_a=1.0, max_len_b=4, batch_size=3)


@pytest.fixture(scope="module")
def tokenizer(bilingual_tokenizer):
    return bilingual_tokenizer


@pytest.fixture(scope="module")
def model(tokenizer):
    return random_model(tokenizer)


@pytest.fixture(scope="module")
def checkpoint(model, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("nbest") / "model.pt"
    return save_inference_checkpoint(model, tokenizer, path, beam_size=4, max_len_a=1.0, max_len_b=4, batch_size=3)


def run_cli(main, argv, capsys, monkeypatch, stdin=None):
    """Run a console entry point in-process; returns (exit code, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8")), encoding="utf-8"))
    code = 0
    try:
        main(argv)
    except SystemExit as exit:
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def test_n_best_is_sorted_distinct_and_led_by_the_one_best(model, tokenizer):
    nbest = translate_nbest(model, tokenizer, SOURCES, DECODING, n_best=3)
    assert [hyps[0].text for hyps in nbest] == translate(model, tokenizer, SOURCES, DECODING)
    for hyps in nbest:
        assert len(hyps) == 3
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({tuple(h.pieces) for h in hyps}) == 3
        assert all(h.pieces[-1] == "</s>" and len(h.token_log_probs) == len(h.pieces) for h in hyps)
    with pytest.raises(ValueError, match="n_best"):
        translate_nbest(model, tokenizer, SOURCES, DecodingConfig(beam_size=1), n_best=2)


def plain_greedy(model, tokenizer, source, max_len_a, max_len_b):
    """Greedy decoding written plainly, sharing no code with mt.inference.decoding: encode once, then each
    step a full (non-incremental) decode of BOS + the prefix and the argmax of the last position's
    logits over real tokens (PAD and BOS excluded); at the limit of ``a * src_len + b`` tokens
    (EOS included, src_len counting the source EOS) the last token is EOS.

    Returns: the tokens (without EOS) and the log-prob of each of them then of EOS.
    """
    src_ids = torch.tensor([[*tokenizer.encode_src([source])[0], Tokenizer.eos_id]])
    limit = min(int(src_ids.size(1) * max_len_a + max_len_b), model.cfg.max_positions - 1)
    tokens, log_probs = [], []
    with torch.no_grad():
        memory, src_mask = model.encode(src_ids)
        for step in range(limit):
            hidden, _ = model.decode(torch.tensor([[Tokenizer.bos_id, *tokens]]), memory, src_mask)
            step_log_probs = model.logits(hidden[0, -1]).log_softmax(-1)  # (tgt_vocab,)
            candidates = step_log_probs.clone()
            candidates[[Tokenizer.pad_id, Tokenizer.bos_id]] = float("-inf")
            token = Tokenizer.eos_id if step == limit - 1 else int(candidates.argmax())
            log_probs.append(float(step_log_probs[token]))
            if token == Tokenizer.eos_id:
                break
            tokens.append(token)
    return tokens, log_probs


def ending_early(tokenizer, threshold=1.4):
    """A fresh :func:`random_model` whose EOS logit gets +100 wherever the decoder output's first
    feature exceeds ``threshold``. The random model alone repeats one piece up to the length limit;
    this way some sentences end at EOS, at different steps, and leave their batch early."""
    model = random_model(tokenizer)
    logits = model.logits
    eos = torch.arange(tokenizer.tgt_vocab_size) == Tokenizer.eos_id
    model.logits = lambda hidden: logits(hidden) + 100.0 * eos * (hidden[..., :1] > threshold)
    return model


def test_greedy_translations_equal_a_plain_greedy_loop(tokenizer):
    model = ending_early(tokenizer)
    greedy = DecodingConfig(beam_size=1, max_len_a=1.0, max_len_b=4, batch_size=3)
    translations = translate_nbest(model, tokenizer, SOURCES, greedy)
    assert translate(model, tokenizer, SOURCES, greedy) == [hyps[0].text for hyps in translations]
    ended = set()
    for source, hyps in zip(SOURCES, translations):
        tokens, log_probs = plain_greedy(model, tokenizer, source, greedy.max_len_a, greedy.max_len_b)
        (best,) = hyps
        assert best.pieces == [*tokenizer.tgt.id_to_piece(tokens), "</s>"]
        assert best.text == tokenizer.decode_tgt([tokens])[0]
        assert best.token_log_probs == pytest.approx(log_probs, abs=1e-4)
        assert best.score == best.log_prob == pytest.approx(sum(log_probs), abs=1e-4)
        limit = len(tokenizer.encode_src([source])[0]) + 1 + greedy.max_len_b  # max_len_a = 1
        ended.add("limit" if len(tokens) + 1 == limit else "eos")
    assert ended == {"eos", "limit"}  # both ways of stopping are exercised


def test_token_log_probs_match_a_teacher_forced_pass(model, tokenizer):
    nbest = translate_nbest(model, tokenizer, SOURCES, DECODING, n_best=4)
    for source, hyps in zip(SOURCES, nbest):
        src_ids = torch.tensor([[*tokenizer.encode_src([source])[0], Tokenizer.eos_id]])
        for h in hyps:
            ids = [tokenizer.tgt.piece_to_id(p) for p in h.pieces[:-1]]
            with torch.no_grad():
                log_probs = model(src_ids, torch.tensor([[Tokenizer.bos_id, *ids]])).log_softmax(-1)
            expected = log_probs[0].gather(-1, torch.tensor([*ids, Tokenizer.eos_id])[:, None])[:, 0].tolist()
            assert h.token_log_probs == pytest.approx(expected, abs=1e-4)
            assert sum(h.token_log_probs) == pytest.approx(h.log_prob, abs=1e-4)
            assert tokenizer.decode_tgt([ids])[0] == h.text


def test_jsonl_has_one_line_per_input_line_and_round_trips(model, tokenizer, checkpoint, capsys, monkeypatch):
    lines = ["Ein Hund rennt im Park.", "", "   ", "Zwei\u2028Männer spielen.", "Hund"]
    code, out, _ = run_cli(
        translate_main, [checkpoint, "--n-best", "2", "--output-format", "jsonl"], capsys, monkeypatch,
        stdin="\n".join(lines) + "\n",
    )
    assert code == 0
    assert out.endswith("\n") and len(out.splitlines()) == len(lines)  # splitlines also breaks on U+2028
    records = [json.loads(line) for line in out.splitlines()]
    expected = translate_nbest(model, tokenizer, lines, DECODING, n_best=2)
    for index, (record, source, hyps) in enumerate(zip(records, lines, expected)):
        assert record["index"] == index and record["source"] == source
        assert len(record["hypotheses"]) == len(hyps) == (2 if source.strip() else 0)
        for got, want in zip(record["hypotheses"], hyps):
            assert got["text"] == want.text and got["pieces"] == want.pieces
            assert got["score"] == want.score and got["log_prob"] == want.log_prob
            assert got["token_log_probs"] == want.token_log_probs


def test_align_links_are_those_of_mt_align_for_the_same_pair(checkpoint, capsys, monkeypatch):
    code, out, _ = run_cli(
        translate_main, [checkpoint, "--output-format", "jsonl", "--align", *SOURCES[:3]], capsys, monkeypatch
    )
    assert code == 0
    for source, line in zip(SOURCES, out.splitlines()):
        best, *others = json.loads(line)["hypotheses"]
        alignment = best["alignment"]
        assert all("alignment" not in h for h in others)
        code, aligned, _ = run_cli(align_main, [checkpoint, "--", source, best["text"]], capsys, monkeypatch)
        assert code == 0
        assert alignment["pharaoh"] == aligned.splitlines()[-1]
        assert alignment["links"] == [[int(i) for i in link.split("-")] for link in alignment["pharaoh"].split()]
        assert alignment["src_words"] == source.split() and alignment["tgt_words"] == best["text"].split()
        matrix = alignment["word_matrix"]
        assert len(matrix) == len(alignment["tgt_words"]) and all(len(row) == len(alignment["src_words"]) for row in matrix)


def test_text_n_best_lines_and_one_best_unchanged(model, tokenizer, checkpoint, capsys, monkeypatch):
    lines = ["Ein Hund rennt im Park.", "", "Hund"]
    stdin = "\n".join(lines) + "\n"
    code, out, _ = run_cli(translate_main, [checkpoint, "--n-best", "3"], capsys, monkeypatch, stdin=stdin)
    assert code == 0
    expected = translate_nbest(model, tokenizer, lines, DECODING, n_best=3)
    rows = [line.split(" ||| ") for line in out.splitlines()]
    assert [(int(i), text) for i, text, _ in rows] == [(i, h.text) for i, hyps in enumerate(expected) for h in hyps]
    assert [float(score) for _, _, score in rows] == pytest.approx([h.score for hyps in expected for h in hyps], abs=1e-6)

    code, out, _ = run_cli(translate_main, [checkpoint, "--n-best", "1"], capsys, monkeypatch, stdin=stdin)
    assert code == 0 and out == "".join(t + "\n" for t in translate(model, tokenizer, lines, DECODING))


@pytest.mark.parametrize(
    "argv, message",
    [(["--n-best", "5"], "--n-best 5 exceeds the beam size 4"), (["--beam-size", "2", "--n-best", "3"], "--n-best 3")],
)
def test_n_best_above_the_beam_is_a_one_line_error(checkpoint, capsys, monkeypatch, argv, message):
    code, out, err = run_cli(translate_main, [checkpoint, "Hund", *argv], capsys, monkeypatch)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err and err.startswith("mt-translate: error:")


def gnmt_scores_hold(hypotheses, alpha):
    """Each hypothesis's (a jsonl record) score is its log-prob over ((5 + |Y|) / 6) ** alpha, |Y|
    counting the pieces and EOS (Wu et al. 2016, eq. 14); the formula written out, not imported."""
    assert any(len(h["pieces"]) > 1 for h in hypotheses)  # some penalty is not 1 whatever alpha
    for h in hypotheses:
        assert h["score"] == pytest.approx(h["log_prob"] / ((5 + len(h["pieces"])) / 6) ** alpha, rel=1e-6)
    return True


def test_length_penalty_reaches_the_search_from_the_config_the_checkpoint_and_the_flag(
    model, tokenizer, checkpoint, tmp_path, capsys, monkeypatch
):
    nbest = translate_nbest(model, tokenizer, SOURCES, DecodingConfig(beam_size=4, length_penalty=0.6, max_len_b=4), 3)
    assert gnmt_scores_hold([dataclasses.asdict(h) for hyps in nbest for h in hyps], 0.6)

    # decoding.length_penalty on the training command line → the checkpoint's decoding → mt-translate
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = from_hydra(compose(config_name="train", overrides=["decoding.length_penalty=0.6", "decoding.beam_size=4"]))
    assert cfg.decoding.length_penalty == 0.6
    state = torch.load(checkpoint, weights_only=True)
    configured = tmp_path / "configured.pt"
    save_checkpoint({**state, "decoding": {**to_dict(cfg.decoding), "max_len_a": 1.0, "max_len_b": 4}}, configured)

    def jsonl(path, *flags):
        code, out, _ = run_cli(translate_main, [str(path), "--n-best", "3", "--output-format", "jsonl", *flags, *SOURCES],
                               capsys, monkeypatch)
        assert code == 0
        return [h for line in out.splitlines() for h in json.loads(line)["hypotheses"]]

    assert gnmt_scores_hold(jsonl(configured), 0.6)
    assert gnmt_scores_hold(jsonl(configured, "--length-penalty", "2.5"), 2.5)  # the flag beats the checkpoint
    assert gnmt_scores_hold(jsonl(checkpoint, "--length-penalty", "0.6"), 0.6)
    assert gnmt_scores_hold(jsonl(checkpoint), DecodingConfig().length_penalty)  # the checkpoint has none: the schema default
