"""AER and cost of the aligner adapting to the text it aligns (:mod:`mt.alignment.adapt`), on a gold set.

For a checkpoint with an aligner and its teacher's priors (``mt-train experiment=align``), in
one run on the same pairs:

- ``aligner, no adapting``: the aligner with its training lexicon only (``mt-align --no-adapt``);
- ``eflomal from the priors``: the teacher alone: eflomal aligns the pairs with the checkpoint's
  priors, both directions and their ``data.alignments_symmetrize`` (what the lexicon adds);
- ``aligner, adapting k pairs at a time``: the pairs cut into chunks of ``k`` (``--chunks``; 0 =
  all at once), each adapted and aligned alone, as ``mt-align`` and ``--markup`` see a file or
  a batch of lines; with ``--links``, a row for each ``--adapt-links`` value (``intersect``:
  the adapted aligner's links that eflomal's run also makes).

Each row: AER in % and seconds per 1,000 pairs (eflomal is stochastic: ``--repeats`` runs).
``--weights`` instead compares how many times the new pairs' links count (``--adapt-weight``):
eflomal aligns all pairs once, and the aligner adapts to them with each weight in turn.

    python scripts/bench_adapt.py outputs/align-heldout-en-cs --gold data/czenali-last501/encs --chunks 1,8,32,0
    python scripts/bench_adapt.py outputs/align-m30k-en-cs --gold data/czenali-first2000/encs --weights 1,2,4,8,16

Prints a Markdown table, then one JSON object of every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import torch


def main() -> None:
    from mt.alignment.adapt import LINK_CHOICES, LINKS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint file or run dir with an aligner (experiment=align)")
    parser.add_argument("--gold", required=True, help="gold set PREFIX (PREFIX.src-tgt, PREFIX.talp)")
    parser.add_argument("--chunks", default="0", help="comma-separated pairs adapted at once; 0 = all (default: 0)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each stochastic row (default: 1)")
    parser.add_argument("--weight", type=float, help="--adapt-weight of the adapting rows (default: the teacher's, 8)")
    parser.add_argument("--weights", help="comma-separated --adapt-weight values: all pairs at once, one eflomal run")
    parser.add_argument(
        "--links", default=LINKS,
        help=f"comma-separated --adapt-links values: a row of each adapting size for each (default: {LINKS})",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per aligner batch (default: 32)")
    args = parser.parse_args()
    unknown = set(args.links.split(",")) - set(LINK_CHOICES)
    if unknown:
        parser.error(f"--links: {', '.join(sorted(unknown))} is not one of {', '.join(LINK_CHOICES)}")
    torch.set_num_threads(args.threads)

    from mt.alignment.adapt import Teacher, teacher_word_links
    from mt.alignment.aer import load_gold, score_alignments
    from mt.alignment.align import align
    from mt.model.checkpoint import load_for_inference

    model, tokenizer, info = load_for_inference(args.checkpoint)
    teacher = Teacher.from_state(info["alignment_teacher"])
    if model.aligner is None or teacher is None:
        sys.exit(f"{args.checkpoint}: no aligner with eflomal priors (mt-train experiment=align train.init_from=RUN)")
    if args.weight is not None:
        teacher = dataclasses.replace(teacher, weight=args.weight)
    gold = load_gold(args.gold).oriented(info["src_lang"], info["tgt_lang"])
    src, tgt = list(gold.src), list(gold.tgt)
    per_1000 = 1000 / len(src)

    def aer(links) -> float:
        return 100 * score_alignments(links, gold.sure, gold.possible).aer

    def aligner_links(k: int | None, teacher: Teacher | None = None) -> tuple[list, float]:
        started = time.perf_counter()
        links = []
        size = len(src) if not k else k
        for begin in range(0, len(src), size):
            chunk = slice(begin, begin + size)
            pairs = align(model, tokenizer, src[chunk], tgt[chunk], method="aligner", batch_size=args.batch_size,
                          teacher=teacher)  # fmt: skip
            links += [pair.links for pair in pairs]
        return links, time.perf_counter() - started

    if args.weights:
        print(json.dumps(weight_rows(model, tokenizer, teacher, gold, [float(w) for w in args.weights.split(",")])))
        return
    rows: dict[str, dict] = {}
    links, seconds = aligner_links(None)
    rows["aligner, no adapting"] = {"aer": [aer(links)], "seconds_per_1000": [seconds * per_1000]}
    for _ in range(args.repeats):
        started = time.perf_counter()
        words = teacher_word_links(teacher, tokenizer, src, tgt)
        seconds = time.perf_counter() - started
        row = rows.setdefault(f"eflomal from the priors ({teacher.symmetrize})", {"aer": [], "seconds_per_1000": []})
        row["aer"].append(aer(words))
        row["seconds_per_1000"].append(seconds * per_1000)
    for k, choice in ((int(c), x) for c in args.chunks.split(",") for x in args.links.split(",")):
        name = f"aligner, adapting {k or len(src)} pairs at a time, links {choice}"
        for _ in range(args.repeats):
            links, seconds = aligner_links(k, dataclasses.replace(teacher, links=choice))
            row = rows.setdefault(name, {"aer": [], "seconds_per_1000": []})
            row["aer"].append(aer(links))
            row["seconds_per_1000"].append(seconds * per_1000)

    print(f"{info['path']} on {args.gold} ({len(src)} pairs, {args.threads} thread(s), {args.repeats} run(s))\n")
    print("| links | AER (mean of runs) | runs | seconds per 1,000 pairs |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        runs = " / ".join(f"{a:.2f}" for a in row["aer"])
        print(f"| {name} | {statistics.mean(row['aer']):.2f} | {runs} | {statistics.mean(row['seconds_per_1000']):.1f} |")
    print(json.dumps({"checkpoint": info["path"], "gold": args.gold, "pairs": len(src), "rows": rows}))


def weight_rows(model, tokenizer, teacher, gold, weights: list[float]) -> dict:
    """AER in % of the aligner adapting to all of ``gold``'s pairs at once with each weight, from
    one eflomal run: its links' counts (:func:`mt.alignment.adapt.adapted`'s), times each weight."""
    from mt.alignment.adapt import teacher_counts, teacher_piece_links
    from mt.alignment.aer import score_alignments
    from mt.alignment.align import aligner_word_links
    from mt.alignment.teacher_forced import segmented_aligner
    from mt.data.words import segment

    src, tgt = list(gold.src), list(gold.tgt)
    segmentations = segment(tokenizer, src, tgt, model.cfg.max_positions - 1)
    links = teacher_piece_links(teacher, tokenizer, segmentations, src, tgt)
    lexicon = model.aligner.lexicon
    keys, counts, source_keys, source_counts = teacher_counts(model, tokenizer, links, segmentations)
    rows = {}
    for weight in weights:
        with lexicon.extra_counts(keys, counts * weight, source_keys, source_counts * weight):
            matrices = segmented_aligner(model, segmentations)
        _, pair_links = aligner_word_links(segmentations, matrices, None, model.cfg.aligner.null)
        rows[f"weight {weight:g}"] = round(100 * score_alignments(pair_links, gold.sure, gold.possible).aer, 2)
        print(f"| adapting all {len(src)} pairs, weight {weight:g} | {rows[f'weight {weight:g}']:.2f} |")
    return rows

if __name__ == "__main__":
    main()
