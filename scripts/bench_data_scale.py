"""Data at scale (issue 12): how long ``mt-train`` takes to reach its first update on a big corpus,
and its peak resident memory, with a cold data cache and with the cache reused.

    python scripts/bench_data_scale.py                          # Multi30k train × 40: 1.16M pairs, 100 updates
    python scripts/bench_data_scale.py --copies 2 --updates 5   # a quick check (about a minute)
    taskset -c 1 python scripts/bench_data_scale.py             # pinned to one core

The corpus (:func:`build_corpus`) is Multi30k's training split repeated ``--copies`` times,
written as plain ``train.{de,en}`` files, with ``val.{de,en}`` and ``test.{de,en}`` from the real
Multi30k val and test_2016_flickr, all read from ``--mirror`` (``MT_DATA_MIRROR``). Then
``mt-train data=files data.path=CORPUS train.max_steps=UPDATES`` runs twice in a subprocess with
one ``data.data_dir`` that starts empty: **cold** (sentencepiece trained, texts tokenized, caches
written) and **cached** (both read back). Everything else is the default recipe, except that
validation and test decode only their first ``--eval-sentences`` sentences (neither is what this
measures) and no checkpoints are averaged.

Measured per run:

- ``preparation_s``: seconds from starting the process until the trainer logs its model (the
  line ``model: … parameters``, logged as soon as :func:`mt.training.training_data.prepare_data` returns):
  Python's imports, corpus reading, sentencepiece, tokenization, filtering and validation
  batches; the first update follows at once.
- ``prepare_data_s`` and ``data_peak_rss_mb``: the trainer's own timing of ``prepare_data`` and
  its peak resident set when that returns (its ``training data ready`` log line; null for
  versions before it).
- ``peak_rss_mb``: the child's peak resident set (``ru_maxrss`` from ``os.wait4``: the whole run,
  the updates, validation and test decoding included; a grandchild process counts by its own
  peak, not added). On a CPU the updates themselves can set it: the default recipe on plain
  Multi30k peaks at about 1.25 GB in 100 updates (``--copies 1``) on tcmalloc, which ``mt-train``
  restarts on where it is installed, and at about 2.6 GB before the memory work of issue 12
  (glibc's heap fragmenting over new batch shapes).

The mt code the child runs is whatever ``python -c "import mt"`` finds: set ``PYTHONPATH`` to
measure another checkout. The last line is JSON: the corpus size, one object per run and the
targets of issue 12 (preparation ≤ 90 s cold and ≤ 10 s cached, peak RSS ≤ 2,048 MB).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"cold_preparation_s": 90.0, "cached_preparation_s": 10.0, "peak_rss_mb": 2048.0}
SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}  # our file stem → Multi30k split
MODEL_LINE = re.compile(r"model: [\d.]+M parameters")
READY_LINE = re.compile(r"training data ready in ([\d.]+) s.*peak RSS (\d+) MB")
CHILD = "import sys; from mt.cli import train_main; sys.argv[0] = 'mt-train'; train_main()"


def build_corpus(mirror: Path, out_dir: Path, copies: int, langs: tuple[str, str] = ("de", "en")) -> int:
    """Write ``{train,val,test}.{lang}`` plain-text files into ``out_dir``: train = Multi30k's
    training split repeated ``copies`` times, val/test = Multi30k val and test_2016_flickr.

    Args:
        mirror: folder holding Multi30k's raw ``{split}.{lang}.gz`` files.
        copies: how many times the training split is repeated (≥ 1).

    Returns: the number of training pairs written.

    Raises:
        FileNotFoundError: a Multi30k file is missing from ``mirror``.
        ValueError: ``copies`` < 1.
    """
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    out_dir.mkdir(parents=True, exist_ok=True)
    n_train = 0
    for stem, split in SPLITS.items():
        for lang in langs:
            with gzip.open(mirror / f"{split}.{lang}.gz", "rb") as f:
                text = f.read()
            if text and not text.endswith(b"\n"):
                text += b"\n"
            repeats = copies if stem == "train" else 1
            with open(out_dir / f"{stem}.{lang}", "wb") as f:
                for _ in range(repeats):
                    f.write(text)
            if stem == "train":
                n_train = text.count(b"\n") * repeats
    return n_train


def run_trainer(corpus: Path, data_dir: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    """One ``mt-train`` run in a subprocess; its output goes to ``run_dir/stdout.log``.

    Returns: ``{"preparation_s", "prepare_data_s", "data_peak_rss_mb", "peak_rss_mb", "wall_s"}``
        (see module doc; seconds and MiB).

    Raises:
        RuntimeError: the trainer failed (the message holds the end of its output).
    """
    overrides = [
        "data=files", f"data.path={corpus}", "data.valid_split=val", f"data.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
        f"train.max_steps={args.updates}", f"data.max_valid_sentences={args.eval_sentences}",
        f"data.max_test_sentences={args.eval_sentences}", "train.average_last=0", "train.average_best=0", *args.overrides,
    ]  # fmt: skip
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}  # each log line as it is written; no progress bar
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "stdout.log"
    preparation_s = prepare_data_s = data_peak_rss_mb = None
    started = time.perf_counter()
    with open(log_path, "w") as log_file:
        child = subprocess.Popen([sys.executable, "-c", CHILD, *overrides], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
        for line in child.stdout:
            log_file.write(line)
            if preparation_s is None and MODEL_LINE.search(line):
                preparation_s = time.perf_counter() - started
            if match := READY_LINE.search(line):
                prepare_data_s, data_peak_rss_mb = float(match[1]), int(match[2])
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children
        child.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - started
    if child.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"mt-train exited with {child.returncode}; end of {log_path}:\n{tail}")
    return {
        "preparation_s": round(preparation_s, 1),
        "prepare_data_s": prepare_data_s,
        "data_peak_rss_mb": data_peak_rss_mb,
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # KiB on Linux
        "wall_s": round(wall_s, 1),
    }


def verdict(value: float, target: float) -> str:
    return f"{'met' if value <= target else 'NOT met'} (target ≤ {target:g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=40, help="times Multi30k's training split is repeated (40: 1.16M pairs)")
    parser.add_argument("--updates", type=int, default=100, help="train.max_steps of each run")
    parser.add_argument("--eval-sentences", type=int, default=100, help="validation/test sentences decoded (0 = all)")
    parser.add_argument("--mirror", default=os.environ.get("MT_DATA_MIRROR"), help="Multi30k raw files (default: $MT_DATA_MIRROR)")
    parser.add_argument("--work", help="folder for the corpus, the cache and the run dirs (default: a temporary one, deleted)")
    parser.add_argument("overrides", nargs="*", help="more mt-train overrides, e.g. train.num_threads=1")
    args = parser.parse_args()
    if not args.mirror:
        parser.error("no Multi30k files: pass --mirror or set MT_DATA_MIRROR")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_data_scale."))
    try:
        corpus, data_dir = work / "corpus", work / "data"
        shutil.rmtree(data_dir, ignore_errors=True)  # the cold run starts without caches
        n_pairs = build_corpus(Path(args.mirror), corpus, args.copies)
        size_mb = sum(p.stat().st_size for p in corpus.glob("train.*")) / 2**20
        print(f"corpus: Multi30k train × {args.copies} = {n_pairs:,} pairs, {size_mb:.0f} MB of training text in {corpus}")
        runs = {}
        for name in ("cold", "cached"):
            runs[name] = run_trainer(corpus, data_dir, work / f"run-{name}", args)
            run = runs[name]
            print(f"{name:>6}: preparation {run['preparation_s']:.1f} s "
                  f"{verdict(run['preparation_s'], TARGETS[f'{name}_preparation_s'])}, "
                  f"peak RSS {run['peak_rss_mb']:,} MB {verdict(run['peak_rss_mb'], TARGETS['peak_rss_mb'])}; "
                  f"prepare_data {run['prepare_data_s']} s, peak RSS {run['data_peak_rss_mb']} MB when it returned; "
                  f"whole run {run['wall_s']:.0f} s")  # fmt: skip
            sys.stdout.flush()
        print(json.dumps({"copies": args.copies, "pairs": n_pairs, "train_text_mb": round(size_mb, 1),
                          "updates": args.updates, **runs, "targets": TARGETS}))  # fmt: skip
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
