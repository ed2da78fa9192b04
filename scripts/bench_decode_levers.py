"""What each decoding lever is worth: ms per output token of greedy and beam-5 search on one batch,
for whichever ``mt`` is first on ``PYTHONPATH`` (an older commit checked out with ``git worktree``)
and with single levers of the current code switched off.

    python scripts/bench_decode_levers.py                                  # this checkout
    git worktree add /tmp/mt-before 1f2470d && PYTHONPATH=/tmp/mt-before python scripts/bench_decode_levers.py
    python scripts/bench_decode_levers.py --no-short-queries               # fused SDPA for decoding steps too
    python scripts/bench_decode_levers.py --no-block-topk                  # Tensor.topk over the whole vocabulary

The model is a random-weight default-size ``Transformer`` (seed 0; fp32, or bf16 weights as
``mt-translate --precision bf16`` runs it), its output forced to ``--lengths`` tokens (EOS is
impossible before the last step, and the output limit ends every hypothesis there). The batch is
``--sentences`` sources of random piece ids whose lengths are those of the first Multi30k
test_2016_flickr German sentences in words, plus one (read from ``MT_DATA_MIRROR``, or 14 each
without it). Only ``mt.model.transformer``, ``mt.config`` and ``mt.inference.decoding`` are used, with the signatures
every version since the first has, so an old checkout runs the same measurement. Each figure is
the fastest of ``--repeats`` runs after one warm-up. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import torch

import mt.model.attention
import mt.inference.decoding
from mt.config import ModelConfig
from mt.inference.decoding import beam_search, greedy_search
from mt.model.transformer import Transformer

PAD, EOS, VOCAB = 0, 3, 8000


def source_lengths(n: int) -> list[int]:
    """Word counts + 1 (EOS) of the first ``n`` test_2016_flickr German sentences, or 14 each."""
    mirror = os.environ.get("MT_DATA_MIRROR")
    path = Path(mirror) / "test_2016_flickr.de.gz" if mirror else None
    if path is None or not path.is_file():
        return [14] * n
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [len(next(f).split()) + 1 for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--sentences", type=int, default=64, help="sources in the batch (default 64)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128], help="forced output lengths")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per figure; the fastest counts")
    parser.add_argument("--no-short-queries", action="store_true", help="fused SDPA also for a decoding step's queries")
    parser.add_argument("--no-block-topk", action="store_true", help="beam search's per-row top-k by Tensor.topk")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_short_queries:
        mt.model.attention.SHORT_QUERIES = 0
    if args.no_block_topk:
        mt.inference.decoding.top_per_row = lambda scores, k: scores.topk(k, dim=1)

    generator = torch.Generator().manual_seed(0)
    lengths = source_lengths(args.sentences)
    src = torch.full((args.sentences, max(lengths)), PAD)
    for row, length in enumerate(lengths):
        src[row, : length - 1] = torch.randint(4, VOCAB, (length - 1,), generator=generator)
        src[row, length - 1] = EOS
    result = {"mt": str(Path(mt.__file__).parent), "threads": torch.get_num_threads(), "sentences": args.sentences,
              "no_short_queries": args.no_short_queries, "no_block_topk": args.no_block_topk}  # fmt: skip
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(), VOCAB, VOCAB, PAD).eval()
        if precision == "bf16":
            model = model.to(torch.bfloat16)
        decode, logits = model.decode, model.logits
        state = {"step": 0, "length": 0}

        def counted_decode(*a, **k):
            state["step"] += 1
            return decode(*a, **k)

        def forced_logits(hidden):
            out = logits(hidden)
            if state["step"] < state["length"]:
                out[..., EOS] = float("-inf")
            return out

        model.decode, model.logits = counted_decode, forced_logits
        for length in args.lengths:
            state["length"] = length
            for beam in (1, 5):

                def run():
                    state["step"] = 0
                    if beam == 1:
                        return greedy_search(model, src, 0.0, length)
                    return beam_search(model, src, beam, 1.0, 0.0, length)

                run()
                best = float("inf")
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    run()
                    best = min(best, time.perf_counter() - start)
                search = "greedy" if beam == 1 else "beam5"
                ms = 1000 * best / (args.sentences * length)
                result[f"{precision}_{search}_len{length}_ms_per_token"] = round(ms, 4)
                print(f"{precision} {search:<6} length {length:>3}: {ms:.3f} ms per token per sentence")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
