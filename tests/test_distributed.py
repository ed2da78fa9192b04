"""torchrun DDP and gradient accumulation: 2 CPU processes (gloo) train exactly what 1 process
with train.accum_steps=2 trains, which is the update of the two batches' union. (fp16 training and
its GradScaler state across a resume: tests/test_resume.py.)

Each update of the 2-process run takes two consecutive batches of the epoch's order, one per
rank; the 1-process run accumulates the same two batches. With dropout off, the loss
trajectories and the final weights must agree up to floating-point summation order. The 550
training pairs make 9 batches an epoch (odd: the last one is left over by both runs) and the 8
updates cross the epoch boundary after update 4.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from mt.data import batching
from mt.training import train as train_module
from mt.model.checkpoint import load_checkpoint
from mt.config import from_hydra

from conftest import REPO

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
NO_DROPOUT = [
    "model.dropout=0",
    *(f"model.{site}.dropout=0" for site in ("encoder.self_attention", "decoder.self_attention", "decoder.cross_attention")),
    "tokenizer.sampling=false",  # sentencepiece's sampling differs between processes: one segmentation for both runs
]


def _train(launcher: list[str], run_dir: Path, data_dir: Path, mirror: str | None, *overrides: str) -> None:
    args = [
        *launcher,
        str(BIN / "mt-train"),
        "experiment=smoke",
        "train.precision=fp32",
        "train.max_steps=8",
        "train.valid_every=2",
        "train.num_threads=1",
        "data.max_train_sentences=550",
        "data.max_valid_sentences=8",
        "data.max_test_sentences=8",
        f"data.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        *NO_DROPOUT,
        *overrides,
    ]
    if mirror:
        args.append(f"data.mirror={mirror}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, multi30k_mirror):
    root = tmp_path_factory.mktemp("ddp")
    data_dir = root / "data"  # shared: the second run reuses the first one's tokenizer
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _train([sys.executable], root / "single", data_dir, multi30k_mirror, "train.accum_steps=2")
    _train(torchrun, root / "ddp", data_dir, multi30k_mirror)
    return root / "single", root / "ddp"


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_follow_the_accumulated_single_process_trajectory(runs):
    single, ddp = _records(runs[0]), _records(runs[1])
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [2, 4, 6, 8]  # rank 0 alone writes
    assert [r["epoch"] for r in ddp] == [r["epoch"] for r in single] == [1, 1, 2, 2]  # 4 updates of 2 batches
    for a, b in zip(single, ddp):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    assert single[-1]["train_loss"] < single[0]["train_loss"]


def test_two_processes_reach_the_same_weights(runs):
    single = load_checkpoint(runs[0] / "checkpoints" / "last.pt")["model"]
    ddp = load_checkpoint(runs[1] / "checkpoints" / "last.pt")["model"]
    assert single.keys() == ddp.keys()
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
    assert json.loads((runs[1] / "test_scores.json").read_text())["steps"] == 8


def test_two_processes_train_with_subword_sampling_end_to_end(tmp_path, multi30k_mirror):
    """Two ranks train with subword sampling end to end, rank 0's segmentation broadcast each
    epoch (that the ranks then hold the same one: tests/test_training_data.py)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _train(torchrun, tmp_path / "ddp", tmp_path / "data", multi30k_mirror, "tokenizer.sampling=true")
    records = _records(tmp_path / "ddp")
    assert [r["step"] for r in records] == [2, 4, 6, 8] and [r["epoch"] for r in records] == [1, 1, 2, 2]
    assert all(math.isfinite(r["train_loss"]) for r in records)


def _config(tmp_path: Path, mirror: str | None, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "experiment=smoke", "train.precision=fp32", "train.num_threads=1",
                "data.max_valid_sentences=4", "data.max_test_sentences=4", f"data.data_dir={tmp_path / 'data'}",
                *NO_DROPOUT, *overrides,
            ],
        )  # fmt: skip
    config = from_hydra(cfg)
    config.data.mirror = mirror
    return config


def test_accumulated_batches_make_the_update_of_their_union(tmp_path, multi30k_mirror, monkeypatch):
    """accum_steps=2 over batches [0..3] and [4..7] = one update on the batch [0..7]: the loss is
    normalised by the tokens of the whole update, and padding changes nothing."""
    real_batches = batching.token_batches

    def fixed_batches(groups):
        def token_batches(src_lens, tgt_lens, batch_tokens, shuffle, seed=0):
            return groups if shuffle else real_batches(src_lens, tgt_lens, batch_tokens, shuffle, seed)

        return token_batches

    states = {}
    for name, groups, accum in (("accumulated", [[0, 1, 2, 3], [4, 5, 6, 7]], 2), ("union", [list(range(8))], 1)):
        monkeypatch.setattr(batching, "token_batches", fixed_batches(groups))
        config = _config(tmp_path, multi30k_mirror, "train.max_steps=1", "train.valid_every=1", f"train.accum_steps={accum}")
        train_module.train(config, tmp_path / name)
        states[name] = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]
    for parameter, tensor in states["union"].items():
        torch.testing.assert_close(states["accumulated"][parameter], tensor, rtol=1e-5, atol=1e-6, msg=parameter)
