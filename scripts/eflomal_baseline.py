"""AER of eflomal (Östling & Tiedemann 2016), a statistical word aligner, on a gold set.

The baseline for ``mt-align``'s AER table: eflomal aligns the gold set's own text (optionally
with more bitext in front of it), both directions, and our scorer (:mod:`mt.aer`) and
symmetrization (:mod:`mt.symmetrize`) turn that into the same table rows as for the models.

    pip install -e ".[baselines]"
    python scripts/eflomal_baseline.py --gold ../shared/alignments/czenali/encs [--multi30k]

Prints one row per direction/heuristic, then one JSON object ``{heuristic: AER}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from mt.aer import load_gold, read_pharaoh, score_alignments
from mt.symmetrize import HEURISTICS, symmetrize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gold", default="../shared/alignments/czenali/encs", help="gold set PREFIX")
    parser.add_argument(
        "--multi30k", action="store_true",
        help="also give eflomal the Multi30k train bitext of the same language pair (as the NMT models saw)",
    )
    parser.add_argument("--lowercase", action="store_true", help="lowercase both sides first")
    parser.add_argument("--data-dir", default="data", help="Multi30k cache folder (default: data)")
    args = parser.parse_args()
    try:
        import eflomal
    except ImportError:
        sys.exit("eflomal is not installed: pip install -e '.[baselines]'")

    gold = load_gold(args.gold)
    src, tgt = list(gold.src), list(gold.tgt)
    extra = 0
    if args.multi30k:
        from mt.corpora import load_split

        split = load_split("train", gold.src_lang, gold.tgt_lang, args.data_dir, os.environ.get("MT_DATA_MIRROR"))
        src, tgt = [*split["src"], *src], [*split["tgt"], *tgt]
        extra = len(split)
    if args.lowercase:
        src, tgt = [s.lower() for s in src], [t.lower() for t in tgt]

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        forward_path, reverse_path = Path(tmp) / "forward", Path(tmp) / "reverse"
        aligner = eflomal.Aligner()
        aligner.align(
            [s + "\n" for s in src], [t + "\n" for t in tgt],
            links_filename_fwd=str(forward_path), links_filename_rev=str(reverse_path),
        )
        # both files are source-first Pharaoh lines; keep the gold set's pairs (the last ones)
        forward = [set(links) for links in read_pharaoh(forward_path)[extra:]]
        reverse = [set(links) for links in read_pharaoh(reverse_path)[extra:]]
    seconds = time.perf_counter() - start

    rows = {"forward": forward, "reverse": reverse}
    for heuristic in HEURISTICS:
        rows[heuristic] = [symmetrize(f, r, heuristic) for f, r in zip(forward, reverse)]
    print(f"eflomal on {len(gold)} gold pairs{f' + {extra} Multi30k pairs' if extra else ''}, {seconds:.1f} s")
    print(f"{'links':<22}{'precision':>10}{'recall':>10}{'F1':>8}{'AER':>8}")
    results = {}
    for name, links in rows.items():
        scores = score_alignments(links, gold.sure, gold.possible)
        results[name] = round(100 * scores.aer, 2)
        print(
            f"{name:<22}{100 * scores.precision:>10.2f}{100 * scores.recall:>10.2f}"
            f"{100 * scores.f1:>8.2f}{100 * scores.aer:>8.2f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
