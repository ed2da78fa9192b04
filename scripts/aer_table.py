"""AER of every extraction method, layer and symmetrization of a model pair on one gold set.

The README's alignment table comes from here. Each model's teacher-forced cross-attention is
computed once (:func:`mt.alignment.teacher_forced.attend`) and every row reuses it:

    python scripts/aer_table.py --forward outputs/czenali-en-cs --reverse outputs/czenali-cs-en \\
        --gold ../shared/alignments/czenali/encs

Links of both models are scored in the gold set's own order (its first language first). Rows:
a diagonal floor that needs no model; each model × method × decoder layer (argmax, then each ``--thresholds`` τ);
for a model trained with guided alignment also its supervised heads (``supervised``, with the
full-context pass when trained with it); then, with ``--reverse``, the symmetrized pair for
each method at the default layers and at each model's lowest-AER layer (picked on this same gold
set: an upper bound on ``--layer auto``), and ``supervised`` when both models have it. A model
with an aligner (``experiment=align``) adds its ``aligner`` rows (as ``mt-align`` reads it; with
``model.aligner.null`` also without the NULL rule, and with each τ), symmetrized when both
models have one.
Prints a Markdown table (precision, recall, F1, AER in %), then one JSON object ``{row: AER}``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mt.alignment.aer import load_gold, score_alignments
from mt.alignment.align import LAYER_METHODS, aligner_word_links, default_layer, supervised_heads, word_links
from mt.alignment.teacher_forced import attend, segmented_aligner
from mt.model.checkpoint import load_for_inference
from mt.alignment.symmetrize import HEURISTICS, symmetrize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forward", required=True, help="checkpoint or run dir of one direction")
    parser.add_argument("--reverse", help="checkpoint or run dir of the other direction (symmetrization rows)")
    parser.add_argument("--gold", default="../shared/alignments/czenali/encs", help="gold set PREFIX")
    parser.add_argument("--thresholds", default="0.3", help="comma-separated τ for threshold rows ('' = none)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    gold = load_gold(args.gold)

    # a floor that needs no model: target word j ↔ source word round(j · n_src / n_tgt)
    rows: dict[str, list[set]] = {"diagonal (no model)": []}
    for src, tgt in zip(gold.src, gold.tgt):
        n_src, n_tgt = len(src.split()), len(tgt.split())
        rows["diagonal (no model)"].append(
            {(min(n_src - 1, round(j * n_src / n_tgt)), j) for j in range(n_tgt)} if n_src else set()
        )
    argmax = {}  # role → method → [links of each layer]
    defaults = {}
    supervised = {}  # role → links of the heads guided alignment trained
    aligners = {}  # role → links of the aligner, as mt-align reads it
    for role, path in (("forward", args.forward), ("reverse", args.reverse)):
        if path is None:
            continue
        model, tokenizer, info = load_for_inference(path)
        oriented = gold.oriented(info["src_lang"], info["tgt_lang"])
        flip = oriented is not gold
        start = time.perf_counter()
        guided = bool(info.get("alignment_supervised"))
        supervised_layer, heads, full_context = supervised_heads(model) if guided else (None, None, None)
        segmentations, attention = attend(
            model, tokenizer, oriented.src, oriented.tgt, args.batch_size, progress=True, full_context_layer=full_context
        )
        print(f"{role}: {path} ({info['src_lang']}→{info['tgt_lang']}, step {info['step']}), "
              f"{len(gold)} pairs in {time.perf_counter() - start:.1f} s")
        n_layers, n_heads = attention[0].shape[:2]
        defaults[role] = default_layer(n_layers)
        eos_mass = [float(np.mean([a[layer, :, :-1, -1].mean() for a in attention])) for layer in range(n_layers)]
        print(f"{role}: mean attention on the source EOS (rows predicting target pieces) by layer: "
              + ", ".join(f"{layer}: {100 * mass:.1f}%" for layer, mass in enumerate(eos_mass)))
        argmax[role] = {}
        for method in LAYER_METHODS:
            argmax[role][method] = []
            for layer in range(n_layers):
                for threshold in [None, *thresholds]:
                    _, links = word_links(segmentations, attention, method, layer, range(n_heads), threshold)
                    links = [{(j, i) for i, j in pair} if flip else set(pair) for pair in links]
                    name = f"{info['src_lang']}→{info['tgt_lang']} {method}, layer {layer}"
                    name += f", τ {threshold}" if threshold else (" (default)" if layer == defaults[role] else "")
                    rows[name] = links
                    if threshold is None:
                        argmax[role][method].append(links)
        if guided:
            _, links = word_links(segmentations, attention, "supervised", supervised_layer, heads)
            supervised[role] = [{(j, i) for i, j in pair} if flip else set(pair) for pair in links]
            rows[f"{info['src_lang']}→{info['tgt_lang']} supervised, layer {supervised_layer}, heads {heads}"
                 + (" (full context)" if full_context is not None else "")] = supervised[role]

        if model.aligner is not None:
            matrices = segmented_aligner(model, segmentations, args.batch_size)
            null = model.cfg.aligner.null
            for with_null in dict.fromkeys((null, False)):
                for threshold in [None, *thresholds]:
                    _, links = aligner_word_links(segmentations, matrices, threshold, with_null)
                    links = [{(j, i) for i, j in pair} if flip else set(pair) for pair in links]
                    name = f"{info['src_lang']}→{info['tgt_lang']} aligner"
                    name += (" without NULL" if null and not with_null else "") + (f", τ {threshold}" if threshold else "")
                    rows[name] = links
                    if with_null == null and threshold is None:
                        aligners[role] = links

    def aer(links: list[set]) -> float:
        return score_alignments(links, gold.sure, gold.possible).aer

    if len(argmax) == 2:
        for method in LAYER_METHODS:
            for which in ("default", "best"):
                chosen = {}
                for role, by_layer in argmax.items():
                    layer = defaults[role] if which == "default" else min(
                        range(len(by_layer[method])), key=lambda k: aer(by_layer[method][k])
                    )
                    chosen[role] = (layer, by_layer[method][layer])
                layers = f"layers {chosen['forward'][0]}+{chosen['reverse'][0]} ({which})"
                for heuristic in HEURISTICS:
                    rows[f"symmetrized {method}, {layers}, {heuristic}"] = [
                        symmetrize(f, r, heuristic) for f, r in zip(chosen["forward"][1], chosen["reverse"][1])
                    ]

    if len(supervised) == 2:
        for heuristic in HEURISTICS:
            rows[f"symmetrized supervised, {heuristic}"] = [
                symmetrize(f, r, heuristic) for f, r in zip(supervised["forward"], supervised["reverse"])
            ]

    if len(aligners) == 2:
        for heuristic in HEURISTICS:
            rows[f"symmetrized aligner, {heuristic}"] = [
                symmetrize(f, r, heuristic) for f, r in zip(aligners["forward"], aligners["reverse"])
            ]

    print("\n| links | precision | recall | F1 | AER |\n|---|---|---|---|---|")
    results = {}
    for name, links in rows.items():
        scores = score_alignments(links, gold.sure, gold.possible)
        results[name] = round(100 * scores.aer, 2)
        print(f"| {name} | {100 * scores.precision:.1f} | {100 * scores.recall:.1f} | {100 * scores.f1:.1f} | "
              f"{100 * scores.aer:.1f} |")
    print(json.dumps(results, ensure_ascii=False))


if __name__ == "__main__":
    main()
