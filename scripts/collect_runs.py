"""One table for a Hydra sweep: a row per job with its overrides, best val BLEU, test BLEU and speed.

    mt-train -m experiment=smoke train.seed=1,2,3 train.lr=0.001,0.003
    python scripts/collect_runs.py outputs/multirun/2026-01-31/12-00-00 --sort best_val_bleu

Reads the jobs of a multirun folder (``multirun.yaml`` and the subfolders ``0``, ``1``, … holding
``.hydra/overrides.yaml``): each job's ``metrics.jsonl`` (one line per validation) and
``test_scores.json`` (written when training finished). Columns:

- one per override whose value differs between jobs (overrides shared by all jobs are listed
  once above the table; an override a job lacks is blank);
- ``best_val_bleu``: the highest ``val_bleu`` of ``metrics.jsonl``;
- ``test_bleu``: ``bleu`` of ``test_scores.json``, blank while the job is unfinished or crashed;
- ``tokens_per_s``: target tokens per second of training, the mean over the job's validations;
- ``final_aer`` (only when some job logs ``aer``, i.e. trains with ``data.alignment_gold``): the
  AER of the last validation, in percent, lower is better (``--sort final_aer`` puts the lowest
  first);
- ``folder``: the job folder; ``note``: why values are missing (unfinished, crashed, unreadable).

Prints the Markdown table and writes it to ``PREFIX.md`` and the same columns, unrounded, to
``PREFIX.csv``; ``PREFIX`` is ``--out`` or, by default, ``MULTIRUN/summary``. ``--sort COLUMN``
orders the rows by one column: the three metrics best first, others ascending, blanks last
(default: job number).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from omegaconf import OmegaConf

METRICS = ("best_val_bleu", "test_bleu", "tokens_per_s")  # higher is better: --sort puts the highest first


class SweepError(Exception):
    """An unusable multirun folder or option, explained in one line."""


def job_folders(multirun: Path) -> list[Path]:
    """The job subfolders of a Hydra multirun folder (those with ``.hydra/overrides.yaml``), by job number.

    Raises:
        SweepError: the folder is missing, is not a multirun folder (no ``multirun.yaml``, which
            Hydra writes before the first job starts) or holds no jobs.
    """
    if not multirun.is_dir():
        raise SweepError(f"{multirun}: no such folder")
    if not (multirun / "multirun.yaml").is_file():
        raise SweepError(f"{multirun} is not a Hydra multirun folder (no multirun.yaml); pass the hydra.sweep.dir of mt-train -m")
    jobs = [p for p in multirun.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()]
    if not jobs:
        raise SweepError(
            f"{multirun} holds no Hydra jobs (subfolders 0, 1, … with .hydra/overrides.yaml); "
            "pass the folder of one mt-train -m sweep"
        )
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def read_overrides(job: Path) -> dict[str, str]:
    """``{key: value}`` from a job's ``.hydra/overrides.yaml`` (a list of ``key=value`` strings)."""
    path = job / ".hydra" / "overrides.yaml"
    try:
        items = OmegaConf.load(path)
    except Exception as error:  # noqa: BLE001 — any YAML problem becomes one line naming the file
        raise SweepError(f"{path}: not readable YAML ({str(error).splitlines()[0]})") from None
    if not OmegaConf.is_list(items):
        raise SweepError(f"{path}: expected a list of key=value overrides")
    overrides = {}
    for item in items:
        key, _, value = str(item).partition("=")
        overrides[key] = value
    return overrides


def job_row(job: Path) -> dict:
    """Metrics of one job: ``best_val_bleu``, ``test_bleu``, ``tokens_per_s``, ``final_aer`` (None when missing) and ``note``."""
    row = {"best_val_bleu": None, "test_bleu": None, "tokens_per_s": None, "final_aer": None, "folder": str(job)}
    notes = []
    records = []
    metrics = job / "metrics.jsonl"
    if not metrics.is_file():
        notes.append("no metrics.jsonl (crashed before training?)")
    else:
        for number, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                notes.append(f"metrics.jsonl line {number} unreadable")
                break  # a crash mid-write leaves a partial last line
        if not records and not notes:
            notes.append("no validation yet")
    bleus = [r["val_bleu"] for r in records if isinstance(r.get("val_bleu"), (int, float))]
    speeds = [r["tokens_per_s"] for r in records if isinstance(r.get("tokens_per_s"), (int, float))]
    row["best_val_bleu"] = max(bleus) if bleus else None
    row["tokens_per_s"] = sum(speeds) / len(speeds) if speeds else None
    aers = [r["aer"] for r in records if isinstance(r.get("aer"), (int, float))]
    row["final_aer"] = 100 * aers[-1] if aers else None

    scores = job / "test_scores.json"
    if scores.is_file():
        try:
            row["test_bleu"] = json.loads(scores.read_text(encoding="utf-8"))["bleu"]
        except (json.JSONDecodeError, KeyError, TypeError):
            notes.append("test_scores.json unreadable")
    elif metrics.is_file():
        last = f" (last validation: step {records[-1].get('step')})" if records else ""
        notes.append(f"unfinished or crashed: no test_scores.json{last}")
    row["note"] = "; ".join(notes)
    return row


