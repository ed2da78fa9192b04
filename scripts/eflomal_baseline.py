"""AER of eflomal (Östling & Tiedemann 2016), a statistical word aligner, on a gold set.

The baseline for ``mt-align``'s AER table: eflomal aligns the gold set's own text (optionally
with more bitext in front of it), both directions, and our scorer (:mod:`mt.alignment.aer`) and
symmetrization (:mod:`mt.alignment.symmetrize`) turn that into the same table rows as for the models.

``--unit piece`` measures the choice behind ``data.alignments_unit`` (guided-alignment targets,
:mod:`mt.alignment.targets`): a joint unigram sentencepiece model is trained on the same text
(as ``mt-train`` would) and eflomal aligns its pieces; a word pair is linked when any of their
pieces are. ``--unit word`` (default) aligns whitespace words. Either way the links go through
the piece mapping training uses, and the time printed is that of computing them all (tokens,
eflomal, grow-diag-final-and, piece links).

    pip install -e ".[baselines]"
    python scripts/eflomal_baseline.py --gold ../shared/alignments/czenali/encs [--multi30k] [--unit piece]

Held out (text a model never saw): ``--train-text PREFIX`` adds another gold-layout set's text
(links unused), and ``--unseen`` lets eflomal learn only from that other text (``--multi30k``,
``--train-text``) and align the gold pairs with the priors it learnt there (eflomal's
``makepriors`` route), so the scored pairs are never part of what it learns from:

    python scripts/eflomal_baseline.py --gold data/czenali-last501/encs --train-text data/czenali-first2000/encs --multi30k --unseen

Prints one row per direction/heuristic, then one JSON object ``{heuristic: AER}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np

from mt.alignment.aer import load_gold, score_alignments
from mt.alignment.targets import UNITS, piece_owners, piece_to_word_links, run_eflomal, unit_tokens, word_to_piece_links
from mt.config import TokenizerConfig
from mt.alignment.symmetrize import HEURISTICS, symmetrize
from mt.data.tokenizer import Tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gold", default="../shared/alignments/czenali/encs", help="gold set PREFIX")
    parser.add_argument(
        "--multi30k", action="store_true",
        help="also give eflomal the Multi30k train bitext of the same language pair (as the NMT models saw)",
    )
    parser.add_argument("--lowercase", action="store_true", help="lowercase both sides first")
    parser.add_argument("--data-dir", default="data", help="Multi30k cache folder (default: data)")
    parser.add_argument("--unit", choices=UNITS, default="word", help="what eflomal aligns (default: word)")
    parser.add_argument(
        "--train-text", metavar="PREFIX", help="a gold-layout set whose text (never its links) eflomal also learns from"
    )
    parser.add_argument(
        "--unseen", action="store_true",
        help="learn from the other text only and align the gold pairs with its priors (word unit)",
    )
    parser.add_argument("--vocab-size", type=int, default=8000, help="sentencepiece pieces (default: 8000)")
    args = parser.parse_args()
    if args.unseen and (args.unit != "word" or not (args.multi30k or args.train_text)):
        parser.error("--unseen needs --unit word and other text to learn from (--multi30k, --train-text)")
    try:
        import eflomal
    except ImportError:
        sys.exit("eflomal is not installed: pip install -e '.[baselines]'")

    gold = load_gold(args.gold)
    src, tgt = list(gold.src), list(gold.tgt)
    extra = 0
    if args.multi30k:
        from mt.data.corpora import load_split

        split = load_split("train", gold.src_lang, gold.tgt_lang, args.data_dir, os.environ.get("MT_DATA_MIRROR"))
        src, tgt = [*split["src"], *src], [*split["tgt"], *tgt]
        extra = len(split)
    if args.train_text:
        other = load_gold(args.train_text)
        src, tgt = [*src[:extra], *other.src, *src[extra:]], [*tgt[:extra], *other.tgt, *tgt[extra:]]
        extra += len(other)
    if args.lowercase:
        src, tgt = [s.lower() for s in src], [t.lower() for t in tgt]

    print(f"training a {args.vocab_size}-piece joint unigram sentencepiece model", file=sys.stderr)
    tokenizer = Tokenizer.train(src, tgt, TokenizerConfig(vocab_size=args.vocab_size))
    start = time.perf_counter()  # what data.alignments=eflomal computes at start-up
    if args.unseen:  # learn from the other text, then align the gold pairs with what it learnt
        src_words, tgt_words = unit_tokens(tokenizer, src, tgt, "word")
        learnt = run_eflomal(src_words[:extra], tgt_words[:extra])
        priors = io.StringIO()
        eflomal.write_priors(priors, *eflomal.calculate_priors(
            [" ".join(w).lower() for w in src_words[:extra]], [" ".join(w).lower() for w in tgt_words[:extra]],
            *([" ".join(f"{i}-{j}" for i, j in pair) for pair in links] for links in learnt),
        ))
        forward, reverse = run_eflomal(src_words[extra:], tgt_words[extra:], priors.getvalue().splitlines(True))
        forward, reverse = [*learnt[0], *forward], [*learnt[1], *reverse]
    else:
        forward, reverse = run_eflomal(*unit_tokens(tokenizer, src, tgt, args.unit))
    eflomal_seconds = time.perf_counter() - start
    links = [symmetrize(f, r, "grow-diag-final-and") for f, r in zip(forward, reverse)]
    if args.unit == "word":  # every piece of a word takes the word's links
        owners = [piece_owners(tokenizer, s, t) for s, t in zip(src, tgt)]
        links = [word_to_piece_links(pair, *owner) for pair, owner in zip(links, owners)]
    seconds = time.perf_counter() - start
    print(f"{sum(len(pair) for pair in links)} grow-diag-final-and piece links", file=sys.stderr)

    forward, reverse = forward[extra:], reverse[extra:]  # the gold set's pairs
    owners = [piece_owners(tokenizer, s, t) for s, t in zip(src[extra:], tgt[extra:])]
    rows = {"forward": forward, "reverse": reverse}
    for heuristic in HEURISTICS:
        rows[heuristic] = [symmetrize(f, r, heuristic) for f, r in zip(forward, reverse)]
    for name, pairs in rows.items():  # to pieces as training sees them, then back to words to score
        if args.unit == "word":
            pairs = [word_to_piece_links(pair, *owner) for pair, owner in zip(pairs, owners)]
        else:
            pairs = [np.array(sorted(pair), dtype=np.int64).reshape(-1, 2) for pair in pairs]
        rows[name] = [piece_to_word_links(pair, *owner) for pair, owner in zip(pairs, owners)]
    print(
        f"eflomal on {args.unit}s of {len(gold)} gold pairs{f' + {extra} other pairs' if extra else ''}"
        f"{' (gold pairs aligned with priors from the others only)' if args.unseen else ''}: "
        f"{eflomal_seconds:.1f} s eflomal, {seconds:.1f} s for all piece links"
    )
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
