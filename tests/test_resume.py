"""Exact resume of the whole training state, graceful stop on SIGINT/SIGTERM (and exact resume from
there), non-finite guards, output-folder checks.

These go through ``mt.training.train.train(cfg, out_dir)`` / ``mt-train`` and the checkpoint files only."""

import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from mt.training import guards
from mt.training import train as train_module
from mt.model.checkpoint import load_checkpoint
from mt.config import TrainConfig, from_hydra, to_dict
from mt.errors import ConfigError, DataError
from mt.model.transformer import Transformer
from mt.training.schedule import check_resumable

from conftest import REPO

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
SMALL = [
    "experiment=smoke", "data.max_valid_sentences=20", "data.max_test_sentences=10", "train.valid_every=10",
    "train.num_threads=1",  # one thread: the same float sums in every run, and no spinning on a busy machine
]


def mt_train(run_dir, data_dir, mirror, *overrides, check=True):
    args = [str(BIN / "mt-train"), *SMALL, f"hydra.run.dir={run_dir}", f"data.data_dir={data_dir}", *overrides]
    if mirror:
        args.append(f"data.mirror={mirror}")
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def _smoke_config(tmp_path, mirror, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*SMALL, f"data.data_dir={tmp_path / 'data'}", *overrides])
    config = from_hydra(cfg)
    config.data.mirror = mirror
    return config


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _checkpoint(run_dir, name="last.pt"):
    return load_checkpoint(run_dir / "checkpoints" / name)


