"""Test-set scores of a finished run: ``best.pt`` and the checkpoint averages, translated and
scored with sacreBLEU, written to ``{test_split}.hyp.{tgt_lang}`` (and ``.averaged`` /
``.averaged_best``) and ``test_scores.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import torch

from mt.config import Config
from mt.data import corpora
from mt.data.tokenizer import Tokenizer
from mt.device import autocast
from mt.errors import CheckpointError
from mt.inference.evaluate import score, translate
from mt.model.checkpoint import load_checkpoint
from mt.model.transformer import Transformer
from mt.training.average import average_run, step_checkpoints
from mt.training.memory import process_memory_mb
from mt.training.state import Run

log = logging.getLogger(__name__)


def score_test(run: Run, steps: int, training_seconds: float) -> dict:
    """Score ``best.pt`` on the test split, and the averages of the last ``train.average_last``
    (``averaged``) and of the ``train.average_best`` best (``averaged_best``) validation
    checkpoints; write the hypotheses and ``test_scores.json`` (with the run's peak resident
    memory, ``peak_rss_mb``).

    Returns: what ``test_scores.json`` holds.
    """
    cfg, out_dir, model = run.cfg, run.out_dir, run.opt.model
    test, label = run.data.splits["test"], corpora.split_label(cfg.data.test_split)
    best = load_checkpoint(run.checkpoint_dir / "best.pt", run.opt.device)
    result = {
        "split": cfg.data.test_split,
        "src_lang": cfg.data.src_lang,
        "tgt_lang": cfg.data.tgt_lang,
        "checkpoint_step": best["step"],
        "beam_size": cfg.decoding.beam_size,
        "training_seconds": training_seconds,
        "steps": steps,
        **score_checkpoint(model, best, run.data.tokenizer, test, cfg, run.opt.precision, run.opt.device,
                           out_dir / f"{label}.hyp.{cfg.data.tgt_lang}"),
    }  # fmt: skip
    for select, key, wanted in (
        ("last", "averaged", cfg.train.average_last), ("best", "averaged_best", cfg.train.average_best)
    ):  # fmt: skip
        n_average = min(wanted, len(step_checkpoints(out_dir)))
        if n_average < wanted:
            log.warning("train.average_%s=%d but only %d validations: averaging those", select, wanted, n_average)
        if not n_average:
            continue
        averaged_path = run.checkpoint_dir / f"{key}.pt"
        try:
            averaged = average_run(out_dir, n_average, averaged_path, select)
        except CheckpointError as error:  # e.g. step checkpoints of another run in this folder: keep the scores
            log.warning("no %s.pt: %s", key, error)
            continue
        result[key] = {
            "checkpoint": str(averaged_path),
            "averaged_from": averaged["averaged_from"],
            **score_checkpoint(model, averaged, run.data.tokenizer, test, cfg, run.opt.precision, run.opt.device,
                               out_dir / f"{label}.{key}.hyp.{cfg.data.tgt_lang}"),
        }  # fmt: skip
        log.info("average of the %s %d checkpoints: %s", select, n_average, result[key]["bleu_line"])
        if result[key]["bleu"] < result["bleu"]:  # e.g. a short run whose first validations join the average
            averaged_steps = ", ".join(str(source["step"]) for source in averaged["averaged_from"])
            log.warning(
                "%s.pt (steps %s) scores %.2f BLEU on %s, below best.pt's %.2f: use best.pt "
                "(what mt-translate, mt-align and mt-evaluate read from the run dir)",
                key, averaged_steps, result[key]["bleu"], cfg.data.test_split, result["bleu"],
            )  # fmt: skip
    result["peak_rss_mb"] = process_memory_mb()["peak_rss_mb"]  # of the whole run, test scoring included
    log.info("peak resident memory of the run: %.0f MB", result["peak_rss_mb"])
    (out_dir / "test_scores.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def score_checkpoint(
    model: Transformer,
    state: dict,
    tokenizer: Tokenizer,
    test: datasets.Dataset,
    cfg: Config,
    precision: str,
    device: torch.device,
    hyp_path: Path,
) -> dict:
    """Load ``state``'s weights into ``model``, translate the test split, write the hypotheses to
    ``hyp_path`` and return sacreBLEU's scores (see :func:`mt.inference.evaluate.score`)."""
    model.load_state_dict(state["model"])
    model.eval()
    with autocast(device, precision):
        hypotheses = translate(model, tokenizer, test["src"], cfg.decoding, device)
    hyp_path.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    scores = score(hypotheses, test["tgt"])
    log.info("%s: %s", cfg.data.test_split, scores["bleu_line"])
    log.info("%s: %s", cfg.data.test_split, scores["chrf_line"])
    log.info("signatures: %s | %s", scores["bleu_signature"], scores["chrf_signature"])
    return scores
