"""Decoding speed of ``mt.inference.evaluate.translate`` (greedy and beam 5), optionally against
Hugging Face's ``MarianMTModel.generate`` or CTranslate2, and how its time grows with the output length.

    python scripts/bench_decode.py --reference ct2 --precision fp32 bf16 int8 --sweep   # random weights, 32 tokens
    python scripts/bench_decode.py --checkpoint outputs/recipe-de-en/checkpoints/best.pt --reference hf
    python scripts/bench_decode.py --reference hf --length 32            # random weights, 32 tokens per sentence
    python scripts/bench_decode.py --checkpoint RUN_DIR --reference hf --sweep --device cuda
    python scripts/bench_decode.py --threads 1 --max-sentences 4 --reference ct2 --sweep --sweep-lengths 4 8   # a quick check

The source sentences are Multi30k ``test_2016_flickr`` (the checkpoint's language pair; de→en
for random weights), decoded by the public ``mt.inference.evaluate.translate`` in its own length-sorted
batches of ``--batch-size`` sentences (default: the checkpoint's ``decoding.batch_size``, 64),
with the checkpoint's length penalty and output limits.

- **ours with ``--checkpoint``**: the trained model decodes as it would in ``mt-translate``.
- **ours without**: a random-weight ``ModelConfig()`` model (tokenizer: the sentencepiece model
  ``mt-train`` caches for the training split) whose output length is forced to ``--length``
  tokens (EOS included): its ``logits`` are wrapped so that EOS is impossible before step
  ``--length``, and ``max_len_a=0, max_len_b=--length`` end every hypothesis there.
- **reference** ``--reference ct2``: CTranslate2's ``Translator.translate_batch`` on *our* model
  (random or trained weights) exported by ``mt-export`` (:func:`mt.inference.export.write_ctranslate2`),
  ``intra_threads`` = our thread count, the same batches (the source pieces of the exact tensors
  ours decoded), beam size and length penalty, each batch forced to ours' number of decoder steps
  with ``min_decoding_length = max_decoding_length``. Its time is ``translate_batch`` alone.
- **reference** ``--reference hf``: a random-weight ``transformers.MarianMTModel`` of the same
  dimensions (see ``bench_train.py``), ``generate`` with the same batches (the exact source
  tensors ours decoded, recorded by wrapping the model's ``encode``), the same beam size and
  length penalty, no sampling, early stopping at its default, pad and BOS suppressed as ours
  does. Random weights would stop anywhere, so each batch is forced to
  ``min_new_tokens = max_new_tokens`` = the number of decoder steps ours ran for that batch.

**Equal work** means: for every batch, both systems encode the same source tensor once and run
the decoder for the same number of incremental steps (each step over batch × beam rows). The
number of steps ours ran is counted by wrapping its ``decode`` (one call per step). Target
tokens/s counts Σ over batches of steps × sentences for both systems (for the forced-length
runs exactly sentences × ``--length``). Ours may still do less work inside a step if its
search drops finished sentences from the batch; that is part of what is measured. Ours is
timed end to end through ``translate`` (sentencepiece encoding and decoding included); the
reference's time is ``generate`` alone on the prepared tensors.

**Precisions** (``--precision``, one or more): ``fp32``; ``bf16`` (ours: bf16 weights, as
``mt-translate --precision bf16``; Marian: autocast; CTranslate2: ``bfloat16`` where its CPU build
offers it, which it does not on x86 CPUs today); ``int8`` (ours: torch's dynamic int8 quantization
of every linear layer, as ``--precision int8``; CTranslate2: ``int8_float32``). A reference that
does not offer a precision is left out of that setting.

``--sweep`` forces output lengths (default 8, 16, 32, 64, 128) on one batch of
``--sweep-sentences`` sentences and prints ms per sentence and per output token: with
incremental decoding (a key/value cache) time grows about linearly with the output length, so
ms per token stays roughly flat; re-running the whole prefix each step would make it grow
with the length.

Warm-up: one untimed batch per system and search; each measurement is then the fastest of
``--repeats`` timed passes. The last stdout line is one JSON object: the first precision's
figures under the keys of earlier versions (``beam5_sent_per_s``, ``ratio`` …) and every
setting in ``settings`` (precision, search, ours and the reference in sentences/s, ratio).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_train.py, the Marian reference builder

from bench_train import apply_device_and_threads, marian_mismatches, marian_model, parameter_counts, print_parameter_counts, sync, load_training_data  # noqa: E402

from mt.config import DecodingConfig, ModelConfig, TrainConfig  # noqa: E402
from mt.device import INFERENCE_PRECISIONS as PRECISIONS, for_inference  # noqa: E402
from mt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID  # noqa: E402

SEARCHES = {1: "greedy", 5: "beam 5"}


class DecodeRecorder:
    """Wraps one model's ``encode``, ``decode`` and ``logits`` (instance attributes, the class
    is untouched) to record what ``translate`` does.

    Attributes:
        batches: per ``encode`` call, ``[src_ids (batch, src_len) long, decoder steps]``.
        forced_length: when set, EOS gets -inf logits at decoder steps 1 … forced_length - 1
            of every batch, so that no hypothesis ends before the limit
            ``max_len_b = forced_length`` closes it with EOS.
    """

    def __init__(self, model: torch.nn.Module):
        self.batches: list[list] = []
        self.forced_length: int | None = None
        encode, decode, logits = model.encode, model.decode, model.logits

        def recorded_encode(src_ids, *args, **kwargs):
            self.batches.append([src_ids, 0])
            return encode(src_ids, *args, **kwargs)

        def counted_decode(*args, **kwargs):
            self.batches[-1][1] += 1
            return decode(*args, **kwargs)

        def forced_logits(hidden):
            out = logits(hidden)  # (..., tgt_vocab)
            if self.forced_length is not None and self.batches[-1][1] < self.forced_length:
                out[..., EOS_ID] = float("-inf")
            return out

        model.encode, model.decode, model.logits = recorded_encode, counted_decode, forced_logits


def time_ours(model, recorder: DecodeRecorder, tokenizer, sentences: list[str], decoding: DecodingConfig, args) -> dict:
    """Warm up on one batch, then time ``translate`` over all ``sentences`` (fastest of ``--repeats``)."""
    from mt.inference.evaluate import translate

    device = torch.device(args.device)
    translate(model, tokenizer, sentences[: decoding.batch_size], decoding, device)
    seconds = float("inf")
    for _ in range(args.repeats):
        recorder.batches.clear()
        sync(device)
        start = time.perf_counter()
        translate(model, tokenizer, sentences, decoding, device)
        sync(device)
        seconds = min(seconds, time.perf_counter() - start)
    batches = [(src_ids, steps) for src_ids, steps in recorder.batches]
    return {"seconds": seconds, "batches": batches, **rates(seconds, batches)}


class HFReference:
    """``transformers.MarianMTModel.generate`` of the same dimensions, random weights, under the
    same autocast (fp32, bf16)."""

    label = "reference (MarianMTModel.generate)"
    precisions = ("fp32", "bf16")

    def __init__(self, cfg: ModelConfig, tgt_vocab_size: int, device: str):
        self.model = marian_model(cfg, tgt_vocab_size).to(device).eval()
        self.device = torch.device(device)

    def describe(self) -> str:
        return f"transformers.MarianMTModel, random weights, attention {self.model.config._attn_implementation}"

    def time(self, batches: list[tuple], decoding: DecodingConfig, precision: str, args) -> dict:
        """``generate`` on ours' batches, each forced to ours' number of decoder steps."""
        from mt.device import autocast

        def generate(src_ids: torch.Tensor, steps: int) -> None:
            out = self.model.generate(
                input_ids=src_ids,
                attention_mask=src_ids != PAD_ID,
                num_beams=decoding.beam_size,
                do_sample=False,
                length_penalty=decoding.length_penalty,
                min_new_tokens=steps,
                max_new_tokens=steps,
                suppress_tokens=[PAD_ID, BOS_ID],
            )  # (batch, 1 + steps): decoder start + generated tokens
            if out.size(1) != 1 + steps:
                raise RuntimeError(f"reference generated {out.size(1) - 1} tokens, forced to {steps}")

        with torch.inference_mode(), autocast(self.device, precision):
            seconds = time_batches(generate, batches, self.device, args)
        return {"seconds": seconds, **rates(seconds, batches)}


class CT2Reference:
    """``ctranslate2.Translator.translate_batch`` on our own model exported by ``mt-export``
    (:func:`mt.inference.export.write_ctranslate2`): the same weights, so with a checkpoint the same model.

    Precisions: fp32 → compute type ``float32``, int8 → ``int8_float32`` (int8 weights and
    matmuls, float32 elsewhere), bf16 → ``bfloat16`` where this CPU build of CTranslate2 offers it.
    """

    label = "reference (CTranslate2 translate_batch)"
    COMPUTE_TYPES = {"fp32": "float32", "int8": "int8_float32", "bf16": "bfloat16"}

    def __init__(self, model, tokenizer, device: str, threads: int, out_dir: Path):
        import ctranslate2

        from mt.inference.export import write_ctranslate2

        self.ctranslate2 = ctranslate2
        self.device, self.threads, self.tokenizer = device.split(":")[0], threads, tokenizer
        self.model_dir = write_ctranslate2(model, tokenizer, out_dir, force=True)
        supported = ctranslate2.get_supported_compute_types(self.device)
        self.precisions = tuple(p for p, compute_type in self.COMPUTE_TYPES.items() if compute_type in supported)
        self.translators: dict[str, object] = {}

    def describe(self) -> str:
        return (
            f"CTranslate2 {self.ctranslate2.__version__}, our weights exported by mt-export, {self.threads} intra threads; "
            f"precisions here: {', '.join(self.precisions)}"
        )

    def time(self, batches: list[tuple], decoding: DecodingConfig, precision: str, args) -> dict:
        """``translate_batch`` on ours' batches (the same source pieces, EOS appended by the
        exported model), each forced to ours' number of decoder steps with
        ``min_decoding_length = max_decoding_length``."""
        if precision not in self.translators:
            self.translators[precision] = self.ctranslate2.Translator(
                str(self.model_dir), device=self.device, compute_type=self.COMPUTE_TYPES[precision],
                intra_threads=self.threads, inter_threads=1,
            )
        translator = self.translators[precision]
        piece = self.tokenizer.src.id_to_piece
        prepared = [
            ([[piece(i) for i in row if i not in (PAD_ID, EOS_ID)] for row in src_ids.tolist()], steps)
            for src_ids, steps in batches
        ]  # before timing, as ours' sentencepiece work is not

        def translate(source: list[list[str]], steps: int) -> None:
            results = translator.translate_batch(
                source, beam_size=decoding.beam_size, length_penalty=decoding.length_penalty,
                min_decoding_length=steps, max_decoding_length=steps, max_batch_size=0,
            )
            if any(len(result.hypotheses[0]) != steps for result in results):
                raise RuntimeError(f"CTranslate2 generated other than the forced {steps} tokens")

        seconds = time_batches(translate, prepared, None, args)
        return {"seconds": seconds, **rates(seconds, batches)}


def time_batches(run, batches: list[tuple], device: torch.device | None, args) -> float:
    """Seconds of ``run(*batch)`` over all batches: one untimed batch first, then the fastest of
    ``--repeats`` passes (``device``: synchronised around each pass; None for CTranslate2)."""
    run(*batches[0])
    seconds = float("inf")
    for _ in range(args.repeats):
        if device is not None:
            sync(device)
        start = time.perf_counter()
        for batch in batches:
            run(*batch)
        if device is not None:
            sync(device)
        seconds = min(seconds, time.perf_counter() - start)
    return seconds


def rates(seconds: float, batches: list[tuple]) -> dict:
    sentences = sum(src_ids.size(0) for src_ids, _ in batches)
    tokens = sum(src_ids.size(0) * steps for src_ids, steps in batches)
    return {
        "sentences": sentences,
        "tokens": tokens,
        "sent_per_s": sentences / seconds,
        "tokens_per_s": tokens / seconds,
        "ms_per_sentence": 1000 * seconds / sentences,
    }


def sweep(model, recorder, reference, tokenizer, sentences, decoding, precision: str, args) -> list[dict]:
    """Forced output lengths on one batch: ms per sentence for ours (and the reference)."""
    rows = []
    sentences = sentences[: args.sweep_sentences]
    for length in args.sweep_lengths:
        forced = dataclasses.replace(decoding, max_len_a=0.0, max_len_b=length, batch_size=len(sentences))
        recorder.forced_length = length
        ours = time_ours(model, recorder, tokenizer, sentences, forced, args)
        row = {"precision": precision, "beam": decoding.beam_size, "length": length, "ms_per_sentence": ours["ms_per_sentence"]}
        if reference is not None and precision in reference.precisions:
            row["reference_ms_per_sentence"] = reference.time(ours["batches"], forced, precision, args)["ms_per_sentence"]
        rows.append(row)
    recorder.forced_length = args.length if args.checkpoint is None else None
    return rows


def print_sweep(rows: list[dict]) -> None:
    has_reference = "reference_ms_per_sentence" in rows[0]
    print(f"\nlength sweep ({SEARCHES[rows[0]['beam']]}, {rows[0]['precision']}), forced output lengths, one batch:")
    header = f"{'length':>6} | {'ours ms/sent':>12} {'ours ms/token':>13}"
    print(header + (f" | {'ref ms/sent':>11} {'ref ms/token':>12}" if has_reference else ""))
    for row in rows:
        line = f"{row['length']:>6} | {row['ms_per_sentence']:>12.2f} {row['ms_per_sentence'] / row['length']:>13.3f}"
        if has_reference:
            ref = row["reference_ms_per_sentence"]
            line += f" | {ref:>11.2f} {ref / row['length']:>12.3f}"
        print(line)
    first, last = rows[0], rows[-1]
    if last["length"] > first["length"]:
        growth = last["length"] / first["length"]
        line = f"time x{last['ms_per_sentence'] / first['ms_per_sentence']:.1f} for length x{growth:.0f} (ours)"
        if has_reference:
            line += f", x{last['reference_ms_per_sentence'] / first['reference_ms_per_sentence']:.1f} (reference)"
        print(line + f"; linear growth ≤ x{growth:.0f}, re-running the prefix each step ~ x{growth**2:.0f}")


def main() -> None:
    from mt.data import corpora
    from mt.model.checkpoint import load_for_inference
    from mt.errors import MtError
    from mt.model.transformer import Transformer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="checkpoint file or run dir (default: random weights, forced lengths)")
    parser.add_argument("--beam-size", type=int, choices=sorted(SEARCHES), help="only this search (default: both)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, nargs="+", default=["fp32"],
        help="one or more: fp32; bf16 (ours: bf16 weights, as mt-translate --precision bf16; Marian: autocast); "
        "int8 (ours: torch dynamic int8 quantization of every Linear; CTranslate2: int8_float32) (default: fp32)",
    )
    parser.add_argument(
        "--reference", choices=["hf", "ct2"],
        help="also time transformers.MarianMTModel.generate (hf) or CTranslate2 on our weights exported by mt-export (ct2)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--max-sentences", type=int, default=0, help="first N test sentences (default: all 1,000)")
    parser.add_argument("--batch-size", type=int, help="sentences per batch (default: the checkpoint's, 64)")
    parser.add_argument("--length-penalty", type=float, help="GNMT length penalty alpha (default: the checkpoint's)")
    parser.add_argument("--length", type=int, default=32, help="forced output length of random weights (default 32)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes per measurement; the fastest counts (default 1)")
    parser.add_argument("--sweep", action="store_true", help="also time forced output lengths on one batch")
    parser.add_argument("--sweep-lengths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--sweep-sentences", type=int, default=64, help="sentences of the sweep batch (default 64)")
    parser.add_argument("--data-dir", default="data", help="corpus and cache folder, as data.data_dir (default: data)")
    args = parser.parse_args()
    for flag, value, least in (
        ("--threads", args.threads, 0),
        ("--max-sentences", args.max_sentences, 0),
        ("--batch-size", args.batch_size or 1, 1),
        ("--length", args.length, 1),
        ("--repeats", args.repeats, 1),
        ("--sweep-sentences", args.sweep_sentences, 1),
        *(("--sweep-lengths", length, 1) for length in args.sweep_lengths),
    ):
        if value < least:
            parser.error(f"{flag} must be >= {least}, got {value}")
    apply_device_and_threads(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    mirror = os.environ.get("MT_DATA_MIRROR") or None

    try:
        if args.checkpoint:
            model, tokenizer, info = load_for_inference(args.checkpoint, device)
            src_lang, tgt_lang, decoding = info["src_lang"], info["tgt_lang"], info["decoding"]
            what = f"checkpoint {info['path']} (step {info['step']})"
        else:
            tokenizer = load_training_data(args.data_dir, mirror, TrainConfig().batch_tokens)[0].tokenizer
            torch.manual_seed(0)
            model = Transformer(ModelConfig(), tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, PAD_ID).to(device).eval()
            src_lang, tgt_lang = "de", "en"
            decoding = DecodingConfig(max_len_a=0.0, max_len_b=args.length)
            what = f"random weights, output forced to {args.length} tokens"
        test = corpora.load_split("test_2016_flickr", src_lang, tgt_lang, args.data_dir, mirror, args.max_sentences)
    except MtError as error:
        sys.exit(f"bench_decode: error: {error}")
    if args.batch_size:
        decoding = dataclasses.replace(decoding, batch_size=args.batch_size)
    if args.length_penalty is not None:
        decoding = dataclasses.replace(decoding, length_penalty=args.length_penalty)
    max_length = max([args.length, *(args.sweep_lengths if args.sweep else [])])
    if max_length > model.cfg.max_positions - 1:
        parser.error(f"forced lengths must be < model.max_positions = {model.cfg.max_positions}, got {max_length}")
    sentences = list(test["src"])
    cfg = model.cfg
    print(
        f"{what}; {src_lang}→{tgt_lang} test_2016_flickr, {len(sentences)} sentences, batches of {decoding.batch_size}; "
        f"d_model {cfg.d_model}, {cfg.encoder.n_layers}+{cfg.decoder.n_layers} layers, FFN {cfg.ffn_dim}; "
        f"device {args.device}, precision {' '.join(args.precision)}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    reference = None
    try:
        if args.reference == "hf":
            for problem in marian_mismatches(cfg):
                print(f"warning: the reference cannot reproduce {problem}; it uses full multi-head attention")
            reference = HFReference(cfg, tokenizer.tgt_vocab_size, args.device)
        elif args.reference == "ct2":
            reference = CT2Reference(
                model, tokenizer, args.device, torch.get_num_threads(), Path(tempfile.mkdtemp(prefix="bench-ct2-")) / "model"
            )
    except MtError as error:  # a model CTranslate2 cannot express, or ctranslate2 missing
        sys.exit(f"bench_decode: error: {error}")
    if reference is not None:
        print(f"reference: {reference.describe()}")
    print_parameter_counts(
        cfg, parameter_counts(model), parameter_counts(reference.model) if isinstance(reference, HFReference) else None
    )

    # each precision's model as mt-translate --precision runs it (a copy), its decode calls recorded
    models = {
        precision: model if precision == "fp32" else for_inference(copy.deepcopy(model), precision)
        for precision in args.precision
    }
    recorders = {id(m): DecodeRecorder(m) for m in models.values()}
    for recorder in recorders.values():
        recorder.forced_length = None if args.checkpoint else args.length

    results, sweeps = {}, []
    for precision in args.precision:
        candidate, recorder = models[precision], recorders[id(models[precision])]
        for beam in [args.beam_size] if args.beam_size else sorted(SEARCHES):
            search = dataclasses.replace(decoding, beam_size=beam)
            ours = time_ours(candidate, recorder, tokenizer, sentences, search, args)
            results[precision, beam] = {"ours": ours}
            if reference is not None and precision in reference.precisions:
                results[precision, beam]["reference"] = reference.time(ours["batches"], search, precision, args)
            if args.sweep:
                sweeps.append(sweep(candidate, recorder, reference, tokenizer, sentences, search, precision, args))

    print(
        f"\n{'search':<7} | {'precision':<9} | {'system':<41} | {'sentences/s':>11} | {'tgt tokens/s':>12} | "
        f"{'ms/sentence':>11} | {'decoder steps':>13}"
    )
    settings = []
    for (precision, beam), systems in results.items():
        steps = sum(s for _, s in systems["ours"]["batches"])
        labels = {"ours": "ours (mt.inference.evaluate.translate)", "reference": reference.label if reference else ""}
        for name, r in systems.items():
            print(
                f"{SEARCHES[beam]:<7} | {precision:<9} | {labels[name]:<41} | {r['sent_per_s']:>11.2f} | "
                f"{r['tokens_per_s']:>12.1f} | {r['ms_per_sentence']:>11.2f} | {steps:>13}"
            )
        setting = {"precision": precision, "search": SEARCHES[beam], "ours_sent_per_s": systems["ours"]["sent_per_s"]}
        if "reference" in systems:
            ratio = systems["ours"]["sent_per_s"] / systems["reference"]["sent_per_s"]
            print(f"{'':<7} | {'':<9} | ours/reference: {ratio:.2f}x")
            setting.update(reference_sent_per_s=systems["reference"]["sent_per_s"], ratio=ratio)
        elif reference is not None:
            print(f"{'':<7} | {'':<9} | the reference offers no {precision} on this device")
        settings.append(setting)
    for rows in sweeps:
        print_sweep(rows)

    first = args.precision[0]

    def field(beam: int, system: str, key: str):
        return results.get((first, beam), {}).get(system, {}).get(key)

    def ratio(beam: int):
        theirs = field(beam, "reference", "sent_per_s")
        return field(beam, "ours", "sent_per_s") / theirs if theirs else None

    print(
        json.dumps(
            {
                "greedy_sent_per_s": field(1, "ours", "sent_per_s"),
                "beam5_sent_per_s": field(5, "ours", "sent_per_s"),
                "reference_beam5_sent_per_s": field(5, "reference", "sent_per_s"),
                "ratio": ratio(5),
                "reference_greedy_sent_per_s": field(1, "reference", "sent_per_s"),
                "greedy_ratio": ratio(1),
                "greedy_tokens_per_s": field(1, "ours", "tokens_per_s"),
                "beam5_tokens_per_s": field(5, "ours", "tokens_per_s"),
                "reference": args.reference,
                "settings": settings,
                "mode": "checkpoint" if args.checkpoint else f"random weights, length {args.length}",
                "sentences": len(sentences),
                "batch_size": decoding.batch_size,
                "device": args.device,
                "precision": first,
                "threads": torch.get_num_threads(),
                "sweep": [row for rows in sweeps for row in rows],
            }
        )
    )


if __name__ == "__main__":
    main()