def assert_same_tensors(a, b, name=""):
    """Equal nested dicts/lists of tensors and plain values (tensors up to float rounding)."""
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), name
        for key in a:
            assert_same_tensors(a[key], b[key], f"{name}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), name
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{name}[{k}]")
    else:
        assert a == b, name


def _nan_training_logits_on(monkeypatch, is_nan_call) -> None:
    """Make the decoder states, hence the logits, NaN on the training forward passes (those with
    gradients enabled, counted from 1 by this call) for which ``is_nan_call(n)`` holds: a
    non-finite loss, injected through the model's public ``decode`` rather than through the
    trainer's own functions (the objective projects the states to the vocabulary itself)."""
    real = Transformer.decode
    calls = {"n": 0}

    def decode_or_nan(self, *args, **kwargs):
        hidden, rest = real(self, *args, **kwargs)
        if not torch.is_grad_enabled():  # validation and decoding stay finite
            return hidden, rest
        calls["n"] += 1
        return (hidden * float("nan") if is_nan_call(calls["n"]) else hidden), rest

    monkeypatch.setattr(Transformer, "decode", decode_or_nan)


# An fp16 run whose training state has something in every field by step 8. Every hypothesis is
# empty (a 1-token length limit), so val BLEU is 0 at each validation: the first one (step 4) is the
# best and each later one a bad validation, until early stopping at the third (step 16). Epochs
# are a few updates long. Updates 3 and 4 get a NaN loss (see the test): both are skipped and
# counted, and each halves the GradScaler's scale and restarts its growth tracker.
STATE_RUN = [
    "data.max_train_sentences=300", "tokenizer.vocab_size=300", "train.batch_tokens=1024",
    "data.max_valid_sentences=4", "data.max_test_sentences=4", "decoding.max_len_a=0", "decoding.max_len_b=1",
    "train.precision=fp16", "train.valid_every=4", "train.patience=3", "train.max_steps=100",
]  # fmt: skip


def test_resume_restores_the_whole_training_state(tmp_path, multi30k_mirror, monkeypatch):
    """Weights, optimizer, schedule, RNG, early-stopping state, best checkpoint, non-finite count,
    GradScaler, epoch position and clock: a run stopped at step 8 and resumed ends exactly where
    the uninterrupted run ends."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    _nan_training_logits_on(monkeypatch, lambda n: n in (3, 4))
    train_module.train(_smoke_config(tmp_path, multi30k_mirror, *STATE_RUN), whole)
    _nan_training_logits_on(monkeypatch, lambda n: n in (3, 4))
    train_module.train(_smoke_config(tmp_path, multi30k_mirror, *STATE_RUN, "train.max_steps=8"), parts)
    paused = _checkpoint(parts)
    assert paused["step"] == 8 and paused["best_bleu"] == 0.0 and paused["bad_validations"] == 1
    assert paused["nonfinite_steps"] == 2 and _metrics(parts)[-1]["nonfinite_steps"] == 2  # skipped, not taken
    assert all(torch.isfinite(t).all() for t in paused["model"].values())
    assert paused["scaler"]["scale"] == 2.0**14 and paused["scaler"]["_growth_tracker"] == 6  # updates 5..10

    monkeypatch.undo()  # the NaNs are behind both runs: none after the resume
    train_module.train(_smoke_config(tmp_path, multi30k_mirror, *STATE_RUN, "train.resume=auto"), parts)
    expected, resumed = _checkpoint(whole), _checkpoint(parts)
    assert expected["step"] == 16  # stopped by train.patience, not by train.max_steps
    plain = ("step", "epoch", "batches_done", "best_bleu", "bad_validations", "nonfinite_steps", "scaler", "scheduler")
    for key in plain:
        assert resumed[key] == expected[key], key
    assert resumed["epoch"] > paused["epoch"]  # an epoch boundary was crossed after resuming
    for key in ("model", "optimizer", "rng"):
        assert_same_tensors(resumed[key], expected[key], key)
    best, resumed_best = _checkpoint(whole, "best.pt"), _checkpoint(parts, "best.pt")
    assert resumed_best["step"] == best["step"] == 4  # no validation after the resume counted as better
    assert_same_tensors(resumed_best["model"], best["model"], "best.model")

    # the metrics carry on: the same validations, and a clock that continues instead of restarting
    records, expected_records = _metrics(parts), _metrics(whole)
    assert [r["step"] for r in records] == [r["step"] for r in expected_records] == [4, 8, 12, 16]
    for record, expected_record in zip(records, expected_records):
        for key in ("epoch", "train_loss", "val_loss", "val_bleu", "lr", "nonfinite_steps"):
            assert record[key] == pytest.approx(expected_record[key], rel=1e-5), (record["step"], key)
    elapsed = [r["elapsed_s"] for r in records]
    assert elapsed == sorted(elapsed) and resumed["elapsed_s"] > paused["elapsed_s"] > 0

    # resuming a run that already reached train.max_steps trains no further
    finished = _smoke_config(tmp_path, multi30k_mirror, *STATE_RUN, "train.max_steps=16", "train.resume=auto")
    train_module.train(finished, parts)
    assert _checkpoint(parts)["step"] == 16 and len(_metrics(parts)) == 4


def test_resume_with_subword_sampling_draws_the_same_segmentations(tmp_path, multi30k_mirror):
    """tokenizer.sampling segments each epoch anew from train.seed and the epoch: a run stopped
    in its second epoch and resumed ends with the weights of the uninterrupted run, and the
    segmentation mattered (without sampling the weights differ)."""
    run = ["data.max_train_sentences=300", "tokenizer.vocab_size=300", "train.batch_tokens=2048",
           "train.precision=fp32", "train.valid_every=100", "train.patience=0"]  # fmt: skip
    sampling = ["tokenizer.sampling=true", "tokenizer.alpha=0.1"]
    whole, parts, best = tmp_path / "whole", tmp_path / "parts", tmp_path / "best"
    train_module.train(_smoke_config(tmp_path, multi30k_mirror, *run, *sampling, "train.max_steps=20"), whole)
    train_module.train(_smoke_config(tmp_path, multi30k_mirror, *run, *sampling, "train.max_steps=10"), parts)
    assert _checkpoint(parts)["epoch"] >= 2
    train_module.train(_smoke_config(tmp_path, multi30k_mirror, *run, *sampling, "train.max_steps=20", "train.resume=auto"), parts)
    train_module.train(_smoke_config(tmp_path, multi30k_mirror, *run, "tokenizer.sampling=false", "train.max_steps=20"), best)
    expected, resumed = _checkpoint(whole), _checkpoint(parts)
    assert resumed["step"] == expected["step"] == 20 and resumed["epoch"] == expected["epoch"] >= 3
    assert_same_tensors(resumed["model"], expected["model"], "model")
    unsampled = _checkpoint(best)["model"]
    assert any(not torch.allclose(unsampled[k], expected["model"][k]) for k in unsampled)


def test_resume_without_a_checkpoint_is_a_one_line_config_error(tmp_path):
    result = subprocess.run(
        [str(BIN / "mt-train"), "train.resume=auto", f"hydra.run.dir={tmp_path / 'run'}", f"data.data_dir={tmp_path / 'd'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "train.resume" in result.stderr
    assert not (tmp_path / "d").exists()


@pytest.fixture(scope="module")
def signal_data(tmp_path_factory):
    """One corpus cache for the signal tests and their reference runs (sentencepiece trained once)."""
    return tmp_path_factory.mktemp("signal-data")


# a run resumed by another process is exact without subword sampling only: sentencepiece's draw
# differs between processes (README, Resuming and failures)
BEST_SEGMENTATION = "tokenizer.sampling=false"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, signal_data, multi30k_mirror):
    """``uninterrupted(n)``: the run dir of an uninterrupted mt-train run of ``n`` steps (run once per n)."""
    runs = {}

    def run(max_steps: int) -> Path:
        if max_steps not in runs:
            runs[max_steps] = tmp_path_factory.mktemp(f"uninterrupted-{max_steps}") / "run"
            mt_train(runs[max_steps], signal_data, multi30k_mirror, BEST_SEGMENTATION, f"train.max_steps={max_steps}")
        return runs[max_steps]

    return run


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_the_step_writes_last_and_resumes_exactly(
    tmp_path, signal_data, multi30k_mirror, uninterrupted, signum
):
    run_dir = tmp_path / "run"
    args = [str(BIN / "mt-train"), *SMALL, BEST_SEGMENTATION, "train.max_steps=100000", f"hydra.run.dir={run_dir}",
            f"data.data_dir={signal_data}"] + ([f"data.mirror={multi30k_mirror}"] if multi30k_mirror else [])
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)  # during or just after the step-10 validation
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    assert "train.resume=auto" in stderr and "Traceback" not in stderr
    stopped_at = int(re.search(rf"stopped by {signal.Signals(signum).name} after step (\d+);", stderr).group(1))
    # last.pt is the update the signal interrupted, written by the handler: the step-10 validation
    # we waited for came first, so it is a later step than any validation checkpoint so far
    assert _checkpoint(run_dir)["step"] == stopped_at > _metrics(run_dir)[0]["step"] == 10

    # resumed from there, the run ends where an uninterrupted one ends
    end = stopped_at + 5
    mt_train(run_dir, signal_data, multi30k_mirror, BEST_SEGMENTATION, f"train.max_steps={end}", "train.resume=auto")
    reference = uninterrupted(end)
    resumed, expected = _checkpoint(run_dir), _checkpoint(reference)
    for key in ("step", "epoch", "batches_done", "best_bleu", "bad_validations", "nonfinite_steps"):
        assert resumed[key] == expected[key], key
    assert_same_tensors(resumed["model"], expected["model"], "model")
    records, expected_records = _metrics(run_dir), _metrics(reference)
    assert [r["step"] for r in records] == [r["step"] for r in expected_records]
    for record, expected_record in zip(records, expected_records):
        for key in ("epoch", "val_loss", "val_bleu", "lr"):
            assert record[key] == pytest.approx(expected_record[key], rel=1e-5), (record["step"], key)


def test_too_many_nonfinite_losses_in_a_row_stop_the_run(tmp_path, multi30k_mirror, monkeypatch):
    _nan_training_logits_on(monkeypatch, lambda n: n > 10)
    config = _smoke_config(tmp_path, multi30k_mirror, "train.max_steps=100", "train.max_nonfinite=3")
    with pytest.raises(guards.TrainingFailed, match="3 non-finite losses in a row"):
        train_module.train(config, tmp_path / "run")
    assert _checkpoint(tmp_path / "run")["step"] == 10  # the last good state


def test_unwritable_output_folder_and_full_disk_are_caught_before_training(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match="not writable"):
        guards.check_writable(tmp_path / "file" / "checkpoints")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 99, 1))
    with pytest.raises(DataError, match="MiB free"):
        guards.check_free_space(tmp_path, torch.nn.Linear(100, 100))


def test_an_annealed_schedule_reaches_min_lr_at_the_end_of_the_budget(tmp_path, multi30k_mirror):
    """train.lr_schedule=linear over train.max_steps=12 (warm-up 4): the rate each validation
    logs is the formula's for the next update, min_lr after the last."""
    peak, low = 1e-3, 1e-4
    run = ["data.max_train_sentences=300", "tokenizer.vocab_size=300", "train.batch_tokens=1024", "train.valid_every=4",
           "train.max_steps=12", "train.patience=0", "train.warmup_steps=4", f"train.lr={peak}",
           "train.lr_schedule=linear", f"train.min_lr={low}"]  # fmt: skip
    train_module.train(_smoke_config(tmp_path, multi30k_mirror, *run), tmp_path / "run")
    logged = {r["step"]: r["lr"] for r in _metrics(tmp_path / "run")}
    # the decay starts at the peak after update 4 (a third of the budget) and is half done after update 8
    assert logged == pytest.approx({4: peak, 8: low + (peak - low) / 2, 12: low}, rel=1e-9)


def test_resume_with_another_lr_schedule_is_a_one_line_config_error(tmp_path, multi30k_mirror):
    """The scheduler state of one schedule cannot continue another: a clear error, and the run's
    last.pt is left as it was."""
    run = ["data.max_train_sentences=300", "tokenizer.vocab_size=300", "train.batch_tokens=1024", "train.max_steps=2"]
    train_module.train(_smoke_config(tmp_path, multi30k_mirror, *run), tmp_path / "run")
    before = (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes()
    resumed = _smoke_config(tmp_path, multi30k_mirror, *run, "train.max_steps=4", "train.resume=auto", "train.lr_schedule=cosine")
    with pytest.raises(ConfigError, match=r"train\.lr_schedule.*used 'inverse_sqrt'") as error:
        train_module.train(resumed, tmp_path / "run")
    assert "\n" not in str(error.value)
    # the saved schedule's peak rate would win over a new train.lr: refused too
    resumed = _smoke_config(tmp_path, multi30k_mirror, *run, "train.max_steps=4", "train.resume=auto", "train.lr=0.0123")
    with pytest.raises(ConfigError, match=r"^config key 'train\.lr' = 0\.0123: the run being resumed used .*train\.init_from$"):
        train_module.train(resumed, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "last.pt").read_bytes() == before


@pytest.mark.parametrize(
    "key, value", [("lr", 2e-3), ("min_lr", 1e-5), ("warmup_steps", 100), ("lr_schedule", "cosine")]
)
def test_resume_refuses_schedule_settings_other_than_the_runs(key, value):
    """The optimizer and schedule continue from their saved state: a new peak rate, final rate,
    warm-up or schedule could not take effect, so it is refused, naming the key; the run's own
    values pass."""
    run = TrainConfig(lr_schedule="linear", lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100)
    checkpoint = {"config": {"train": to_dict(run)}, "scheduler": {"shape": "linear"}}
    check_resumable(checkpoint, dataclasses.replace(run))
    with pytest.raises(ConfigError, match=rf"^config key 'train\.{key}' = {value!r}: the run being resumed used") as error:
        check_resumable(checkpoint, dataclasses.replace(run, **{key: value}))
    assert "\n" not in str(error.value)


def test_resume_keeps_the_runs_tokenizer_settings_and_refuses_others_given():
    """A resumed run goes on with the sentencepiece models it saved: a tokenizer key given on the
    command line must be the run's (else one line naming it), the sampling keys may change, and
    the config the run records holds the settings of the models it uses."""
    from mt.config import Config, TokenizerConfig

    run = Config(tokenizer=TokenizerConfig(vocab_size=400, alpha=0.1))
    resume = {"config": to_dict(run), "scheduler": {}}
    other = dataclasses.replace(run, tokenizer=TokenizerConfig(vocab_size=500, alpha=0.3))
    with pytest.raises(ConfigError, match=r"^config key 'tokenizer\.vocab_size' = 500 contradicts train\.resume=") as error:
        train_module.starting_point(other, resume, ["tokenizer.vocab_size", "tokenizer.alpha"])
    assert "\n" not in str(error.value)
    cfg, initial = train_module.starting_point(other, resume, ["tokenizer.alpha"])  # vocab_size not given: the run's
    assert initial is None and cfg.tokenizer == TokenizerConfig(vocab_size=400, alpha=0.3)
    cfg, _ = train_module.starting_point(run, resume, ["tokenizer.vocab_size"])  # the run's own value passes
    assert cfg.tokenizer == run.tokenizer
