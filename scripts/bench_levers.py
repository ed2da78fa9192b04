"""A training-throughput lever against today's setting, each batch timed with both in one process.

    python scripts/bench_levers.py dropout_masks --steps 20            # bits masks vs bernoulli_
    python scripts/bench_levers.py dropout_masks --precision bf16 --steps 40 --warmup 5
    python scripts/bench_levers.py code --against 83ea91e --swap mt.training.objective:_chunked_loss --precision bf16

On a shared host the speed of the machine drifts by a third between runs of a minute (the peak
matmul rate ``bench_train.py`` measures moved from 107 to 168 GFLOP/s on one 2-core AMD EPYC
within ten minutes), more than most levers move it. So this script trains *one* model on the
same batches as ``scripts/bench_train.py`` (the trainer's data path, ``train_step`` on an
``Optimization`` from ``TrainConfig``) and makes two updates from every timed batch: one with
the lever's *today* setting and one with its *new* setting, in alternating order (today, new;
new, today; …) so that neither side always runs on a warm cache. Each update's wall time is
recorded; the report gives target tokens/s of each side over all its updates, their ratio
(new / today) and the median and quartiles of the per-batch ratios. Only the lever's setting
changes between the two updates of a batch; the weights evolve over both, which does not change
what an update costs.

Levers (``LEVERS``; switched on the built model, without rebuilding it):

- ``dropout_masks``: ``model.dropout_masks`` ``bernoulli`` (today: ``torch.nn.functional.dropout``)
  against ``bits`` (:mod:`mt.model.dropout`) at every dropout of the model.
- ``code``: a change of the code itself. ``--swap MODULE:NAME`` (repeatable; ``NAME`` may be
  dotted, e.g. ``mt.model.attention:MultiHeadAttention.forward``) names what the change touched;
  the *today* side runs those objects as the git revision ``--against`` has them (the module's
  file at that revision, executed as a module of its own), the *new* side as this checkout has
  them.

``--init-from CHECKPOINT`` times a trained model instead of a new one (a lever whose cost
depends on the weights, e.g. on how far apart the logits lie).

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train.py: the data and the model configs
from bench_train import apply_device_and_threads, load_training_data, model_config, sync, training_batches  # noqa: E402


def set_dropout_masks(model: torch.nn.Module, masks: str) -> None:
    """``model.dropout_masks = masks`` on a built model: every dropout module and attention site."""
    from mt.model.attention import MultiHeadAttention
    from mt.model.dropout import Dropout

    for module in model.modules():
        if isinstance(module, Dropout):
            module.masks = masks
        elif isinstance(module, MultiHeadAttention):
            module.dropout_masks = masks


# name -> (today's value, the new value, how to switch a built model to a value)
LEVERS: dict[str, tuple[str, str, Callable[[torch.nn.Module, str], None]]] = {
    "dropout_masks": ("bernoulli", "bits", set_dropout_masks),
}


def code_lever(revision: str, swaps: list[str]) -> tuple[str, str, Callable[[torch.nn.Module, str], None]]:
    """The ``code`` lever: ``revision``'s version of each ``MODULE:NAME`` in ``swaps`` against
    this checkout's, switched by assigning one or the other in the live module (or class).

    Raises:
        SystemExit: a swap not of the form MODULE:NAME, a module outside this checkout, or a
            name missing at either side (the message names it).
    """
    import importlib
    import inspect
    import subprocess
    import types

    root = Path(__file__).resolve().parent.parent
    sides: list[tuple[object, str, object, object]] = []  # (owner, attribute, revision's, checkout's)
    for swap in swaps:
        module_name, _, name = swap.partition(":")
        if not module_name or not name:
            sys.exit(f"bench_levers: error: --swap {swap!r}: expected MODULE:NAME, e.g. mt.training.objective:_chunked_loss")
        try:
            module = importlib.import_module(module_name)
            path = Path(module.__file__).resolve().relative_to(root).as_posix()
        except (ImportError, TypeError, ValueError) as error:  # no such module; a built-in; one outside the checkout
            sys.exit(f"bench_levers: error: --swap {swap}: not a module of this checkout ({error})")
        try:
            source = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=root, check=True, capture_output=True, text=True).stdout
        except subprocess.CalledProcessError as error:
            sys.exit(f"bench_levers: error: --against {revision}: git show {revision}:{path}: {error.stderr.strip()}")
        old = types.ModuleType(f"{module_name}@{revision}")
        old.__file__ = f"{revision}:{path}"
        exec(compile(source, old.__file__, "exec"), old.__dict__)
        *owners, attribute = name.split(".")
        try:
            owner_old, owner_new = old, module
            for part in owners:
                owner_old, owner_new = getattr(owner_old, part), getattr(owner_new, part)
            # the attributes as stored (a class's staticmethod stays one when assigned back)
            at_revision, in_checkout = inspect.getattr_static(owner_old, attribute), inspect.getattr_static(owner_new, attribute)
            sides.append((owner_new, attribute, at_revision, in_checkout))
        except AttributeError as error:
            sys.exit(f"bench_levers: error: --swap {swap}: {error}")

    def switch(model: torch.nn.Module, value: str) -> None:
        for owner, attribute, at_revision, in_checkout in sides:
            setattr(owner, attribute, at_revision if value == revision else in_checkout)

    return revision, "checkout", switch


def trained_model(checkpoint: str, vocab: int) -> torch.nn.Module:
    """``--init-from``: the model of a checkpoint (or run dir), in training mode.

    Raises:
        SystemExit: the checkpoint cannot be loaded, or its vocabulary is not the data's
            ``vocab`` pieces (the message names the file).
    """
    from mt.errors import MtError
    from mt.model.checkpoint import load_for_inference

    try:
        model = load_for_inference(checkpoint)[0]
    except MtError as error:
        sys.exit(f"bench_levers: error: {error}")
    if model.output_proj.weight.size(0) != vocab:
        sys.exit(f"bench_levers: error: --init-from {checkpoint}: vocabulary of {model.output_proj.weight.size(0)} pieces, the data's {vocab}")
    return model.train()


def paired_steps(model, opt, batches, warmup: int, lever: str, pad_id: int) -> dict:
    """Warm up on ``batches[:warmup]`` (each setting once), then two timed updates per batch.

    Returns: per side the seconds and target tokens of every timed update, in batch order.
    """
    from mt.data.batching import Batch
    from mt.training.step import train_step

    today, new, switch = LEVERS[lever]
    times: dict[str, list[float]] = {today: [], new: []}
    tokens: list[int] = []
    for i, (src_ids, tgt_in, tgt_out, _) in enumerate(batches):
        n_tokens = int((tgt_out != pad_id).sum())
        order = (today, new) if i % 2 == 0 else (new, today)
        for value in order:
            switch(model, value)
            sync(opt.device)
            start = time.perf_counter()
            result = train_step(opt, [Batch(src_ids, tgt_in, tgt_out, [], None)], n_tokens)
            sync(opt.device)
            if not result.finite:
                raise RuntimeError(f"non-finite gradient at batch {i + 1} ({lever}={value})")
            if i >= warmup:
                times[value].append(time.perf_counter() - start)
        if i >= warmup:
            tokens.append(n_tokens)
    return {"times": times, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lever", choices=[*LEVERS, "code"], help="the lever to time against today's setting")
    parser.add_argument("--against", help="code: the git revision whose code is today's side")
    parser.add_argument("--swap", action="append", default=[], metavar="MODULE:NAME", help="code: what the change touched (repeatable)")
    parser.add_argument("--model", choices=["default", "base"], default="default")
    parser.add_argument("--steps", type=int, default=20, help="timed batches, each trained twice (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches before them, each trained twice (default 3)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--init-from", metavar="CHECKPOINT", help="start from this checkpoint's (or run dir's) model instead of a new one")
    parser.add_argument("--data-dir", default="data", help="corpus and cache folder, as data.data_dir (default: data)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.lever == "code" and not (args.against and args.swap):
        parser.error("the lever code needs --against REVISION and at least one --swap MODULE:NAME")
    if args.lever != "code" and (args.against or args.swap):
        parser.error(f"--against and --swap belong to the lever code, not {args.lever}")
    apply_device_and_threads(parser, args)

    from mt.config import TrainConfig
    from mt.data.tokenizer import PAD_ID
    from mt.errors import MtError
    from mt.model.transformer import Transformer
    from mt.training.memory import set_onednn_cache_capacity
    from mt.training.step import build_optimization

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.lever == "code":
        LEVERS["code"] = code_lever(args.against, args.swap)
    train_cfg = TrainConfig()
    try:
        data, _ = load_training_data(args.data_dir, os.environ.get("MT_DATA_MIRROR") or None, train_cfg.batch_tokens)
    except MtError as error:
        sys.exit(f"bench_levers: error: {error}")
    batches = training_batches(data, train_cfg, args.warmup + args.steps)
    set_onednn_cache_capacity(train_cfg.onednn_cache_capacity)  # as the trainer does
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = model_config(args.model)
    vocab = data.tokenizer.src_vocab_size
    if args.init_from:
        model = trained_model(args.init_from, vocab).to(device).train()
    else:
        model = Transformer(cfg, vocab, vocab, PAD_ID).to(device).train()
    opt = build_optimization(model, train_cfg, device, args.precision)
    run = paired_steps(model, opt, batches, args.warmup, args.lever, PAD_ID)

    today, new, _ = LEVERS[args.lever]
    total = sum(run["tokens"])
    rate = {value: total / sum(run["times"][value]) for value in (today, new)}
    ratios = sorted(a / b for a, b in zip(run["times"][today], run["times"][new]))  # new's speed-up per batch
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(
        f"model {args.init_from or args.model}, device {args.device}, precision {args.precision}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; {args.warmup} warm-up + {args.steps} timed batches, each trained with both settings"
    )
    print(f"{args.lever:<18} | {'tgt tokens/s':>12}")
    for value in (today, new):
        print(f"{value + (' (today)' if value == today else ''):<18} | {rate[value]:>12.0f}")
    print(
        f"{new}/{today}: {rate[new] / rate[today]:.3f}x over all batches; per batch median {quartiles[1]:.3f}x "
        f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})"
    )
    print(
        json.dumps(
            {
                "lever": args.lever, "today": today, "new": new,
                "today_tokens_per_s": rate[today], "new_tokens_per_s": rate[new], "ratio": rate[new] / rate[today],
                "median_batch_ratio": quartiles[1], "quartiles": [quartiles[0], quartiles[2]],
                "precision": args.precision, "device": args.device, "threads": torch.get_num_threads(),
                "steps": args.steps, "model": args.model, "against": args.against, "swap": args.swap, "init_from": args.init_from,
            }
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
