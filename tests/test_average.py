"""mt-average: the averaged checkpoint is the naive elementwise mean, loads and translates; bad inputs give one line."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mt.average import average_checkpoints, average_run, step_checkpoints
from mt.checkpoint import load_checkpoint, load_for_inference, save_checkpoint
from mt.cli import average_main, translate_main
from mt.config import DecodingConfig, TokenizerConfig, to_dict
from mt.errors import CheckpointError, ConfigError
from mt.evaluate import translate
from mt.model import Transformer
from mt.tokenizer import Tokenizer

from conftest import tiny_config

BIN = Path(sys.executable).parent
TEXTS = ["Ein Hund rennt im Park.", "Zwei Männer spielen Fußball.", "Eine Frau liest ein Buch."] * 30
STEPS = [50, 100, 500, 1000]  # a string sort would put 1000 before 50 and 500


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TEXTS, TEXTS, TokenizerConfig(vocab_size=50))


def training_state(tokenizer, seed: int, step: int, cfg=None, data=None) -> dict:
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
        "val_bleu": 2.5,
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
