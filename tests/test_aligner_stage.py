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
    files = ["--src", tmp_path / "src.de", "--tgt", tmp_path / "tgt.en"]
    run("mt-align", align_dir, *files, "--out", tmp_path / "out", "--no-adapt")
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
    # adapting (the default for a stage's checkpoint). eflomal has no seed: on this tiny stage about
    # 1 run in 100 misses (measured: 2 of 220 runs found 4 of the 8 crossing links; one CI run
    # found 2), so a miss is retried twice; a change that breaks adapting misses every time
    misses = []
    for attempt in range(3):
        run("mt-align", align_dir, *files, "--out", tmp_path / f"adapted{attempt}")
        lines = (tmp_path / f"adapted{attempt}" / "alignments.txt").read_text().splitlines()
        adapted = [{tuple(link) for link in parse_pharaoh(line)} for line in lines]
        if sum(len(pair_links & CROSSING) for pair_links in adapted) >= 3 * len(SWAPPED_PAIRS) // 2:
            break
        misses.append(adapted)
    else:
        raise AssertionError(f"adapting found too few crossing links in 3 runs: {misses}")


def test_the_stage_keeps_its_teachers_priors_and_the_aligner_adapts_by_default(stage):
    import gzip

    import mt
    from mt.alignment.adapt import Teacher

    base_dir, align_dir = stage
    saved = load_checkpoint(align_dir / "checkpoints" / "best.pt")["alignment_teacher"]
    assert (saved["unit"], saved["symmetrize"]) == ("word", "grow-diag-final-and")  # experiment=align's data settings
    priors = gzip.decompress(saved["priors"]).decode()
    assert "LEX\thund\tdog\t" in priors  # learnt from the stage's training links, lowercased as eflomal reads
    translator = mt.load(align_dir)
    assert translator.teacher == Teacher.from_state(saved) and translator.adapting() == translator.teacher
    translator.adapt = False
    assert translator.adapting() is None
    assert "alignment_teacher" not in load_checkpoint(base_dir / "checkpoints" / "best.pt")


def test_adapt_on_a_checkpoint_without_a_teacher_is_a_one_line_error(stage):
    base_dir, _ = stage
    result = subprocess.run(
        [str(BIN / "mt-align"), str(base_dir), "Ein Hund .", "A dog .", "--adapt"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.startswith("mt-align: error: --adapt: ") and "no aligner with eflomal priors" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bench_adapt_scores_each_row_against_the_gold_set(stage, tmp_path):
    """scripts/bench_adapt.py's rows: the aligner's AER without adapting is mt-align --no-adapt's
    on the same pairs, and every row scores pairs of the gold set (AER in [0, 100])."""
    import json

    from mt.alignment.aer import score_alignments

    _, align_dir = stage
    prefix = tmp_path / "deen"  # the name spells the languages
    (tmp_path / "deen.src-tgt").write_text("".join(f"{s} ||| {t}\n" for s, t in SWAPPED_PAIRS), encoding="utf-8")
    (tmp_path / "deen.talp").write_text("".join(" ".join(f"{i + 1}-{j + 1}" for i, j in sorted(GOLD)) + "\n" for _ in SWAPPED_PAIRS))
    script = Path(__file__).parents[1] / "scripts" / "bench_adapt.py"
    result = subprocess.run([sys.executable, str(script), str(align_dir), "--gold", str(prefix), "--chunks", "1,0"],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    model, tokenizer, _ = load_for_inference(align_dir / "checkpoints" / "best.pt")
    plain = align(model, tokenizer, [s for s, _ in SWAPPED_PAIRS], [t for _, t in SWAPPED_PAIRS], method="aligner")
    gold = [set(GOLD) for _ in SWAPPED_PAIRS]
    expected = 100 * score_alignments([a.links for a in plain], gold, gold).aer
    assert report["rows"]["aligner, no adapting"]["aer"] == [pytest.approx(expected)]
    assert set(report["rows"]) == {
        "aligner, no adapting", "eflomal from the priors (grow-diag-final-and)",
        "aligner, adapting 1 pairs at a time, links auto",
        f"aligner, adapting {len(SWAPPED_PAIRS)} pairs at a time, links auto",
    }  # fmt: skip
    assert all(0 <= aer <= 100 for row in report["rows"].values() for aer in row["aer"])
