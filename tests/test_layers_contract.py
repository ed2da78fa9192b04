"""The schema reads without torch: ``import mt.config`` and validating a config load none of the
heavy libraries and no module of the wings below it (``mt.data``, ``mt.model``, …)."""

import subprocess
import sys

from conftest import REPO

HEAVY = ("torch", "numpy", "sentencepiece", "datasets")
WINGS = ("mt.data", "mt.model", "mt.alignment", "mt.inference", "mt.training", "mt.cli")


def test_import_mt_config_and_validate_load_no_torch():
    code = (
        "import sys, mt.config; mt.config.validate(mt.config.Config()); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith({WINGS!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_issue_one_liner_holds():
    code = "import mt.config, sys; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
