"""README's aligner stage through the console scripts: ``mt-train experiment=smoke`` (shrunk
further), then ``mt-train experiment=align train.init_from=RUN`` on eflomal's links (CI installs
``[baselines]``), then ``mt-align`` on the result, which reads the aligner by default."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mt.alignment.aer import parse_pharaoh
from mt.alignment.align import align
from mt.model.checkpoint import load_checkpoint, load_for_inference

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
# two nouns swapped between the sides: the gold links cross (1-4 and 4-1), which no monotone
# (diagonal) alignment can give; the nouns are among Multi30k's most frequent
SWAPPED_PAIRS = [
    ("Ein Hund und ein Mann .", "A man and a dog ."),
    ("Eine Frau und ein Kind .", "A child and a woman ."),
    ("Ein Mann und eine Frau .", "A woman and a man ."),
    ("Ein Junge und ein Mädchen .", "A girl and a boy ."),
]
GOLD = {(0, 0), (1, 4), (2, 2), (3, 3), (4, 1), (5, 5)}  # (src word, tgt word) of every pair above
CROSSING = {(1, 4), (4, 1)}


def run(*args: object) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def stage(tmp_path_factory, multi30k_mirror):
    """The base run and the aligner stage on top of it (about 40 s on 2 cores, eflomal included)."""
    root = tmp_path_factory.mktemp("stage")
    # shared by both runs; tiny matmuls: a second thread only spins
    common = [f"data.data_dir={root / 'data'}", "train.num_threads=1"]
    common += [f"data.mirror={multi30k_mirror}"] if multi30k_mirror else []
    base = [
        "data.max_train_sentences=500", "data.max_valid_sentences=20", "data.max_test_sentences=20",
        "tokenizer.vocab_size=500", "train.max_steps=20", "train.valid_every=20",
    ]  # fmt: skip
    run("mt-train", "experiment=smoke", *base, *common, f"hydra.run.dir={root / 'base'}")
    # README: mt-train experiment=align train.init_from=RUN, for a smoke run's length
    stage = [f"train.init_from={root / 'base'}", "train.max_steps=30", "train.valid_every=30", "train.max_minutes=0"]
    run("mt-train", "experiment=align", *stage, *common, f"hydra.run.dir={root / 'align'}")
    return root / "base", root / "align"


def test_stage_adds_an_aligner_and_keeps_every_translation_weight(stage):
    base_dir, align_dir = stage
    base = load_checkpoint(base_dir / "checkpoints" / "best.pt")
    aligned = load_checkpoint(align_dir / "checkpoints" / "best.pt")
    assert base["model_config"]["aligner"]["enabled"] is False
    assert aligned["model_config"]["aligner"]["enabled"] is True
    added = set(aligned["model"]) - set(base["model"])
    assert added and all(name.startswith("aligner.") for name in added)
    for name, tensor in base["model"].items():  # README: every translation weight stays bit-identical
        assert torch.equal(aligned["model"][name], tensor), name


def test_mt_align_reads_the_aligner_by_default_and_finds_crossing_links(stage, tmp_path):
    _, align_dir = stage
    (tmp_path / "src.de").write_text("".join(src + "\n" for src, _ in SWAPPED_PAIRS), encoding="utf-8")
    (tmp_path / "tgt.en").write_text("".join(tgt + "\n" for _, tgt in SWAPPED_PAIRS), encoding="utf-8")
    run("mt-align", align_dir, "--src", tmp_path / "src.de", "--tgt", tmp_path / "tgt.en", "--out", tmp_path / "out")
    lines = (tmp_path / "out" / "alignments.txt").read_text().splitlines()
    links = [{tuple(link) for link in parse_pharaoh(line)} for line in lines]
    assert len(links) == len(SWAPPED_PAIRS)
    for pair_links, (src, tgt) in zip(links, SWAPPED_PAIRS):  # well-formed: word positions of the pair
        assert pair_links and all(0 <= i < len(src.split()) and 0 <= j < len(tgt.split()) for i, j in pair_links)
    # the default method is the aligner's: the same links as a fresh align() with method="aligner"
    model, tokenizer, _ = load_for_inference(align_dir / "checkpoints" / "best.pt")
    sources, targets = [src for src, _ in SWAPPED_PAIRS], [tgt for _, tgt in SWAPPED_PAIRS]
    fresh = align(model, tokenizer, sources, targets, method="aligner")
    assert links == [{tuple(link) for link in alignment.links} for alignment in fresh]
    # better than a diagonal: most crossing noun links are found (a diagonal finds none of them)
    # and most links are gold ones
    found = sum(len(pair_links & CROSSING) for pair_links in links)
    assert found >= 3 * len(SWAPPED_PAIRS) // 2, links
    precision = sum(len(pair_links & GOLD) for pair_links in links) / sum(len(pair_links) for pair_links in links)
    assert precision >= 0.75, links
