"""Exact resume, graceful stop on SIGINT/SIGTERM, non-finite guards, output-folder checks."""

import json
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

from mt import guards
from mt import train as train_module
from mt.checkpoint import load_checkpoint
from mt.config import from_hydra
from mt.objective import Objective
from mt.errors import DataError

from conftest import REPO

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
SMALL = ["experiment=smoke", "data.max_valid_sentences=20", "data.max_test_sentences=10", "train.valid_every=10"]


def mt_train(run_dir, data_dir, mirror, *overrides, check=True):
    args = [str(BIN / "mt-train"), *SMALL, f"hydra.run.dir={run_dir}", f"data.data_dir={data_dir}", *overrides]
    if mirror:
        args.append(f"data.mirror={mirror}")
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, multi30k_mirror):
    data = tmp_path / "data"
    mt_train(tmp_path / "whole", data, multi30k_mirror, "train.max_steps=40")
    mt_train(tmp_path / "parts", data, multi30k_mirror, "train.max_steps=20")
    assert load_checkpoint(tmp_path / "parts" / "checkpoints" / "last.pt")["step"] == 20
    mt_train(tmp_path / "parts", data, multi30k_mirror, "train.max_steps=40", "train.resume=auto")
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    parts = load_checkpoint(tmp_path / "parts" / "checkpoints" / "last.pt")
    assert parts["step"] == whole["step"] == 40 and parts["epoch"] == whole["epoch"]
    for name, tensor in whole["model"].items():
        assert torch.allclose(tensor, parts["model"][name], atol=1e-6), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]  # the resumed run appends to the metrics
    # resuming a run that already reached train.max_steps trains no further
    mt_train(tmp_path / "parts", data, multi30k_mirror, "train.max_steps=40", "train.resume=auto")
    assert load_checkpoint(tmp_path / "parts" / "checkpoints" / "last.pt")["step"] == 40


def test_resume_without_a_checkpoint_is_a_one_line_config_error(tmp_path):
    result = subprocess.run(
        [str(BIN / "mt-train"), "train.resume=auto", f"hydra.run.dir={tmp_path / 'run'}", f"data.data_dir={tmp_path / 'd'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "train.resume" in result.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_the_step_writes_last_and_exits_nonzero(tmp_path, multi30k_mirror, signum):
    run_dir = tmp_path / "run"
    args = [str(BIN / "mt-train"), *SMALL, "train.max_steps=100000", f"hydra.run.dir={run_dir}",
            f"data.data_dir={tmp_path / 'data'}"] + ([f"data.mirror={multi30k_mirror}"] if multi30k_mirror else [])
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    assert "train.resume=auto" in stderr and "Traceback" not in stderr
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] >= 10
    resumed = mt_train(run_dir, tmp_path / "data", multi30k_mirror, f"train.max_steps={state['step'] + 5}",
                       "train.resume=auto")
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == state["step"] + 5
    assert resumed.returncode == 0


def _smoke_config(tmp_path, mirror, *overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*SMALL, f"data.data_dir={tmp_path / 'data'}", *overrides])
    config = from_hydra(cfg)
    config.data.mirror = mirror
    return config


def _nan_losses_on(monkeypatch, is_nan_call) -> None:
    """Make the objective's total NaN on the calls (1-based) for which ``is_nan_call(n)`` holds."""
    real = Objective.forward
    calls = {"n": 0}

    def forward_or_nan(self, *batch):
        calls["n"] += 1
        total, terms, n = real(self, *batch)
        return (total * float("nan"), terms, n) if is_nan_call(calls["n"]) else (total, terms, n)

    monkeypatch.setattr(Objective, "forward", forward_or_nan)


def test_nonfinite_losses_skip_their_update_and_are_counted(tmp_path, multi30k_mirror, monkeypatch):
    _nan_losses_on(monkeypatch, lambda n: n in (3, 4))
    train_module.train(_smoke_config(tmp_path, multi30k_mirror, "train.max_steps=10"), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 10 and record["nonfinite_steps"] == 2
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_too_many_nonfinite_losses_in_a_row_stop_the_run(tmp_path, multi30k_mirror, monkeypatch):
    _nan_losses_on(monkeypatch, lambda n: n > 10)
    config = _smoke_config(tmp_path, multi30k_mirror, "train.max_steps=100", "train.max_nonfinite=3")
    with pytest.raises(guards.TrainingFailed, match="3 non-finite losses in a row"):
        train_module.train(config, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 10  # the last good state


def test_unwritable_output_folder_and_full_disk_are_caught_before_training(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match="not writable"):
        guards.check_writable(tmp_path / "file" / "checkpoints")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100, 99, 1))
    with pytest.raises(DataError, match="MiB free"):
        guards.check_free_space(tmp_path, torch.nn.Linear(100, 100))
