"""torchrun DDP and gradient accumulation: 2 CPU processes (gloo) train exactly what 1 process
with train.accum_steps=2 trains, which is the update of the two batches' union. (fp16 training and
its GradScaler state across a resume: tests/test_resume.py.)

Each update of the 2-process run takes two consecutive batches of the epoch's order, one per
rank; the 1-process run accumulates the same two batches. With dropout off, the loss
trajectories and the final weights must agree up to floating-point summation order. The 550
training pairs make 9 batches an epoch (odd: the last one is left over by both runs) and the 8
updates cross the epoch boundary after update 4. The same holds with subword sampling, where
rank 0 draws each epoch's segmentation and every rank trains on it.

Tolerance: both runs add the same two batches' gradients (the all-reduce of two ranks, or the
accumulation in ``.grad``; a + b = b + a exactly), and the logged losses differ by the order of
their float64 sums: measured, the weights agree bit for bit and the losses to 5e-8 relative.
rtol 1e-4 leaves room for kernels that reduce in another order; a rank that trains on its own
subword draw instead of rank 0's moves the first logged loss by 4e-3 relative (measured), 40x it.
"""

import json
import os
import re
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
MT_TRAIN = str(Path(sys.executable).parent / "mt-train")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
NO_DROPOUT = [
    "model.dropout=0",
    *(f"model.{site}.dropout=0" for site in ("encoder.self_attention", "decoder.self_attention", "decoder.cross_attention")),
    "tokenizer.sampling=false",  # sentencepiece's sampling differs between processes: one segmentation for both runs
]


def _train(command: list[str], run_dir: Path, data_dir: Path, mirror: str | None, *overrides: str) -> None:
    """Run ``command`` (mt-train, alone or under torchrun) on the 550-pair slice."""
    args = [
        *command,
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
    _train([sys.executable, MT_TRAIN], root / "single", data_dir, multi30k_mirror, "train.accum_steps=2")
    _train([*TORCHRUN, MT_TRAIN], root / "ddp", data_dir, multi30k_mirror)
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


# mt-train with a subword sampler that draws the same segmentations for one seed and rank in
# every process: sentencepiece's own draws differ between processes (Tokenizer.sample), so no
# second run could reproduce them. Each rank draws differently, as sentencepiece's do, so a rank
# that trained on its own draw instead of rank 0's would leave the single-process trajectory.
RANK_SEEDED_SAMPLER = """
import os
import random
import sys

from mt.cli import train_main
from mt.data.tokenizer import Tokenizer


def sample(self, src_texts, tgt_texts, alpha, nbest_size, seed):
    draws = random.Random(f"{seed} {os.environ.get('RANK', '0')}")  # str seeds hash the same in every process
    def draw(processor, texts):
        return [draws.choice(processor.nbest_encode(text, out_type=int, nbest_size=4)) for text in texts]
    return draw(self.src, src_texts), draw(self.tgt, tgt_texts)


Tokenizer.sample = sample
sys.exit(train_main())
"""


def test_two_processes_train_on_rank_0s_subword_samples(tmp_path, multi30k_mirror):
    """With ``tokenizer.sampling=true`` both ranks train on rank 0's segmentation of each epoch:
    the 2-process run follows a single process that draws the same segmentations and
    accumulates the same two batches per update (losses per update and final weights)."""
    launcher = tmp_path / "mt_train_rank_seeded_sampling.py"
    launcher.write_text(RANK_SEEDED_SAMPLER)
    data_dir = tmp_path / "data"
    _train([sys.executable, str(launcher)], tmp_path / "single", data_dir, multi30k_mirror,
           "tokenizer.sampling=true", "train.accum_steps=2")  # fmt: skip
    _train([*TORCHRUN, str(launcher)], tmp_path / "ddp", data_dir, multi30k_mirror, "tokenizer.sampling=true")
    # the first epoch's draw as the trainer logs it (rank 0 alone logs): sampled, and the same size
    ratios = {run: re.findall(r"([0-9.]+)× the target pieces", (tmp_path / run / "train.log").read_text())
              for run in ("single", "ddp")}  # fmt: skip
    assert len(ratios["single"]) == 1 and ratios["ddp"] == ratios["single"] and float(ratios["single"][0]) > 1.0
    single, ddp = _records(tmp_path / "single"), _records(tmp_path / "ddp")
    assert [r["step"] for r in ddp] == [r["step"] for r in single] == [2, 4, 6, 8]
    assert [r["epoch"] for r in ddp] == [r["epoch"] for r in single] == [1, 1, 2, 2]
    for a, b in zip(single, ddp):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    single_weights = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")["model"]
    ddp_weights = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["model"]
    for name, tensor in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


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
