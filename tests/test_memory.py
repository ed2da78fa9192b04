"""The trainer's resident memory stays flat over batches of ever new shapes (issue 12): glibc's
heap is trimmed every ``train.release_memory_every`` updates and oneDNN's primitive cache is
capped (:mod:`mt.memory`). Each run is a fresh process: oneDNN reads its cache capacity once."""

import json
import subprocess
import sys

import pytest

CHILD = r"""
import json, sys
import torch
from mt.batching import Batch
from mt.config import AttentionConfig, DecoderConfig, EncoderConfig, ModelConfig, TrainConfig
from mt.memory import process_memory_mb, release_free_memory, set_onednn_cache_capacity
from mt.model import Transformer
from mt.train import build_optimization, train_step

release_every, capacity, steps = (int(a) for a in sys.argv[1:4])
if capacity >= 0:
    set_onednn_cache_capacity(capacity)
torch.set_num_threads(1)
torch.manual_seed(0)
site = lambda: AttentionConfig(n_heads=4)
cfg = ModelConfig(d_model=64, ffn_dim=256, encoder=EncoderConfig(n_layers=2, self_attention=site()),
                  decoder=DecoderConfig(n_layers=2, self_attention=site(), cross_attention=site()))
opt = build_optimization(Transformer(cfg, 500, 500, 0), TrainConfig(), torch.device("cpu"), "bf16")
g = torch.Generator().manual_seed(0)
rss = []
for step in range(1, steps + 1):  # a new (batch, src_len, tgt_len) almost every update
    b, s, t = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((4, 40), (4, 70), (4, 70)))
    batch = Batch(torch.randint(4, 500, (b, s), generator=g), torch.randint(4, 500, (b, t), generator=g),
                  torch.randint(4, 500, (b, t), generator=g), [])
    train_step(opt, [batch], b * t)
    if release_every and step % release_every == 0:
        release_free_memory()  # as mt.train.training_loop does
    if step % 100 == 0:
        rss.append(process_memory_mb()["rss_mb"])
print(json.dumps(rss))
"""


def rss_every_100_updates(release_every: int, capacity: int, steps: int = 400) -> list[float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(release_every), str(capacity), str(steps)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="malloc_trim and VmRSS are glibc/Linux")
def test_resident_memory_stops_growing_after_warm_up():
    from mt.config import TrainConfig

    defaults = TrainConfig()  # the trainer's settings
    rss = rss_every_100_updates(defaults.release_memory_every, defaults.onednn_cache_capacity)
    growth = max(rss[1:]) - rss[0]  # after 100 warm-up updates
    # measured: 1 MB with capacity 0, under 40 with 64; with neither setting (release 0, capacity -1) 95 MB, and rising
    assert growth < 40, f"RSS grew by {growth:.0f} MB after warm-up: {[round(r) for r in rss]}"


def test_the_trainer_trims_every_n_updates_and_logs_its_memory(tmp_path, multi30k_mirror, monkeypatch):
    from test_resume import _metrics, _smoke_config

    from mt import train as train_module

    calls = []
    monkeypatch.setattr(train_module, "release_free_memory", lambda: calls.append(1) or True)
    config = _smoke_config(
        tmp_path, multi30k_mirror, "data.max_train_sentences=300", "tokenizer.vocab_size=300",
        "train.batch_tokens=1024", "data.max_valid_sentences=4", "data.max_test_sentences=4",
        "train.max_steps=6", "train.valid_every=3", "train.release_memory_every=2", "train.average_last=0",
    )  # fmt: skip
    train_module.train(config, tmp_path / "run")
    assert len(calls) == 3  # after updates 2, 4 and 6
    records = _metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [3, 6]
    assert all(0 < r["rss_mb"] <= r["peak_rss_mb"] for r in records)
