"""Training throughput and MFU of our Transformer, optionally against Hugging Face's MarianMTModel.

    python scripts/bench_train.py --steps 50                                  # ours, default model, CPU
    python scripts/bench_train.py --model base --reference hf --steps 50      # + the Marian reference
    python scripts/bench_train.py --device cuda --precision bf16 --reference hf --steps 200
    python scripts/bench_train.py --threads 1 --steps 5 --warmup 2 --reference hf   # a quick check
    python scripts/bench_train.py --alignment-weight 0.1 [--full-context] --steps 100  # guided alignment's cost
    python scripts/bench_train.py --layers 6+1 --steps 100                     # another depth (deep encoder, shallow decoder)
    python scripts/bench_train.py --ffn-dim 2048 --steps 100                   # another width (also --d-model)
    python scripts/bench_train.py --dropout-masks bernoulli --steps 20         # torch's dropout masks (model.dropout_masks)
    python scripts/bench_train.py --minutes 10                                # resident memory over time

Both systems train on the same real Multi30k de→en batches, read by the trainer's own data
path: ``mt.training.training_data.prepare_data`` (the corpus, the sentencepiece model ``mt-train`` caches
under ``DATA_DIR/cache``, pairs over ``data.max_len`` dropped), batches in the order of training
epochs 1, 2, … from ``mt.training.step.epoch_updates``, padded by ``TrainingData.batch``. Each step is
``mt.training.step.train_step`` itself, on an ``mt.training.step.Optimization`` built by
``mt.training.step.build_optimization`` from ``TrainConfig`` (AdamW, the inverse-square-root schedule,
GradScaler, autocast, clipping at ``train.clip_norm``, the non-finite check): the update
``mt-train`` makes, not a copy of it.

- **ours**: ``mt.model.transformer.Transformer`` with the trainer's ``mt.training.objective.Objective`` (the
  vocabulary projection runs on real target positions only).
- **hf** (``--reference hf``): ``transformers.MarianMTModel`` from a ``MarianConfig`` of the
  same dimensions: d_model, layers, heads, FFN width, vocabulary, pad/EOS/BOS ids of
  ``mt.data.tokenizer`` (decoder start = BOS), shared and tied embeddings, embeddings scaled by
  sqrt(d_model), sinusoidal positions, relu, dropout 0.1 on embeddings and residuals, 0.1 on
  attention weights, 0 on the FFN activation, ``max_position_embeddings`` = ours. Its default
  attention implementation (reported; ``sdpa`` where available). Fed ``input_ids=src_ids``,
  ``attention_mask=src_ids != pad``, ``decoder_input_ids=tgt_in`` (causal self-attention
  only, as ours), ``use_cache=False``; the same loss on the non-pad positions of its logits
  (which it computes at every position, padding included), as an objective module of the
  same signature (:class:`MarianObjective`) inside the same ``train_step``. Differences that remain: Marian is
  post-norm, ours pre-norm with one final LayerNorm per stack (4·d_model more parameters);
  Marian keeps its position tables as frozen parameters, ours as a buffer.

- **guided** (``--alignment-weight λ``): ours with the guided-alignment term of ``mt-train
  train.alignment_weight=λ data.alignments=eflomal`` (``model.alignment``'s default layer and
  head; ``--full-context`` for its extra pass) on the same batches, which then carry the
  eflomal links training reads (computed once, cached under ``DATA_DIR/cache``), G̃ built in the
  timed loop as the trainer's data path builds it. "ours" is then the same model without the
  term, and the JSON line gains ``guided_tokens_per_s`` and ``guided_cost`` (1 − guided/ours).

``--minutes N`` trains ours on batches drawn round and round from the run's first epochs for N
minutes after the warm-up (instead of ``--steps``) and samples the resident set (``VmRSS``)
every 100 steps or every minute, whichever comes first (with the trainer's memory settings,
``train.release_memory_every`` and ``train.onednn_cache_capacity``; ``--release-memory-every 0
--onednn-cache-capacity -1`` measures without them): a table of minute → RSS and tokens/s, and ``rss_growth`` in the JSON line (RSS at
the end over RSS after the first minute, − 1). On glibc each sample also gives the heap and
the memory in use in it (``mallinfo2``); ``--peak-in-use`` tracks the peak in use from a thread
(``peak_in_use_mb``; its thread costs tokens/s), ``--repeat-first-batch`` trains on one batch, one
shape, over and over: the two show how much of the peak RSS is fragmentation.

``--allocator auto|tcmalloc|jemalloc|glibc`` (default auto, as ``mt-train``): the malloc each
timed process runs on, preloaded as ``mt-train`` does (``mt.training.memory.allocator_environment``);
the JSON line's ``allocator`` says which one ran.

Each system runs in a subprocess of its own, so that its peak resident set size
(``ru_maxrss``, whole process: Python, torch, its imports, model, optimizer, activations) is
its own; "growth" is the part above the process's peak before the model is built. The first
``--warmup`` steps are not timed (``--compile`` needs more: every new shape may recompile).

``--compile`` sets ``train.compile``: each system's objective module (model forward + loss) is
wrapped in ``torch.compile(…, dynamic=True)`` as the trainer does; the backward and optimizer
step stay eager.

**Model FLOPs** per step (the model's, not an implementation's: the same number for both
systems), summed over the sentences of the batch, S = real source tokens (EOS included),
T = real target tokens (BOS/EOS included, the length of the loss), d = d_model, f = ffn_dim,
V = target vocabulary, Le/Ld = encoder/decoder layers::

    FLOPs = 6 · [ S · (Le·(4d² + 2df) + Ld·2d²)            # encoder weights; cross-attention K/V on the source
                + T · (Ld·(6d² + 2df) + dV) ]               # decoder self q/k/v/o, cross q/o, FFN; output projection
          + 12 · d · [ Le·S² + Ld·(T² + T·S) ]              # attention scores q·kᵀ and weights·v

i.e. 2 FLOPs per multiply-add, backward = 2 × forward (Kaplan et al. 2020, "Scaling laws",
§2.1), attention terms as in PaLM's MFU (Chowdhery et al. 2022, App. B; the causal decoder
self-attention counted as a full T × T matrix). Padding is not counted: FLOPs on pad positions
are not useful work. For an unpadded batch the formula equals ``torch.utils.flop_counter``'s
count of one step of ours under the math attention backend (``tests/test_bench_scripts.py``). **MFU** = model FLOPs per second ÷ the peak matmul rate this script
measures on this machine: a square ``torch.mm`` in the run's dtype (fp32, or bf16 under
``--precision bf16``), same device and thread count, fastest of several timed repetitions
after a warm-up.

Prints the padding fraction of the timed batches, parameter counts of both models side by
side, a table (target tokens/s, MFU, peak RSS) and the ours/reference ratio; the last stdout
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

from mt.config import DROPOUT_MASKS, Config, DataConfig, ModelConfig, TrainConfig, model_preset, validate
from mt.errors import ConfigError

SYSTEMS = {
    "ours": "ours (mt.model.transformer.Transformer)",
    "guided": "ours + guided alignment",
    "hf": "reference (transformers.MarianMTModel)",
}


# ------------------------------------------------------------------------ shared with bench_decode.py
def model_config(
    name: str,
    attention_dropout: float | None = None,
    layers: tuple[int, int] | None = None,
    d_model: int | None = None,
    ffn_dim: int | None = None,
) -> ModelConfig:
    """``default``: ``ModelConfig()`` (256, 3+3 layers, 4 heads, FFN 1024); ``base``: the preset
    ``model=base``, Transformer-base (512, 6+6 layers, 8 heads, FFN 2048; Vaswani et al. 2017,
    Table 3). ``attention_dropout`` replaces the dropout of every attention site (None = the
    config's); ``layers`` the encoder and decoder depths (:func:`layer_depths`); ``d_model`` and
    ``ffn_dim`` the width and FFN inner width (``mt-train model.d_model=N model.ffn_dim=N``;
    the heads stay as they are, so ``d_model`` must be a multiple of them)."""
    cfg = _named_model_config(name)
    if layers is not None:
        cfg.encoder.n_layers, cfg.decoder.n_layers = layers
    if d_model is not None:
        cfg.d_model = d_model
    if ffn_dim is not None:
        cfg.ffn_dim = ffn_dim
    if attention_dropout is not None:
        for site in (cfg.encoder.self_attention, cfg.decoder.self_attention, cfg.decoder.cross_attention):
            site.dropout = attention_dropout
    return cfg


def layer_depths(text: str) -> tuple[int, int]:
    """``--layers E+D`` → (E, D), e.g. ``"6+1"`` → (6, 1).

    Raises:
        argparse.ArgumentTypeError: not two positive integers joined by ``+``.
    """
    try:
        encoder, decoder = (int(n) for n in text.split("+"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ENCODER+DECODER layers, e.g. 6+1, got {text!r}") from None
    if min(encoder, decoder) < 1:
        raise argparse.ArgumentTypeError(f"each side needs at least one layer, got {text!r}")
    return encoder, decoder


def _named_model_config(name: str) -> ModelConfig:
    if name == "default":
        return ModelConfig()
    if name == "base":
        return model_preset("base")  # configs/model/base.yaml, as mt-train model=base
    raise ValueError(f"unknown model {name!r}; valid: default, base")


def marian_mismatches(cfg: ModelConfig) -> list[str]:
    """Settings of ``cfg`` that a MarianMTModel cannot reproduce (empty = same architecture
    up to pre-/post-norm)."""
    problems = []
    sites = {
        "encoder.self_attention": cfg.encoder.self_attention,
        "decoder.self_attention": cfg.decoder.self_attention,
        "decoder.cross_attention": cfg.decoder.cross_attention,
    }
    for key, site in sites.items():
        if site.type != "full" or site.positions != "absolute" or (site.n_kv_heads or site.n_heads) != site.n_heads:
            problems.append(f"{key}: {site.type}/{site.positions}/n_kv_heads={site.n_kv_heads}")
        if not site.bias:
            problems.append(f"{key}.bias=false")
    if cfg.decoder.self_attention.n_heads != cfg.decoder.cross_attention.n_heads:
        problems.append("decoder self- and cross-attention head counts differ")
    if cfg.positional_embedding != "sinusoidal":
        problems.append(f"positional_embedding={cfg.positional_embedding}")
    return problems


def marian_model(cfg: ModelConfig, vocab_size: int):
    """A random-weight ``transformers.MarianMTModel`` with the dimensions of ``cfg``.

    Token ids follow ``mt.data.tokenizer`` (pad 0, BOS 2 = decoder start, EOS 3); no forced EOS at
    the length limit (the benchmarks set the output lengths themselves).
    """
    from transformers import MarianConfig, MarianMTModel
    from transformers.utils import logging as hf_logging

    from mt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

    hf_logging.set_verbosity_error()
    config = MarianConfig(
        vocab_size=vocab_size,
        decoder_vocab_size=vocab_size,
        d_model=cfg.d_model,
        encoder_layers=cfg.encoder.n_layers,
        decoder_layers=cfg.decoder.n_layers,
        encoder_attention_heads=cfg.encoder.self_attention.n_heads,
        decoder_attention_heads=cfg.decoder.self_attention.n_heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        activation_function=cfg.activation,
        dropout=cfg.dropout,
        attention_dropout=cfg.encoder.self_attention.dropout,
        activation_dropout=cfg.ffn_dropout,
        max_position_embeddings=cfg.max_positions,
        scale_embedding=True,  # ours multiplies embeddings by sqrt(d_model)
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        decoder_start_token_id=BOS_ID,
        forced_eos_token_id=None,
        share_encoder_decoder_embeddings=cfg.share_embeddings,
        tie_word_embeddings=cfg.tie_output,
    )
    return MarianMTModel(config)


def parameter_counts(model: torch.nn.Module) -> dict:
    """Unique parameters (shared/tied counted once): trainable and frozen."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}


def print_parameter_counts(cfg: ModelConfig, ours: dict, reference: dict | None) -> None:
    """Side by side; they must agree up to ours' two final LayerNorms and the position tables."""
    print(f"parameters: ours {ours['trainable']:,} trainable (+ {ours['frozen']:,} frozen)", end="")
    if reference is None:
        print()
        return
    print(f"; reference {reference['trainable']:,} trainable (+ {reference['frozen']:,} frozen: sinusoidal position tables)")
    final_norms = 2 * 2 * cfg.d_model  # ours' encoder_norm and decoder_norm (pre-norm); Marian is post-norm
    verdict = "OK" if ours["trainable"] - final_norms == reference["trainable"] else "MISMATCH"
    print(f"  ours - final LayerNorms ({final_norms:,}) = {ours['trainable'] - final_norms:,} vs {reference['trainable']:,}: {verdict}")


def load_training_data(data_dir: str, mirror: str | None, batch_tokens: int, alignments: str = "none"):
    """Multi30k de→en as ``mt-train`` reads it with the default config (``prepare_data``), with
    ``data.alignments=alignments`` (``eflomal``: the guided-alignment links, cached).

    Raises:
        DataError: corpus files missing (set ``MT_DATA_MIRROR``).
    """
    import datasets

    from mt.training import distributed
    from mt.config import Config
    from mt.training.training_data import prepare_data

    datasets.disable_progress_bars()
    cfg = Config()
    cfg.data.data_dir, cfg.data.mirror, cfg.train.batch_tokens = data_dir, mirror, batch_tokens
    cfg.data.alignments = alignments
    return prepare_data(cfg, distributed.Context(), resume_state=None), cfg.train


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------- the parent
def training_batches(data, train_cfg: TrainConfig, n: int) -> list[tuple]:
    """The first ``n`` batches of a one-process training run (epochs 1, 2, … as ``mt.training.step.epoch_updates`` orders them).

    Returns: (src_ids, tgt_in, tgt_out) long tensors, as ``TrainingData.batch`` pads them,
        and the batch's piece links (a list of (n_links, 2) arrays) when the data has them.
    """
    from mt.training.step import epoch_updates

    out, epoch = [], 1
    while len(out) < n:
        for (indices,) in epoch_updates(data.src_lens, data.tgt_lens, train_cfg, epoch, group_size=1):
            batch = data.batch(indices)
            links = [torch.as_tensor(data.train_links[i]) for i in indices] if data.train_links is not None else None
            out.append((batch.src_ids, batch.tgt_in, batch.tgt_out, links))
            if len(out) == n:
                break
        epoch += 1
    return out


def model_flops(cfg: ModelConfig, vocab_size: int, batches: list[tuple], pad_id: int) -> float:
    """Training FLOPs of ``batches`` by the formula of the module docstring."""
    d, f, V = cfg.d_model, cfg.ffn_dim, vocab_size
    n_enc, n_dec = cfg.encoder.n_layers, cfg.decoder.n_layers
    per_src_token = n_enc * (4 * d * d + 2 * d * f) + n_dec * 2 * d * d
    per_tgt_token = n_dec * (6 * d * d + 2 * d * f) + d * V
    total = 0.0
    for src_ids, _, tgt_out, *_ in batches:
        S = (src_ids != pad_id).sum(dim=1).double()  # (batch,) real source tokens
        T = (tgt_out != pad_id).sum(dim=1).double()  # (batch,) real target tokens
        total += 6 * float((S * per_src_token + T * per_tgt_token).sum())
        total += 12 * d * float((n_enc * S * S + n_dec * (T * T + T * S)).sum())
    return total


def padding_fraction(tensors: list[torch.Tensor], pad_id: int) -> float:
    """Pad positions / all positions."""
    return sum(int((t == pad_id).sum()) for t in tensors) / sum(t.numel() for t in tensors)


def peak_matmul_flops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` timed (size × size) @ (size × size) products, after a warm-up."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        torch.mm(a, b)
    sync(device)
    start = time.perf_counter()
    torch.mm(a, b)
    sync(device)
    inner = max(1, math.ceil(0.2 / max(time.perf_counter() - start, 1e-6)))  # ~0.2 s per timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        sync(device)
        best = min(best, (time.perf_counter() - start) / inner)
    return 2 * size**3 / best


def run_system(system: str, batches_path: str, args: argparse.Namespace) -> dict:
    """Run one system in a fresh subprocess (on ``--allocator``); its last stdout line is its JSON report."""
    from mt.training.memory import allocator_environment

    command = [sys.executable, os.path.abspath(__file__), "--one", system, "--batches-file", batches_path]
    command += ["--model", args.model, "--precision", args.precision, "--device", args.device]
    command += ["--warmup", str(args.warmup), "--vocab-size", str(args.vocab_size)]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--compile"] if args.compile else []
    command += ["--optimizer-impl", args.optimizer_impl]
    command += ["--profile"] if args.profile else []
    command += ["--attention-dropout", str(args.attention_dropout)] if args.attention_dropout is not None else []
    command += ["--dropout-masks", args.dropout_masks]
    command += ["--layers", "+".join(map(str, args.layers))] if args.layers else []
    command += ["--d-model", str(args.d_model)] if args.d_model else []
    command += ["--ffn-dim", str(args.ffn_dim)] if args.ffn_dim else []
    command += ["--alignment-weight", str(args.alignment_weight)] + (["--full-context"] if args.full_context else [])
    command += ["--minutes", str(args.minutes)] if args.minutes is not None else []
    command += ["--release-memory-every", str(args.release_memory_every)]
    command += ["--onednn-cache-capacity", str(args.onednn_cache_capacity)]
    command += ["--peak-in-use"] if args.peak_in_use else []
    command += ["--repeat-first-batch"] if args.repeat_first_batch else []
    env = allocator_environment(args.allocator)  # None: the child keeps glibc's malloc
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"bench_train: error: the {system} run failed (exit {result.returncode}); its traceback is above")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------- the children
class InUseSampler:
    """The peak of glibc's memory in use (``mt.training.memory.heap_mb``), read every millisecond by a
    thread: what the process needs at its busiest, against which RSS shows fragmentation. The
    thread takes glibc's arena locks and some CPU, so timings taken with it run low."""

    def __init__(self):
        import threading

        self.peak_mb, self._stop = 0.0, False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from mt.training.memory import heap_mb

        while not self._stop:
            self.peak_mb = max(self.peak_mb, heap_mb()["in_use_mb"])
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop = True
        self._thread.join()


class MarianObjective(torch.nn.Module):
    """As ``mt.training.objective.Objective``, for a MarianMTModel: (total, {"xent": total}, real target tokens)."""

    def __init__(self, model, label_smoothing: float, pad_id: int):
        super().__init__()
        self.model, self.label_smoothing, self.pad_id = model, label_smoothing, pad_id

    def forward(self, src_ids: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor, alignment=None):
        import torch.nn.functional as F

        logits = self.model(
            input_ids=src_ids, attention_mask=src_ids != self.pad_id, decoder_input_ids=tgt_in, use_cache=False
        ).logits  # (batch, tgt_len, tgt_vocab), every position
        real = tgt_out != self.pad_id  # (batch, tgt_len)
        xent = F.cross_entropy(logits[real].float(), tgt_out[real], label_smoothing=self.label_smoothing, reduction="sum")
        return xent, {"xent": xent}, int(real.sum())


def measure_one(system: str, args: argparse.Namespace) -> dict:
    """In the subprocess: build one system, train on the saved batches with ``mt.training.step.train_step``,
    time the steps after the warm-up (``--minutes``: cycle through them for that long, sampling
    the resident set every 100 steps)."""
    from mt.data.batching import Batch, alignment_targets
    from mt.training.memory import heap_mb, loaded_allocator, process_memory_mb, release_free_memory, set_onednn_cache_capacity
    from mt.model.transformer import Transformer
    from mt.data.tokenizer import PAD_ID
    from mt.training.step import build_optimization, train_step

    torch.manual_seed(0)
    device = torch.device(args.device)
    batches = torch.load(args.batches_file, weights_only=True)
    guided = system == "guided"
    train_cfg = TrainConfig(
        optimizer_impl=args.optimizer_impl, compile=args.compile, alignment_weight=args.alignment_weight if guided else 0.0,
        release_memory_every=args.release_memory_every, onednn_cache_capacity=args.onednn_cache_capacity,
    )
    if train_cfg.onednn_cache_capacity >= 0:  # as the trainer does, before the first matmul
        set_onednn_cache_capacity(train_cfg.onednn_cache_capacity)
    cfg = model_config(args.model, args.attention_dropout, args.layers, args.d_model, args.ffn_dim)
    cfg.dropout_masks = args.dropout_masks
    cfg.alignment.full_context = guided and args.full_context
    if system == "hf":
        import transformers  # noqa: F401  (imported before the baseline: its import cost is not the model's)
    sync(device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if system in ("ours", "guided"):
        model = Transformer(cfg, args.vocab_size, args.vocab_size, PAD_ID).to(device)
        opt = build_optimization(model, train_cfg, device, args.precision)
        attention = "mt.model.attention full (F.scaled_dot_product_attention)"
    else:
        model = marian_model(cfg, args.vocab_size).to(device)
        objective = MarianObjective(model, train_cfg.label_smoothing, PAD_ID)
        opt = build_optimization(model, train_cfg, device, args.precision, objective=objective)
        attention = model.config._attn_implementation
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, tokens, start = [], 0, None
    samples, sample_tokens = [], 0  # (minutes, rss_mb, tokens/s since the previous sample)
    profiler = None
    if args.profile:  # the timings then include the profiler's overhead
        activities = [torch.profiler.ProfilerActivity.CPU]
        activities += [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
        profiler = torch.profiler.profile(activities=activities)
        profiler.start()
    in_use_sampler = InUseSampler() if args.peak_in_use and heap_mb() is not None else None
    i = 0
    while True:
        if args.minutes is None and i == len(batches):
            break
        if i == args.warmup:
            sync(device)
            start = last_sample = time.perf_counter()
        src_ids, tgt_in, tgt_out, links = batches[0 if args.repeat_first_batch else i % len(batches)] if args.minutes else batches[i]
        n_tokens = int((tgt_out != PAD_ID).sum())
        alignment = None
        if guided:  # G̃ as the trainer's data path builds it (mt.data.batching.collate)
            alignment = alignment_targets([pair.numpy() for pair in links], tgt_out.size(1), src_ids.size(1))
        result = train_step(opt, [Batch(src_ids, tgt_in, tgt_out, [], alignment)], n_tokens)
        if not result.finite:
            raise RuntimeError(f"{system}: non-finite gradient at step {i + 1}")
        losses.append(result.loss / n_tokens)
        i += 1
        if train_cfg.release_memory_every and i % train_cfg.release_memory_every == 0:
            release_free_memory()  # as the trainer does
        if i > args.warmup:
            tokens += n_tokens
            sample_tokens += n_tokens
        now = time.perf_counter() if args.minutes is not None and i > args.warmup else None
        if now is not None and ((i - args.warmup) % 100 == 0 or now - last_sample >= 60 or now - start >= 60 * args.minutes):
            rate, sample_tokens, last_sample = sample_tokens / (now - last_sample), 0, now
            samples.append(((now - start) / 60, process_memory_mb()["rss_mb"], rate))
            heap = heap_mb()  # glibc only
            heap_text = f"  glibc heap {heap['heap_mb']:5.0f} MB, in use {heap['in_use_mb']:5.0f} MB" if heap else ""
            if heap and in_use_sampler is not None:
                heap_text += f" (peak in use {in_use_sampler.peak_mb:5.0f} MB)"
            print(f"  {system}: {samples[-1][0]:6.1f} min  RSS {samples[-1][1]:7.0f} MB  {rate:7.0f} tokens/s{heap_text}", file=sys.stderr)
            if now - start >= 60 * args.minutes:
                break
    sync(device)
    seconds = time.perf_counter() - start
    if in_use_sampler is not None:
        in_use_sampler.stop()
    if profiler is not None:
        profiler.stop()
        sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(f"torch.profiler, {system}, all {len(batches)} steps, top operators by self time:", file=sys.stderr)
        print(profiler.key_averages().table(sort_by=sort_by, row_limit=18), file=sys.stderr)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "system": system,
        "seconds": seconds,
        "tokens": tokens,
        "steps": i - args.warmup,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_rss_mb": peak_rss / 1024,
        "rss_growth_mb": (peak_rss - base_rss) / 1024,
        "rss_samples": samples,
        "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "attention": attention,
        "parameters": parameter_counts(model),
        "threads": torch.get_num_threads(),
        "allocator": loaded_allocator(),
        "peak_in_use_mb": in_use_sampler.peak_mb if in_use_sampler is not None else None,
    }


# --------------------------------------------------------------------------------------------- main
def apply_device_and_threads(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Resolve ``--device`` (auto → cuda if available, else cpu; cuda must exist: else a one-line
    usage error) into ``args.device`` and apply ``--threads`` (0 = torch's default)."""
    from mt.device import resolve_device

    args.device = str(resolve_device(args.device))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["default", "base"], default="default")
    parser.add_argument("--layers", type=layer_depths, help="encoder+decoder depths instead of the model's, e.g. 6+1 (Kasai et al. 2021)")
    parser.add_argument("--d-model", type=int, help="width instead of the model's (model.d_model; a multiple of its heads)")
    parser.add_argument("--ffn-dim", type=int, help="FFN inner width instead of the model's (model.ffn_dim)")
    parser.add_argument("--steps", type=int, default=50, help="timed training steps (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default 5)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument("--reference", choices=["hf"], help="also train transformers.MarianMTModel")
    parser.add_argument("--compile", action="store_true", help="torch.compile(loss function, dynamic=True) for each system")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--profile", action="store_true", help="print torch.profiler's top operators of each system (stderr; slows it)"
    )
    parser.add_argument(
        "--attention-dropout", type=float, help="dropout on the attention weights of every site (default: the config's)"
    )
    parser.add_argument(
        "--dropout-masks", choices=DROPOUT_MASKS, default=ModelConfig().dropout_masks,
        help="how ours draws its dropout masks, as model.dropout_masks (default: the model's default)",
    )
    parser.add_argument(
        "--optimizer-impl", choices=["fused", "foreach", "for-loop"], default=TrainConfig().optimizer_impl,
        help="AdamW kernel, as train.optimizer_impl (default: the trainer's default)",
    )
    parser.add_argument(
        "--alignment-weight", type=float, default=0.0,
        help="also time ours with the guided-alignment term of this weight (train.alignment_weight; needs eflomal)",
    )
    parser.add_argument("--full-context", action="store_true", help="guided alignment with model.alignment.full_context")
    parser.add_argument(
        "--minutes", type=float, help="train for this long after the warm-up instead of --steps, sampling RSS every 100 steps or minute"
    )
    parser.add_argument(
        "--release-memory-every", type=int, default=TrainConfig().release_memory_every,
        help="malloc_trim every N steps, as train.release_memory_every (0 = never; default: the trainer's)",
    )
    parser.add_argument(
        "--onednn-cache-capacity", type=int, default=TrainConfig().onednn_cache_capacity,
        help="oneDNN primitive cache size, as train.onednn_cache_capacity (-1 = oneDNN's 1,024; default: the trainer's)",
    )
    parser.add_argument(
        "--peak-in-use", action="store_true",
        help="glibc: sample the heap's memory in use every ms for its peak (perturbs timings)",
    )
    parser.add_argument("--repeat-first-batch", action="store_true", help="--minutes: the same batch every step (one shape)")
    parser.add_argument(
        "--allocator", choices=["auto", "glibc", "tcmalloc", "jemalloc"], default="auto",
        help="malloc of the timed processes, as mt-train's MT_ALLOCATOR (default auto: tcmalloc, else jemalloc, else glibc)",
    )
    parser.add_argument("--batch-tokens", type=int, default=TrainConfig().batch_tokens, help="token budget per batch")
    parser.add_argument("--data-dir", default="data", help="corpus and cache folder, as data.data_dir (default: data)")
    parser.add_argument("--matmul-size", type=int, help="side of the peak-matmul test (default 2048 on CPU, 8192 on CUDA)")
    parser.add_argument("--one", choices=list(SYSTEMS), help=argparse.SUPPRESS)
    parser.add_argument("--batches-file", help=argparse.SUPPRESS)
    parser.add_argument("--vocab-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for flag, value, least in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0), ("--threads", args.threads, 0),
                               ("--alignment-weight", args.alignment_weight, 0), ("--minutes", args.minutes or 0, 0)):  # fmt: skip
        if value < least:
            parser.error(f"{flag} must be >= {least}, got {value}")
    cfg = model_config(args.model, args.attention_dropout, args.layers, args.d_model, args.ffn_dim)
    cfg.dropout_masks = args.dropout_masks
    try:  # the trainer's own checks (e.g. --d-model a multiple of the heads)
        validate(Config(model=cfg))
    except ConfigError as error:
        parser.error(str(error))
    longest = DataConfig().max_len + 1
    if args.batch_tokens < longest:
        parser.error(f"--batch-tokens must hold one sentence of data.max_len + 1 = {longest} tokens, got {args.batch_tokens}")
    apply_device_and_threads(parser, args)
    if args.one:
        print(json.dumps(measure_one(args.one, args)))
        return

    from mt.errors import MtError
    from mt.data.tokenizer import PAD_ID
    from mt.training.step import epoch_updates

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        data, train_cfg = load_training_data(
            args.data_dir, os.environ.get("MT_DATA_MIRROR") or None, args.batch_tokens,
            "eflomal" if args.alignment_weight else "none",
        )
    except MtError as error:
        sys.exit(f"bench_train: error: {error}")
    args.vocab_size = data.tokenizer.src_vocab_size
    if args.minutes is not None:  # a pool of the first five epochs' batches, cycled through
        args.steps = 5 * sum(1 for _ in epoch_updates(data.src_lens, data.tgt_lens, train_cfg, 1, group_size=1))
    batches = training_batches(data, train_cfg, args.warmup + args.steps)
    timed = batches[args.warmup :]
    flops = model_flops(cfg, args.vocab_size, timed, PAD_ID)
    src_pad = padding_fraction([b[0] for b in timed], PAD_ID)
    tgt_pad = padding_fraction([b[2] for b in timed], PAD_ID)
    all_pad = padding_fraction([b[0] for b in timed] + [b[2] for b in timed], PAD_ID)

    systems = ["ours"] + (["guided"] if args.alignment_weight else [])
    systems += ["hf"] if args.reference else []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "batches.pt")
        torch.save(batches, path)
        results = {system: run_system(system, path, args) for system in systems}

    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak = peak_matmul_flops(device, dtype, size)

    ours = results["ours"]
    print(
        f"model {args.model}: d_model {cfg.d_model}, {cfg.encoder.n_layers}+{cfg.decoder.n_layers} layers, "
        f"{cfg.encoder.self_attention.n_heads} heads, FFN {cfg.ffn_dim}, vocab {args.vocab_size} (shared, tied); "
        f"device {args.device}, precision {args.precision}, {ours['threads']} threads, torch {torch.__version__}"
        + (", torch.compile(dynamic=True) on each loss function" if args.compile else "")
    )
    print(
        f"batches: {args.warmup} warm-up + {ours['steps']} timed"
        + (f" (for {args.minutes} minutes, cycling through the first 5 epochs' {args.steps})" if args.minutes else "")
        + f", budget {args.batch_tokens} tokens; {ours['tokens']} target tokens timed; "
        f"padding fraction: source {src_pad:.3f}, target {tgt_pad:.3f}, both {all_pad:.3f}"
    )
    flops_per_token = flops / sum(int((b[2] != PAD_ID).sum()) for b in timed)  # exact for --steps
    print(f"model FLOPs per timed step: {flops / args.steps / 1e9:.2f} GFLOP; peak {args.precision} matmul ({size}²): {peak / 1e9:.1f} GFLOP/s")
    print_parameter_counts(cfg, ours["parameters"], results["hf"]["parameters"] if "hf" in results else None)
    cuda = device.type == "cuda"
    header = f"{'system':<40} | {'tgt tokens/s':>12} | {'MFU':>7} | {'peak RSS MB':>11} | {'RSS growth MB':>13}"
    header += f" | {'peak CUDA MB':>12}" if cuda else ""
    print(header + f" | {'loss first→last':>15} | attention")
    for system, result in results.items():
        tokens_per_s = result["tokens"] / result["seconds"]
        result["tokens_per_s"], result["mfu"] = tokens_per_s, flops_per_token * tokens_per_s / peak
        row = f"{SYSTEMS[system]:<40} | {tokens_per_s:>12.0f} | {100 * result['mfu']:>6.2f}% | {result['peak_rss_mb']:>11.0f} | {result['rss_growth_mb']:>13.0f}"
        row += f" | {result['peak_cuda_mb']:>12.0f}" if cuda else ""
        print(row + f" | {result['first_loss']:>6.3f}→{result['last_loss']:<6.3f} | {result['attention']}")
    reference, guided = results.get("hf"), results.get("guided")
    ratio = ours["tokens_per_s"] / reference["tokens_per_s"] if reference else None
    if reference:
        print(f"ours/reference throughput: {ratio:.2f}x")
    guided_cost = 1 - guided["tokens_per_s"] / ours["tokens_per_s"] if guided else None
    if guided:
        print(
            f"guided alignment (λ {args.alignment_weight}{', full context' if args.full_context else ''}) "
            f"costs {100 * guided_cost:.1f}% of ours' tokens/s"
        )
    rss_growth = None
    if args.minutes:
        samples = ours["rss_samples"]
        print("ours over time: minutes | RSS MB | tokens/s (since the previous sample)")
        for minutes, rss, rate in samples:
            print(f"  {minutes:6.1f} | {rss:7.0f} | {rate:7.0f}")
        first = next((s for s in samples if s[0] >= 1.0), samples[0]) if samples else None
        rss_growth = samples[-1][1] / first[1] - 1 if samples else None
    print(
        json.dumps(
            {
                "tokens_per_s": ours["tokens_per_s"],
                "reference_tokens_per_s": reference["tokens_per_s"] if reference else None,
                "ratio": ratio,
                "mfu": ours["mfu"],
                "peak_matmul_gflops": peak / 1e9,
                "peak_rss_mb": ours["peak_rss_mb"],
                "precision": args.precision,
                "device": args.device,
                "reference_mfu": reference["mfu"] if reference else None,
                "reference_peak_rss_mb": reference["peak_rss_mb"] if reference else None,
                "model": args.model,
                "steps": args.steps,
                "compile": args.compile,
                "optimizer_impl": args.optimizer_impl,
                "attention_dropout": args.attention_dropout,
                "dropout_masks": args.dropout_masks,
                "d_model": cfg.d_model,
                "ffn_dim": cfg.ffn_dim,
                "threads": ours["threads"],
                "padding_fraction": all_pad,
                "guided_tokens_per_s": guided["tokens_per_s"] if guided else None,
                "guided_cost": guided_cost,
                "alignment_weight": args.alignment_weight,
                "full_context": args.full_context,
                "minutes": args.minutes,
                "rss_mb": ours["rss_samples"][-1][1] if ours["rss_samples"] else None,
                "rss_growth": rss_growth,
                "release_memory_every": args.release_memory_every,
                "onednn_cache_capacity": args.onednn_cache_capacity,
                "allocator": ours["allocator"],
                "peak_in_use_mb": ours["peak_in_use_mb"],
            }
        )
    )


if __name__ == "__main__":
    main()
