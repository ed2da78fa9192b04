"""Time and peak memory of one self-attention forward + backward: full vs local vs topk.

    python scripts/bench_attention.py                      # CPU, lengths 128 … 4096
    python scripts/bench_attention.py --device cuda        # on a GPU
    python scripts/bench_attention.py --lengths 128 512 --repeats 3

Each (variant, length) runs in a fresh subprocess so that its peak memory can be read on its
own: on CPU the growth of the peak resident set size (``ru_maxrss``) over the process's size
after building the inputs, on CUDA ``torch.cuda.max_memory_allocated``. The module is
``mt.model.attention.MultiHeadAttention`` as the encoder uses it (padding mask, no weights returned),
with batch, d_model and heads fixed. Prints a table, local/full ratios, and one JSON line with
the same figures last.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

VARIANTS = {"full": {}, "local": {"window": 32}, "topk": {"top_k": 32}}


def measure_one(variant: str, length: int, args: argparse.Namespace) -> dict:
    """Run in the subprocess: time forward+backward, report peak memory in MiB."""
    import torch

    from mt.model.attention import MultiHeadAttention
    from mt.config import AttentionConfig

    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = AttentionConfig(type=variant, n_heads=args.n_heads, dropout=0.0, **VARIANTS[variant])
    module = MultiHeadAttention(args.d_model, cfg).to(device)
    x = torch.randn(args.batch, length, args.d_model, device=device, requires_grad=True)
    mask = torch.ones(args.batch, 1, 1, length, dtype=torch.bool, device=device)
    mask[-1, ..., length - length // 4 :] = False  # some padding, as in real batches

    def step() -> None:
        out, _ = module(x, mask=mask)
        out.sum().backward()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    step()  # warm-up
    sync()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024  # ru_maxrss is KiB on Linux
    return {"variant": variant, "length": length, "ms": 1000 * min(times), "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the fastest is reported")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]), args)))
        return

    rows = []
    for length in args.lengths:
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--one", variant, str(length), "--device", args.device]
            command += ["--batch", str(args.batch), "--d-model", str(args.d_model), "--n-heads", str(args.n_heads)]
            command += ["--repeats", str(args.repeats)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"{variant} at length {length} failed:\n{result.stderr[-2000:]}")
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))

    import torch

    print(
        f"self-attention forward+backward, batch {args.batch}, d_model {args.d_model}, {args.n_heads} heads, "
        f"local window {VARIANTS['local']['window']}, top_k {VARIANTS['topk']['top_k']}; "
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"{'length':>7} | {'full ms':>9} {'local ms':>9} {'topk ms':>9} | {'full MiB':>9} {'local MiB':>9} {'topk MiB':>9} | {'local/full time':>15} {'local/full mem':>14}")
    by_key = {(r["variant"], r["length"]): r for r in rows}
    ratios = []
    for length in args.lengths:
        full, local, topk = (by_key[(v, length)] for v in VARIANTS)
        time_ratio = local["ms"] / full["ms"]
        memory_ratio = local["peak_mb"] / full["peak_mb"] if full["peak_mb"] > 0 else float("nan")
        ratios.append({"length": length, "local_full_time": time_ratio, "local_full_memory": memory_ratio})
        print(
            f"{length:>7} | {full['ms']:>9.2f} {local['ms']:>9.2f} {topk['ms']:>9.2f} | "
            f"{full['peak_mb']:>9.1f} {local['peak_mb']:>9.1f} {topk['peak_mb']:>9.1f} | {time_ratio:>15.2f} {memory_ratio:>14.2f}"
        )
    print(json.dumps({"device": args.device, "batch": args.batch, "d_model": args.d_model, "n_heads": args.n_heads, "rows": rows, "ratios": ratios}))


if __name__ == "__main__":
    main()
