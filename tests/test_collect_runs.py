"""scripts/collect_runs.py on a multirun folder laid out as Hydra writes it (checked against a real mt-train -m)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "collect_runs.py"

# job → (overrides, val_bleu per validation, tokens_per_s per validation, test BLEU or None)
JOBS = {
    "0": (["experiment=smoke", "train.seed=1", "train.lr=0.001"], [1.5, 7.25, 6.0], [1000.0, 3000.0, 2000.0], 6.5),
    "1": (["experiment=smoke", "train.seed=2", "train.lr=0.001"], [2.0, 9.5, 9.75], [1500.0, 2500.0, 4000.0], 8.25),
    "2": (["experiment=smoke", "train.seed=1", "train.lr=0.003"], [3.0, 4.0], [5000.0, 6000.0], None),  # unfinished
}


@pytest.fixture
def multirun(tmp_path) -> Path:
    """Hydra's multirun layout: multirun.yaml, then per job .hydra/{config,hydra,overrides}.yaml, metrics.jsonl,
    test_scores.json; job 2 was stopped mid-write, job 3 crashed before its first validation."""
    root = tmp_path / "multirun" / "2026-01-31" / "12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for name, (overrides, bleus, speeds, test_bleu) in JOBS.items():
        job = root / name
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
        (job / ".hydra" / "config.yaml").write_text("train:\n  seed: 1\n")
        (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
        lines = [
            json.dumps({"step": 50 * (i + 1), "epoch": 1, "val_bleu": bleu, "tokens_per_s": speed, "val_loss": 3.0})
            for i, (bleu, speed) in enumerate(zip(bleus, speeds))
        ]
        (job / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
        if test_bleu is not None:
            (job / "test_scores.json").write_text(json.dumps({"bleu": test_bleu, "chrf": 30.0, "n_sentences": 100}))
    with (root / "2" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 150, "val_bl')  # killed while writing
    crashed = root / "3" / ".hydra"
    crashed.mkdir(parents=True)
    (crashed / "overrides.yaml").write_text("- experiment=smoke\n- train.seed=2\n- train.lr=0.003\n")
    return root


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


def markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return split[0], split[2:]  # header, rows (after the alignment line)


def test_rows_and_columns_match_the_jobs(multirun):
    result = run(multirun)
    assert result.returncode == 0, result.stderr
    assert "`experiment=smoke`" in result.stdout  # common to all jobs: listed once, not a column
    header, rows = markdown_table(result.stdout)
    assert header == ["train.seed", "train.lr", "best_val_bleu", "test_bleu", "tokens_per_s", "folder", "note"]
    assert [row[:5] for row in rows] == [
        ["1", "0.001", "7.25", "6.50", "2000"],
        ["2", "0.001", "9.75", "8.25", "2667"],
        ["1", "0.003", "4.00", "", "5500"],
        ["2", "0.003", "", "", ""],
    ]
    assert (multirun / "summary.md").read_text() == result.stdout  # the default PREFIX is MULTIRUN/summary

    with (multirun / "summary.csv").open(newline="") as f:
        records = list(csv.DictReader(f))
    assert [Path(r["folder"]).name for r in records] == ["0", "1", "2", "3"]
    for record in records[:3]:
        overrides, bleus, speeds, test_bleu = JOBS[Path(record["folder"]).name]
        assert f"train.seed={record['train.seed']}" in overrides and f"train.lr={record['train.lr']}" in overrides
        assert float(record["best_val_bleu"]) == max(bleus)
        assert float(record["tokens_per_s"]) == pytest.approx(sum(speeds) / len(speeds), rel=1e-12)
        assert record["test_bleu"] == ("" if test_bleu is None else str(test_bleu))
    assert records[0]["note"] == records[1]["note"] == ""
    assert "unfinished" in records[2]["note"] and "line 3 unreadable" in records[2]["note"]
    assert "no metrics.jsonl" in records[3]["note"] and records[3]["best_val_bleu"] == ""


def test_sort_and_out_prefix(multirun, tmp_path):
    result = run(multirun, "--sort", "best_val_bleu", "--out", tmp_path / "report" / "sweep")
    assert result.returncode == 0, result.stderr
    with (tmp_path / "report" / "sweep.csv").open(newline="") as f:
        order = [Path(r["folder"]).name for r in csv.DictReader(f)]
    assert order == ["1", "0", "2", "3"]  # best first, the job without a score last
    assert (tmp_path / "report" / "sweep.md").read_text() == result.stdout
    assert not (multirun / "summary.csv").exists()

    result = run(multirun, "--sort", "train.lr")
    _, rows = markdown_table(result.stdout)
    assert [row[1] for row in rows] == ["0.001", "0.001", "0.003", "0.003"]


@pytest.mark.parametrize("case", ["no jobs", "missing", "not a multirun", "bad sort"])
def test_errors_are_one_line(tmp_path, multirun, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "multirun.yaml").write_text("hydra: {}\n")
    args, expected = {
        "no jobs": ([empty], "holds no Hydra jobs"),
        "missing": ([tmp_path / "nope"], "no such folder"),
        "not a multirun": ([multirun / "0"], "no multirun.yaml"),
        "bad sort": ([multirun, "--sort", "bleu"], "--sort bleu: not a column"),
    }[case]
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("collect_runs.py: error:")
    assert expected in result.stderr


def test_alignment_sweeps_get_the_last_aer_and_sort_lowest_first(multirun):
    assert "final_aer" not in markdown_table(run(multirun).stdout)[0]  # no job logs AER
    for job, aers in (("0", [0.6, 0.25]), ("1", [0.5, 0.4])):
        with (multirun / job / "metrics.jsonl").open("a") as f:
            for step, aer in zip((200, 250), aers):
                f.write(json.dumps({"step": step, "epoch": 2, "val_bleu": 1.0, "tokens_per_s": 1.0, "aer": aer}) + "\n")
    header, rows = markdown_table(run(multirun, "--sort", "final_aer").stdout)
    column = header.index("final_aer")
    assert [row[column] for row in rows] == ["25.00", "40.00", "", ""]  # the last validation's, in %
    assert [row[header.index("folder")].rsplit("/", 1)[-1] for row in rows][:2] == ["0", "1"]
