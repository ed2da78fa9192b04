"""mt-average: the averaged checkpoint is the naive elementwise mean, loads and translates; --best ranks by
the recorded val BLEU; bad inputs give one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mt.training.average import average_checkpoints, average_run, best_checkpoints, step_checkpoints
from mt.model.checkpoint import load_checkpoint, load_for_inference, save_checkpoint
from mt.cli import average_main, translate_main
from mt.config import DecodingConfig, TokenizerConfig, to_dict
from mt.errors import CheckpointError, ConfigError
from mt.inference.evaluate import translate
from mt.model.transformer import Transformer
from mt.data.tokenizer import Tokenizer

from conftest import tiny_config

BIN = Path(sys.executable).parent
TEXTS = ["Ein Hund rennt im Park.", "Zwei Männer spielen Fußball.", "Eine Frau liest ein Buch."] * 30
STEPS = [50, 100, 500, 1000]  # a string sort would put 1000 before 50 and 500


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TEXTS, TEXTS, TokenizerConfig(vocab_size=50))


def training_state(tokenizer, seed: int, step: int, cfg=None, data=None, val_bleu=2.5) -> dict:
    """What the trainer's last.pt / step-S.pt holds: static fields, weights and resume-only state."""
    cfg = cfg or tiny_config()
    torch.manual_seed(seed)
    model = Transformer(cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id)
    optimizer = torch.optim.AdamW(model.parameters())
    return {
        "model_config": to_dict(cfg),
        "tokenizer": tokenizer.state(),
        "data": data or {"src_lang": "de", "tgt_lang": "en"},
        "decoding": {"beam_size": 1, "max_len_b": 5},
        "config": {"train": {"seed": seed}},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": step},
        "step": step,
        "epoch": 1,
        "batches_done": step,
        "best_bleu": 1.0,
        "bad_validations": 0,
        "nonfinite_steps": 0,
        "elapsed_s": 1.0,
        "rng": {"torch": torch.get_rng_state()},
        "scaler": {},
        "val_bleu": val_bleu,
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
    """A run folder with step-{50,100,500,1000}.pt of different random weights, plus best.pt and last.pt."""
    run = tmp_path_factory.mktemp("run")
    for seed, step in enumerate(STEPS):
        save_checkpoint(training_state(tokenizer, seed, step), run / "checkpoints" / f"step-{step}.pt")
    save_checkpoint(training_state(tokenizer, 99, 1000), run / "checkpoints" / "best.pt")
    save_checkpoint(training_state(tokenizer, 98, 1000), run / "checkpoints" / "last.pt")
    return run


# val BLEU per step of the ranked run: a tie (30.0) at steps 20 and 50, the best not the newest
RANKED = {10: 12.0, 20: 30.0, 30: 31.5, 40: 29.0, 50: 30.0, 60: 18.0}


@pytest.fixture(scope="module")
def ranked_run(tmp_path_factory, tokenizer):
    """A run folder whose step checkpoints carry the val BLEU of RANKED."""
    run = tmp_path_factory.mktemp("ranked")
    for seed, (step, val_bleu) in enumerate(RANKED.items()):
        save_checkpoint(training_state(tokenizer, seed, step, val_bleu=val_bleu), run / "checkpoints" / f"step-{step}.pt")
    return run


def naive_mean(run: Path, steps: list[int]) -> dict:
    """The reference: stack the weights of every checkpoint and take the mean, key by key."""
    states = [torch.load(run / "checkpoints" / f"step-{s}.pt", weights_only=True)["model"] for s in steps]
    return {name: torch.stack([state[name] for state in states]).mean(dim=0) for name in states[0]}


def test_step_checkpoints_are_sorted_by_step_number(run_dir):
    assert [p.name for p in step_checkpoints(run_dir)] == [f"step-{s}.pt" for s in STEPS]


@pytest.mark.parametrize("n", [2, 3])
def test_average_equals_the_naive_elementwise_mean(run_dir, tmp_path, n):
    out = tmp_path / "avg.pt"
    average_run(run_dir, n, out)
    written = load_checkpoint(out)
    expected = naive_mean(run_dir, STEPS[-n:])
    assert written["model"].keys() == expected.keys()
    for name, tensor in expected.items():
        assert written["model"][name].dtype == tensor.dtype
        torch.testing.assert_close(written["model"][name], tensor, rtol=0, atol=1e-6)
    assert written["averaged_from"] == [{"file": f"step-{s}.pt", "step": s} for s in STEPS[-n:]]
    assert written["step"] == STEPS[-1]
    for key in ("optimizer", "scheduler", "scaler", "rng", "best_bleu", "elapsed_s", "val_bleu"):
        assert key not in written  # an inference checkpoint, not a resumable one, nor one checkpoint's score


def test_average_of_one_checkpoint_is_that_checkpoint(run_dir, tmp_path):
    average_run(run_dir, 1, tmp_path / "one.pt")
    original = load_checkpoint(run_dir / "checkpoints" / "step-1000.pt")["model"]
    averaged = load_checkpoint(tmp_path / "one.pt")["model"]
    assert all(torch.equal(averaged[name], original[name]) for name in original)


def test_averaged_checkpoint_loads_and_translates_like_the_naive_mean(run_dir, tokenizer, tmp_path, capsys):
    out = tmp_path / "averaged.pt"
    average_main([str(run_dir), "--last", "3", "--out", str(out)])
    assert "steps 100, 500, 1000" in capsys.readouterr().err
    model, loaded_tokenizer, info = load_for_inference(out)
    assert info["step"] == 1000 and info["src_lang"] == "de"

    reference = Transformer(tiny_config(), tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id)
    reference.load_state_dict(naive_mean(run_dir, STEPS[-3:]))
    sentences = ["Ein Hund rennt.", "Eine Frau liest."]
    expected = translate(reference.eval(), tokenizer, sentences, DecodingConfig(beam_size=1, max_len_b=5))

    translate_main([str(out), *sentences])
    assert capsys.readouterr().out.splitlines() == expected


def test_console_script_writes_averaged_pt_by_default(tmp_path, tokenizer):
    run = tmp_path / "run"
    for seed, step in enumerate([10, 20]):
        save_checkpoint(training_state(tokenizer, seed, step), run / "checkpoints" / f"step-{step}.pt")
    result = subprocess.run(
        [str(BIN / "mt-average"), str(run), "--last", "2"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    written = load_checkpoint(run / "checkpoints" / "averaged.pt")
    for name, tensor in naive_mean(run, [10, 20]).items():
        torch.testing.assert_close(written["model"][name], tensor, rtol=0, atol=1e-6)


def one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        average_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("mt-average: error:"), err
    return err


def test_missing_run_dir(capsys, tmp_path):
    assert "not found" in one_line_error(capsys, [str(tmp_path / "nope"), "--last", "2"])


def test_too_few_checkpoints_says_how_many_and_how_to_keep_them(capsys, run_dir):
    err = one_line_error(capsys, [str(run_dir), "--last", "5"])
    assert "has 4 step checkpoint" in err and "train.keep_checkpoints" in err


def test_run_without_step_checkpoints(capsys, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    assert "has 0 step checkpoint" in one_line_error(capsys, [str(tmp_path), "--last", "1"])


def test_checkpoints_folder_instead_of_run_dir(capsys, run_dir):
    assert "pass the run dir" in one_line_error(capsys, [str(run_dir / "checkpoints"), "--last", "2"])


def test_last_must_be_positive(capsys, run_dir):
    with pytest.raises(SystemExit):
        average_main([str(run_dir), "--last", "0"])
    assert capsys.readouterr().err.splitlines()[-1] == "mt-average: error: argument --last: must be >= 1, got 0"
    with pytest.raises(ConfigError, match=">= 1"):
        average_run(run_dir, 0)


def test_unwritable_out(capsys, run_dir, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert str(blocker) in one_line_error(capsys, [str(run_dir), "--last", "2", "--out", str(blocker / "avg.pt")])
    assert "is a folder" in one_line_error(capsys, [str(run_dir), "--last", "2", "--out", str(tmp_path)])


@pytest.mark.parametrize(
    "odd_one",
    [
        {"cfg": tiny_config(dropout=0.1)},  # same shapes, different config
        {"cfg": tiny_config(ffn_dim=48)},  # different config and shapes
        {"data": {"src_lang": "en", "tgt_lang": "de"}},  # another language pair
    ],
)
def test_checkpoints_of_different_models_are_refused(capsys, tmp_path, tokenizer, odd_one):
    run = tmp_path / "run"
    save_checkpoint(training_state(tokenizer, 0, 100), run / "checkpoints" / "step-100.pt")
    save_checkpoint(training_state(tokenizer, 1, 200, **odd_one), run / "checkpoints" / "step-200.pt")
    assert "step-200.pt" in one_line_error(capsys, [str(run), "--last", "2"])
    assert not (run / "checkpoints" / "averaged.pt").exists()


def test_different_parameter_names_are_refused(tmp_path, tokenizer):
    a, b = training_state(tokenizer, 0, 1), training_state(tokenizer, 1, 2)
    del b["model"]["src_embedding.weight"]
    save_checkpoint(a, tmp_path / "a.pt")
    save_checkpoint(b, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match=r"b\.pt: parameter names differ.*src_embedding"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])


def test_dtypes_are_kept_and_non_float_tensors_must_agree(tmp_path, tokenizer):
    weights = [
        {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "count": torch.tensor([3, 4])},
        {"w": torch.tensor([2.0, 5.0], dtype=torch.bfloat16), "count": torch.tensor([3, 4])},
    ]
    for i, model in enumerate(weights):
        save_checkpoint({"model": model, "step": i}, tmp_path / f"{i}.pt")
    averaged = average_checkpoints([tmp_path / "0.pt", tmp_path / "1.pt"])["model"]
    assert averaged["w"].dtype == torch.bfloat16 and averaged["w"].tolist() == [1.5, 3.5]
    assert torch.equal(averaged["count"], torch.tensor([3, 4]))

    save_checkpoint({"model": {**weights[1], "count": torch.tensor([3, 5])}, "step": 1}, tmp_path / "1.pt")
    with pytest.raises(CheckpointError, match="count"):
        average_checkpoints([tmp_path / "0.pt", tmp_path / "1.pt"])


def naive_best(scores: dict[int, float], n: int) -> list[int]:
    """The reference ranking: highest val BLEU first, the later step on a tie; returned by step."""
    ranked = sorted(scores, key=lambda step: (-scores[step], -step))
    return sorted(ranked[:n])


@pytest.mark.parametrize("n", [1, 2, 3, 6, 9])
def test_best_checkpoints_rank_by_val_bleu_and_prefer_the_later_step_on_a_tie(ranked_run, n):
    chosen = [int(p.stem.removeprefix("step-")) for p in best_checkpoints(ranked_run, n)]
    assert chosen == naive_best(RANKED, n)
    by_hand = {1: [30], 2: [30, 50], 3: [20, 30, 50]}  # 31.5; then the tie at 30.0 goes to step 50 first
    assert chosen == by_hand.get(n, chosen)


def test_average_of_the_best_is_the_naive_mean_of_the_best_and_lands_in_averaged_best_pt(ranked_run, capsys):
    average_main([str(ranked_run), "--best", "3"])
    assert "steps 20, 30, 50" in capsys.readouterr().err
    written = load_checkpoint(ranked_run / "checkpoints" / "averaged_best.pt")
    for name, tensor in naive_mean(ranked_run, [20, 30, 50]).items():
        torch.testing.assert_close(written["model"][name], tensor, rtol=0, atol=1e-6)
    assert [source["step"] for source in written["averaged_from"]] == [20, 30, 50]
    assert written["step"] == 50  # the newest of those averaged
    assert not (ranked_run / "checkpoints" / "averaged.pt").exists()


def test_last_and_best_are_one_or_the_other(capsys, ranked_run):
    with pytest.raises(SystemExit):
        average_main([str(ranked_run), "--last", "2", "--best", "2"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        average_main([str(ranked_run)])
    assert "one of the arguments --last --best is required" in capsys.readouterr().err


def test_best_needs_recorded_scores(capsys, tmp_path, tokenizer):
    run = tmp_path / "run"
    save_checkpoint(training_state(tokenizer, 0, 10), run / "checkpoints" / "step-10.pt")
    unscored = training_state(tokenizer, 1, 20)
    del unscored["val_bleu"]
    save_checkpoint(unscored, run / "checkpoints" / "step-20.pt")
    err = one_line_error(capsys, [str(run), "--best", "1"])
    assert "step-20.pt: no val_bleu" in err and "average the last N instead" in err
    assert "has 2 step checkpoint" in one_line_error(capsys, [str(run), "--best", "3"])


def test_the_trainer_keeps_the_newest_and_the_best_step_checkpoints_and_scores_both_averages(
    tmp_path, multi30k_mirror, monkeypatch, caplog
):
    """Scripted val BLEU per validation: the newest 2 are steps 10 and 12, the best 2 steps 4 and 8.
    Scripted test BLEU: best.pt 20, the last 2's average 25, the best 2's 10 (below best.pt: a warning)."""
    from test_resume import _metrics, _smoke_config

    from mt.training import scoring
    from mt.training import train as train_module

    scripted = iter([5.0, 9.0, 1.0, 7.0, 2.0, 3.0])  # validations at steps 2, 4, …, 12
    validate = train_module.validate
    monkeypatch.setattr(train_module, "validate", lambda *args: {**validate(*args), "val_bleu": next(scripted)})
    test_bleu = {"test_2016_flickr.hyp.en": 20.0, "test_2016_flickr.averaged.hyp.en": 25.0,
                 "test_2016_flickr.averaged_best.hyp.en": 10.0}  # fmt: skip
    score_checkpoint = scoring.score_checkpoint
    monkeypatch.setattr(
        scoring, "score_checkpoint", lambda *args: {**score_checkpoint(*args), "bleu": test_bleu[args[-1].name]}
    )
    config = _smoke_config(
        tmp_path, multi30k_mirror, "data.max_train_sentences=300", "tokenizer.vocab_size=300",
        "train.batch_tokens=1024", "data.max_valid_sentences=4", "data.max_test_sentences=4", "train.max_steps=12",
        "train.valid_every=2", "train.keep_checkpoints=0", "train.average_last=2", "train.average_best=2",
    )  # fmt: skip
    run = tmp_path / "run"
    with caplog.at_level("WARNING", logger="mt.training.scoring"):
        train_module.train(config, run)
    warnings = [r.getMessage() for r in caplog.records if r.name == "mt.training.scoring"]
    assert warnings == ["averaged_best.pt (steps 4, 8) scores 10.00 BLEU on test_2016_flickr, below best.pt's 20.00: "
                        "use best.pt (what mt-translate, mt-align and mt-evaluate read from the run dir)"]  # fmt: skip

    assert [r["val_bleu"] for r in _metrics(run)] == [5.0, 9.0, 1.0, 7.0, 2.0, 3.0]
    assert [p.name for p in step_checkpoints(run)] == ["step-4.pt", "step-8.pt", "step-10.pt", "step-12.pt"]
    assert load_checkpoint(run / "checkpoints" / "best.pt")["step"] == 4
    scores = json.loads((run / "test_scores.json").read_text())
    for key, steps in (("averaged", [10, 12]), ("averaged_best", [4, 8])):
        assert [source["step"] for source in scores[key]["averaged_from"]] == steps
        written = load_checkpoint(run / "checkpoints" / f"{key}.pt")["model"]
        for name, tensor in naive_mean(run, steps).items():
            torch.testing.assert_close(written[name], tensor, rtol=0, atol=1e-6)
        hypotheses = (run / f"test_2016_flickr.{key}.hyp.en").read_text().splitlines()
        assert len(hypotheses) == 4 and scores[key]["bleu_line"].startswith("BLEU = ")


def test_a_run_resumed_across_an_option_removal_still_averages(tmp_path):
    """tests/fixtures/checkpoint-2dea679.pt saved ``model.aligner.word_lexicon: False`` (removed
    since); a newer checkpoint of the same run saves no such key. Both average, to the mean."""
    old_path = Path(__file__).parent / "fixtures" / "checkpoint-2dea679.pt"
    old = load_checkpoint(old_path)
    assert old["model_config"]["aligner"]["word_lexicon"] is False  # the fixture still holds it
    new = dict(old, model_config={**old["model_config"], "aligner": dict(old["model_config"]["aligner"])})
    del new["model_config"]["aligner"]["word_lexicon"], new["model_config"]["aligner"]["lexicon_leave_one_out"]
    new["model"] = {name: t + 1 if t.is_floating_point() else t for name, t in old["model"].items()}
    save_checkpoint(new, tmp_path / "new.pt")
    averaged = average_checkpoints([old_path, tmp_path / "new.pt"])
    for name, tensor in old["model"].items():
        if tensor.is_floating_point():
            torch.testing.assert_close(averaged["model"][name], tensor + 0.5)
    on = dict(new, model_config={**new["model_config"], "aligner": {**new["model_config"]["aligner"], "word_lexicon": True}})
    save_checkpoint(on, tmp_path / "on.pt")
    with pytest.raises(ConfigError, match="word_lexicon"):
        average_checkpoints([old_path, tmp_path / "on.pt"])


def test_an_aligners_teacher_priors_survive_averaging(tmp_path, tokenizer):
    """A stage's checkpoints carry eflomal's priors (mt/alignment/adapt.py); its average must too,
    or mt-align on it could no longer adapt."""
    teacher = {"priors": b"\x1f\x8bpriors", "unit": "word", "symmetrize": "grow-diag-final-and"}
    paths = []
    for step in (100, 200):
        paths.append(tmp_path / f"step-{step}.pt")
        save_checkpoint({**training_state(tokenizer, 0, step), "alignment_teacher": teacher}, paths[-1])
    assert average_checkpoints(paths)["alignment_teacher"] == teacher
    save_checkpoint(training_state(tokenizer, 0, 300), tmp_path / "plain.pt")
    assert "alignment_teacher" not in average_checkpoints([tmp_path / "plain.pt"])
