"""Start, kill -9 at a random moment, resume — K times — then compare with an uninterrupted run.

    MT_DATA_MIRROR=../shared/corpora/multi30k python scripts/kill_and_resume.py --kills 5

Trains the smoke preset (fp32, validation and checkpoints every 10 updates) twice in a scratch
folder: once straight through to ``--steps`` updates, once killed with SIGKILL ``--kills``
times at random moments and restarted with ``train.resume=auto`` each time. After every kill
it loads every checkpoint in the run dir. Prints how many could not be loaded (must be 0), the
temporary files the kills left behind, and whether the final weights match the uninterrupted
run (largest absolute difference).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from mt.model.checkpoint import load_checkpoint
from mt.errors import CheckpointError

MT_TRAIN = str(Path(sys.executable).parent / "mt-train")
SMOKE = ["experiment=smoke", "data.max_valid_sentences=20", "data.max_test_sentences=10", "train.valid_every=10"]


def command(run_dir: Path, data_dir: Path, steps: int, resume: bool) -> list[str]:
    args = [MT_TRAIN, *SMOKE, f"train.max_steps={steps}", f"hydra.run.dir={run_dir}", f"data.data_dir={data_dir}"]
    return args + (["train.resume=auto"] if resume else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="how many times to kill -9 and resume")
    parser.add_argument("--steps", type=int, default=300, help="updates of the whole run")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--max-wait", type=float, default=12.0, help="longest wait before a kill, in seconds")
    parser.add_argument("--workdir", help="scratch folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill_and_resume-"))
    data_dir = work / "data"

    reference = work / "reference"
    subprocess.run(command(reference, data_dir, args.steps, False), check=True, capture_output=True)

    run_dir = work / "killed"
    checkpoints = run_dir / "checkpoints"
    unloadable, loaded = 0, 0
    for kill in range(args.kills):
        resume = (checkpoints / "last.pt").exists()
        process = subprocess.Popen(
            command(run_dir, data_dir, args.steps, resume), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait = rng.uniform(1.0, args.max_wait)
        time.sleep(wait)
        process.kill()  # SIGKILL: no handler runs
        process.wait()
        step = "-"
        for path in sorted(checkpoints.glob("*.pt")):
            try:
                state = load_checkpoint(path)
                loaded += 1
                step = state["step"] if path.name == "last.pt" else step
            except CheckpointError as error:
                unloadable += 1
                print(f"UNLOADABLE {path}: {error}")
        print(f"kill {kill + 1}: after {wait:.1f} s, last.pt at step {step}")

    resume = (checkpoints / "last.pt").exists()
    subprocess.run(command(run_dir, data_dir, args.steps, resume), check=True, capture_output=True)
    final = load_checkpoint(checkpoints / "last.pt")["model"]
    expected = load_checkpoint(reference / "checkpoints" / "last.pt")["model"]
    difference = max(float((final[name] - tensor).abs().max()) for name, tensor in expected.items())
    leftovers = sorted(p.name for p in checkpoints.glob("*.tmp"))
    print(f"kills: {args.kills}, checkpoints loaded: {loaded}, unloadable: {unloadable}")
    print(f"temporary files left by kills: {len(leftovers)}")
    print(f"final weights vs uninterrupted run: max abs difference {difference:.3g} -> "
          f"{'match' if difference <= 1e-6 else 'DIFFER'}")
    if not args.workdir:
        shutil.rmtree(work)
    sys.exit(0 if unloadable == 0 and difference <= 1e-6 else 1)


if __name__ == "__main__":
    main()