def collect(multirun: Path) -> tuple[dict[str, str], list[str], list[dict]]:
    """Common overrides, the table's columns, and one row per job.

    Returns:
        common: ``{key: value}`` of the overrides every job has with the same value;
        columns: the differing override keys (in order of first appearance), then ``METRICS``,
            ``final_aer`` when a job has it, ``folder`` and ``note``;
        rows: ``{column: value}``, metrics as floats or None, overrides as strings or None.
    """
    jobs = job_folders(multirun)
    overrides = [read_overrides(job) for job in jobs]
    keys = list(dict.fromkeys(key for job in overrides for key in job))
    common = {
        key: overrides[0][key]
        for key in keys
        if all(key in job for job in overrides) and len({job[key] for job in overrides}) == 1
    }
    varying = [key for key in keys if key not in common]
    rows = [
        {**{key: job_overrides.get(key) for key in varying}, **job_row(job)}
        for job, job_overrides in zip(jobs, overrides)
    ]
    aer = ["final_aer"] if any(row["final_aer"] is not None for row in rows) else []
    for row in rows:
        if not aer:
            del row["final_aer"]
    return common, [*varying, *METRICS, *aer, "folder", "note"], rows


def sort_rows(rows: list[dict], column: str, columns: list[str]) -> list[dict]:
    """Rows ordered by ``column``: metrics highest first, other columns ascending (numbers as numbers), blanks last."""
    if column not in columns:
        raise SweepError(f"--sort {column}: not a column; choose one of {', '.join(columns)}")

    def key(row: dict):
        value = row[column]
        if value is None or value == "":
            return (1, 0, "")
        try:
            number = float(value)
        except ValueError:
            return (0, 1, str(value))
        return (0, 0, -number if column in METRICS else number)

    return sorted(rows, key=key)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.2f}"
    return str(value).replace("|", "\\|")


def to_markdown(multirun: Path, common: dict[str, str], columns: list[str], rows: list[dict]) -> str:
    """The shared overrides as one line, then a Markdown table (BLEU to 2 decimals, tokens/s whole)."""
    lines = [f"Sweep {multirun}: {len(rows)} jobs; tokens_per_s is the mean over each job's validations."]
    if common:
        lines.append("Common overrides: " + " ".join(f"`{key}={value}`" for key, value in common.items()))
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "|".join("---:" if c in METRICS else "---" for c in columns) + "|"]
    for row in rows:
        cells = [f"{row[c]:.0f}" if c == "tokens_per_s" and row[c] is not None else _cell(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """The rows with full-precision numbers; missing values as empty cells."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: "" if row[c] is None else row[c] for c in columns} for row in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="collect_runs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun", metavar="MULTIRUN", help="a Hydra multirun folder (hydra.sweep.dir)")
    parser.add_argument("--out", metavar="PREFIX", help="write PREFIX.md and PREFIX.csv (default: MULTIRUN/summary)")
    parser.add_argument("--sort", metavar="COLUMN", help="order rows by this column (metrics best first)")
    args = parser.parse_args(argv)
    try:
        multirun = Path(args.multirun)
        common, columns, rows = collect(multirun)
        if args.sort:
            rows = sort_rows(rows, args.sort, columns)
        markdown = to_markdown(multirun, common, columns, rows)
        prefix = Path(args.out) if args.out else multirun / "summary"
        try:
            prefix.parent.mkdir(parents=True, exist_ok=True)
            prefix.with_name(prefix.name + ".md").write_text(markdown, encoding="utf-8")
            write_csv(prefix.with_name(prefix.name + ".csv"), columns, rows)
        except OSError as error:
            raise SweepError(f"cannot write {prefix}.md/.csv: {error.strerror or error}") from None
    except SweepError as error:
        print(f"collect_runs.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.write(markdown)
    print(f"wrote {prefix}.md and {prefix}.csv", file=sys.stderr)


if __name__ == "__main__":
    main()
