"""Console entry points (mt-train, -translate, -evaluate, -align, -align-score, -average, -export): thin wrappers.

A user mistake (:class:`~mt.errors.MtError`, or a bad value caught by argparse) prints one line
``PROG: error: …`` on stderr and exits with status 2 (128 + signal number for an interrupted
training run), without a traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mt.errors import MtError

if TYPE_CHECKING:  # hydra is imported by mt-train only: the inference commands start faster without it
    from omegaconf import DictConfig

log = logging.getLogger(__name__)


def _run(prog: str, body: Callable[[], None]) -> None:
    try:
        body()
    except MtError as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # the switch that shows tracebacks
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))


# ----------------------------------------------------------------------------------- mt-train
def _train_app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from mt.config import command_line_keys, from_hydra
    from mt.training.train import train

    def body() -> None:
        config = from_hydra(cfg)  # validation happens here, before any data work
        hydra_config = HydraConfig.get()
        train(config, hydra_config.runtime.output_dir, command_line_keys(hydra_config.overrides.task))

    _run("mt-train", body)


def train_main() -> None:
    """``mt-train [HYDRA OVERRIDES]``: train with the config composed from ``configs/train.yaml``.

    First restarts itself on tcmalloc or jemalloc where one is installed (``MT_ALLOCATOR``;
    :func:`mt.training.memory.relaunch_with_allocator`).
    """
    from mt.training.memory import relaunch_with_allocator

    _run("mt-train", relaunch_with_allocator)
    import hydra

    from mt.config import CONFIG_DIR, register_with_hydra

    register_with_hydra()  # the schema's defaults under configs/train.yaml; the run dir's resolver
    hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")(_train_app)()


# ------------------------------------------------------------------------ shared CLI pieces
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint file, or a run dir (uses checkpoints/best.pt)")
    parser.add_argument("--beam-size", type=_positive_int, help="beam size (default: the checkpoint's decoding.beam_size)")
    parser.add_argument("--length-penalty", type=float, help="GNMT length-penalty alpha (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=_positive_int, help="sentences per batch (default: the checkpoint's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")


def _add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "int8"), default="fp32",
        help="weights and matmuls of the search: fp32; bf16 (fast on CPUs with AVX-512 BF16 or AMX, and on CUDA); "
        "int8 (torch dynamic quantization of the linear layers, CPU only) (default: fp32)",
    )


def _load(args: argparse.Namespace):
    """Model, tokenizer, checkpoint info, and decoding settings: the checkpoint's, overridden by the flags."""
    import dataclasses

    import torch

    from mt.model.checkpoint import load_for_inference
    from mt.config import check_device
    from mt.training.memory import set_onednn_cache_capacity

    # oneDNN keeps a primitive (with packed weights) per matmul shape, and the search's shapes
    # change as sentences finish: as in training (train.onednn_cache_capacity), keep 64 of them
    set_onednn_cache_capacity(64)  # bf16 mt-evaluate on test_2016_flickr: 1,001 -> 838 MB peak RSS
    check_device(args.device, "--device")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise MtError(f"--device {args.device}: CUDA is not available on this machine")
    model, tokenizer, info = load_for_inference(args.checkpoint, args.device)
    if getattr(args, "precision", "fp32") != "fp32":
        from mt.device import for_inference

        try:
            model = for_inference(model, args.precision)
        except ValueError as error:  # int8 on CUDA
            raise MtError(f"--precision {args.precision}: {error}") from None
    flags = {name: getattr(args, name) for name in ("beam_size", "length_penalty", "batch_size")}
    decoding = dataclasses.replace(info["decoding"], **{k: v for k, v in flags.items() if v is not None})
    return model, tokenizer, info, decoding


def _read_text(path: str) -> list[str]:
    from mt.data.corpora import read_lines

    file = Path(path)
    if not file.is_file():
        raise MtError(f"{path}: no such file")
    lines = read_lines(file)
    if not lines:
        raise MtError(f"{path} is empty")
    return lines


def _read_stdin() -> list[str]:
    from mt.data.corpora import split_lines

    return split_lines(sys.stdin.buffer.read(), "stdin")


# ------------------------------------------------------------------------------ mt-translate
def translate_main(argv: Sequence[str] | None = None) -> None:
    """``mt-translate CHECKPOINT [SENTENCE ...] [--n-best K] [--output-format text|jsonl] [--align]
    [--markup html|xml]``: one translation per sentence (or per stdin line), or its K best with scores
    and alignment; with ``--markup``, the tags of each line carried into its translations."""
    parser = argparse.ArgumentParser(
        prog="mt-translate",
        description="Translate sentences given as arguments, or stdin line by line (a blank line gives a blank line).",
    )
    _add_inference_options(parser)
    _add_precision_option(parser)
    parser.add_argument("sentences", nargs="*", help="sentences to translate; none = read stdin")
    parser.add_argument(
        "--n-best", type=_positive_int, default=1, metavar="K",
        help="K best hypotheses per sentence, at most the beam size; as text, K > 1 prints 'i ||| hypothesis ||| "
        "score' lines (i = 0-based input line, best first, none for a blank line) (default: 1)",
    )
    parser.add_argument(
        "--output-format", choices=("text", "jsonl"), default="text",
        help="text: translations only; jsonl: one JSON object per input line with the hypotheses, their pieces, "
        "scores and per-token log-probs (default: text)",
    )
    parser.add_argument(
        "--align", action="store_true",
        help="jsonl: add the word alignment of each best hypothesis (as mt-align: default method and layer)",
    )
    parser.add_argument(
        "--markup", choices=("html", "xml"),
        help="each line is HTML or XML: translate its text without the tags and put every tag back on the "
        "translation's words through the alignment (a line that does not parse gives an empty line, a one-line "
        "error naming it, and exit status 1)",
    )
    args = parser.parse_intermixed_args(argv)  # sentences may come before or after the flags
    if args.align and args.output_format != "jsonl":
        parser.error("--align goes with --output-format jsonl")

    def body() -> None:
        from mt.alignment.align import default_method
        from mt.inference.evaluate import translate_nbest
        from mt.inference.markup import MarkupTransfer

        model, tokenizer, info, decoding = _load(args)
        if args.n_best > decoding.beam_size:
            raise MtError(f"--n-best {args.n_best} exceeds the beam size {decoding.beam_size} (raise --beam-size)")
        lines = args.sentences if args.sentences else _read_stdin()
        markups, errors = _parse_markup(lines, args.markup) if args.markup else ([], {})  # None: did not parse
        sentences = [m.text if m else "" for m in markups] if args.markup else lines
        markup = (
            MarkupTransfer(model, tokenizer, markups, decoding.batch_size, args.device, default_method(info))
            if args.markup
            else None
        )
        try:  # with --markup, each batch's hypotheses are aligned as it finishes, reusing its encoder pass
            nbest = translate_nbest(model, tokenizer, sentences, decoding, args.n_best, args.device, on_batch=markup)
        except ValueError as error:  # a beam wider than half the vocabulary
            raise MtError(f"--beam-size {decoding.beam_size}: {error}") from None
        marked, alignments = [[h.text for h in hypotheses] for hypotheses in nbest], {}
        if markup is not None:
            marked, alignments = markup.results()
        if args.output_format == "jsonl":
            if args.align:  # every line, or those --markup did not align (no tags)
                todo = [[] if index in alignments else hypotheses for index, hypotheses in enumerate(nbest)]
                alignments |= _best_alignments(
                    model, tokenizer, sentences, todo, decoding.batch_size, args.device, default_method(info)
                )
            for index, (source, hypotheses) in enumerate(zip(sentences, nbest)):
                record = _translation_record(index, source, hypotheses, alignments.get(index) if args.align else None)
                if args.markup:
                    _add_markup(record, lines[index], marked[index], errors.get(index))
                sys.stdout.write(_json_line(record) + "\n")
        elif args.n_best == 1:
            for texts in marked:
                sys.stdout.write((texts[0] if texts else "") + "\n")
        else:  # the Moses n-best layout, without its feature-score field
            for index, (hypotheses, texts) in enumerate(zip(nbest, marked)):
                for h, text in zip(hypotheses, texts):
                    sys.stdout.write(f"{index} ||| {text} ||| {h.score:.6f}\n")
                if not hypotheses and args.markup and index not in errors and texts[0]:
                    sys.stdout.write(f"{index} ||| {texts[0]} ||| 0.000000\n")  # markup only: nothing to translate
        sys.stdout.flush()
        if errors:
            sys.exit(1)  # the lines named on stderr were not translated

    _run("mt-translate", body)


def _parse_markup(lines: Sequence[str], mode: str) -> tuple[list, dict[int, str]]:
    """``--markup``: :class:`~mt.inference.markup.Markup` of each line (None where it does not parse), and
    line index → error, each also printed as one line ``mt-translate: error: line N: …`` on stderr."""
    from mt.inference.markup import MarkupError, parse

    markups, errors = [], {}
    for index, line in enumerate(lines):
        try:
            markups.append(parse(line, mode))
        except MarkupError as error:
            errors[index] = f"line {index + 1}: {error}"
            print(f"mt-translate: error: {errors[index]}", file=sys.stderr)
            markups.append(None)
    return markups, errors


def _add_markup(record: dict, line: str, marked: list[str], error: str | None) -> None:
    """``--markup`` jsonl fields: ``source_markup``, ``translation_markup``, each hypothesis's
    ``markup``, and ``error`` for a line that does not parse."""
    record["source_markup"] = line
    record["translation_markup"] = marked[0] if marked else ""
    for hypothesis, text in zip(record["hypotheses"], marked):
        hypothesis["markup"] = text
    if error is not None:
        record["error"] = error


def _best_alignments(model, tokenizer, sentences, nbest, batch_size: int, device: str, method: str) -> dict:
    """``--align``: input line index → :class:`~mt.alignment.align.PairAlignment` of its best hypothesis (blank lines: none)."""
    from mt.alignment.align import align

    indices = [i for i, hypotheses in enumerate(nbest) if hypotheses]
    sources = [sentences[i] for i in indices]
    targets = [nbest[i][0].text for i in indices]
    alignments = align(model, tokenizer, sources, targets, method=method, batch_size=batch_size, device=device, keep_attention=False)
    return dict(zip(indices, alignments))


def _translation_record(index: int, source: str, hypotheses, alignment) -> dict:
    """One ``--output-format jsonl`` line; the alignment, if any, goes to the best hypothesis."""
    import dataclasses

    import numpy as np

    from mt.alignment.aer import format_pharaoh

    record = {"index": index, "source": source, "hypotheses": [dataclasses.asdict(h) for h in hypotheses]}
    if alignment is not None:
        record["hypotheses"][0]["alignment"] = {
            "src_words": alignment.src_words,
            "tgt_words": alignment.tgt_words,
            "links": [list(link) for link in alignment.links],
            "pharaoh": format_pharaoh(alignment.links),
            "word_matrix": np.round(alignment.word_matrix.astype(np.float64), 6).tolist(),
        }
    return record


def _json_line(record: dict) -> str:
    """``record`` as one line of JSON: readable UTF-8, but the characters that ``str.splitlines``
    also breaks on (U+0085, U+2028, U+2029; json escapes the control characters) escaped."""
    text = json.dumps(record, ensure_ascii=False)
    return text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# ------------------------------------------------------------------------------- mt-evaluate
def evaluate_main(argv: Sequence[str] | None = None) -> None:
    """``mt-evaluate CHECKPOINT [--split S | --src FILE --ref FILE]``: sacreBLEU BLEU and chrF with signatures."""
    parser = argparse.ArgumentParser(prog="mt-evaluate", description="Translate a split or a file and score it with sacreBLEU.")
    _add_inference_options(parser)
    _add_precision_option(parser)
    parser.add_argument("--split", help="Multi30k split to score (default: test_2016_flickr)")
    parser.add_argument("--src", help="source file, one sentence per line (with --ref)")
    parser.add_argument("--ref", help="reference file, one sentence per line (with --src)")
    parser.add_argument("--output", help="also write the hypotheses to this file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of score lines")
    parser.add_argument("--data-dir", default="data", help="corpus cache folder (default: data)")
    parser.add_argument("--mirror", help="local Multi30k mirror folder (default: $MT_DATA_MIRROR)")
    args = parser.parse_args(argv)
    if (args.src is None) != (args.ref is None):
        parser.error("--src and --ref go together")
    if args.split and args.src:
        parser.error("give either --split or --src/--ref, not both")

    def body() -> None:
        from mt.data.corpora import load_split
        from mt.inference.evaluate import score, translate

        model, tokenizer, info, decoding = _load(args)
        if args.src:
            sources, references = _read_text(args.src), _read_text(args.ref)
            if len(sources) != len(references):
                raise MtError(f"{args.src} has {len(sources)} lines but {args.ref} has {len(references)}")
        else:
            mirror = args.mirror or os.environ.get("MT_DATA_MIRROR") or None
            split = load_split(args.split or "test_2016_flickr", info["src_lang"], info["tgt_lang"], args.data_dir, mirror)
            sources, references = split["src"], split["tgt"]
        hypotheses = translate(model, tokenizer, sources, decoding, args.device, progress=True)
        if args.output:
            Path(args.output).write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
        scores = score(hypotheses, references)
        if args.json:
            keys = ("bleu", "chrf", "bleu_signature", "chrf_signature", "n_sentences")
            print(json.dumps({key: scores[key] for key in keys}))
        else:
            print(scores["bleu_line"])
            print(scores["chrf_line"])
            print(f"BLEU signature: {scores['bleu_signature']}")
            print(f"chrF signature: {scores['chrf_signature']}")

    _run("mt-evaluate", body)


# ---------------------------------------------------------------------------------- mt-align
def _heads(text: str) -> list[int]:
    try:
        return [int(h) for h in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated head indices, got {text!r}") from None


def _layer(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer index or 'auto', got {text!r}") from None


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _oriented_gold(prefix: str, src_lang: str, tgt_lang: str, flag: str):
    from mt.alignment.aer import load_gold

    try:
        return load_gold(prefix).oriented(src_lang, tgt_lang)
    except ValueError as error:
        raise MtError(f"{flag} {prefix}: {error} (the checkpoint translates {src_lang}→{tgt_lang})") from None


def _choose_layer(model, tokenizer, layer, dev_gold, options: dict, name: str) -> int | None:
    """``--layer``: an index, the checkpoint's default (None), or ``auto`` = lowest AER on ``--dev-gold``."""
    from mt.alignment.align import default_layer, select_layer

    if layer != "auto":
        return layer
    if dev_gold is None:
        fallback = default_layer(len(model.decoder_layers))
        print(f"mt-align: --layer auto without --dev-gold: using the default layer {fallback}", file=sys.stderr)
        return fallback
    best, aers = select_layer(model, tokenizer, dev_gold, **options)
    listing = ", ".join(f"{layer}: {100 * aer:.1f}" for layer, aer in enumerate(aers))
    print(f"mt-align: {name}--layer auto → {best} (dev AER % by layer: {listing})", file=sys.stderr)
    return best


def align_main(argv: Sequence[str] | None = None) -> None:
    """``mt-align CHECKPOINT --src FILE [--tgt FILE] --out DIR [--plot] [--html [FILE]]``, ``mt-align CHECKPOINT
    SRC [TGT]`` or ``mt-align CHECKPOINT --gold PREFIX [--out DIR]``; see ``mt-align --help``."""
    from mt.alignment.align import DEFAULT_METHOD, METHODS
    from mt.alignment.symmetrize import HEURISTICS

    parser = argparse.ArgumentParser(
        prog="mt-align",
        description="Teacher-force the model on sentence pairs and export its cross-attention as alignments. "
        "Without a target, the source is translated first and aligned to its own translation.",
    )
    _add_inference_options(parser)
    parser.add_argument("pair", nargs="*", metavar="SENTENCE", help="one inline pair: SOURCE [TARGET]")
    parser.add_argument("--src", help="source file, one sentence per line")
    parser.add_argument("--tgt", help="target file aligned line by line with --src")
    parser.add_argument(
        "--gold", help="align the pairs of a gold set PREFIX (PREFIX.src-tgt + PREFIX.talp) and print AER against it"
    )
    parser.add_argument("--out", help="output folder (required with --src)")
    parser.add_argument("--plot", action="store_true", help="also write DIR/plots/k.png heatmaps")
    parser.add_argument(
        "--html", nargs="?", const="", metavar="FILE",
        help="also write an interactive view (one self-contained page: heatmaps by layer and head, links, gold "
        "links) to FILE, or to DIR/alignments.html without FILE; put an inline pair before --html",
    )
    parser.add_argument(
        "--method", choices=METHODS,
        help="attention: the row predicting each target word; shift: Shift-Att, the row where it is the decoder "
        "input; supervised: the heads guided alignment trained (model.alignment); aligner: the aligner trained on "
        "top of the model (experiment=align) (default: aligner for a checkpoint that has one, supervised for one "
        f"trained with train.alignment_weight > 0, else {DEFAULT_METHOD})",
    )
    parser.add_argument(
        "--layer", type=_layer,
        help="decoder layer, 0-based, or 'auto' = lowest AER on --dev-gold (default: the penultimate layer)",
    )
    parser.add_argument("--heads", type=_heads, help="comma-separated heads to average (default: all)")
    parser.add_argument(
        "--threshold", type=_unit_interval,
        help="link every source word with probability >= this (many-to-many) instead of the argmax",
    )
    parser.add_argument("--dev-gold", help="gold set PREFIX for --layer auto")
    parser.add_argument("--reverse-checkpoint", help="a target→source model: symmetrize both directions' links")
    parser.add_argument(
        "--symmetrize", choices=HEURISTICS, default="grow-diag-final-and",
        help="how to combine the two directions (default: grow-diag-final-and)",
    )
    args = parser.parse_args(argv)
    if args.html and not args.html.lower().endswith((".html", ".htm")):  # first: it may be a swallowed sentence
        parser.error(f"--html {args.html}: the file name must end in .html (an inline pair goes before --html)")
    inputs = sum(map(bool, (args.pair, args.src, args.gold)))
    if inputs != 1:
        parser.error("give one of: an inline pair, --src FILE, --gold PREFIX")
    if len(args.pair) > 2:
        parser.error(f"an inline pair is SOURCE [TARGET], got {len(args.pair)} sentences")
    if args.src and not args.out:
        parser.error("--src needs --out DIR")
    if args.tgt and not args.src:
        parser.error("--tgt goes with --src")
    if args.dev_gold and args.layer != "auto":
        parser.error("--dev-gold goes with --layer auto")
    if args.html == "" and not args.out:
        parser.error("--html without FILE writes DIR/alignments.html: give --out DIR, or --html FILE.html")

    def body() -> None:
        from mt.alignment.aer import format_pharaoh, format_scores, score_alignments
        from mt.alignment.align import align, default_method, format_table, symmetrize_alignments, write_alignments
        from mt.model.checkpoint import load_for_inference
        from mt.inference.evaluate import translate

        model, tokenizer, info, decoding = _load(args)
        args.method = args.method or default_method(info)
        src_lang, tgt_lang = info["src_lang"], info["tgt_lang"]
        gold = _oriented_gold(args.gold, src_lang, tgt_lang, "--gold") if args.gold else None
        dev_gold = _oriented_gold(args.dev_gold, src_lang, tgt_lang, "--dev-gold") if args.dev_gold else None
        if args.pair:
            sources, targets = [args.pair[0]], args.pair[1:] or None
        elif gold is not None:
            sources, targets = gold.src, gold.tgt
        else:
            sources = _read_text(args.src)
            targets = _read_text(args.tgt) if args.tgt else None
            if targets is not None and len(targets) != len(sources):
                raise MtError(f"{args.src} has {len(sources)} lines but {args.tgt} has {len(targets)}")
        if targets is None:
            targets = translate(model, tokenizer, sources, decoding, args.device, progress=bool(args.src))
        options = {
            "method": args.method, "heads": args.heads, "threshold": args.threshold,
            "batch_size": decoding.batch_size, "device": args.device,
        }
        try:
            layer = _choose_layer(model, tokenizer, args.layer, dev_gold, options, "")
            alignments = align(model, tokenizer, sources, targets, layer=layer, progress=not args.pair, **options)
            if args.reverse_checkpoint:
                reverse_model, reverse_tokenizer, reverse_info = load_for_inference(args.reverse_checkpoint, args.device)
                if (reverse_info["src_lang"], reverse_info["tgt_lang"]) != (tgt_lang, src_lang):
                    raise MtError(
                        f"--reverse-checkpoint {args.reverse_checkpoint} translates {reverse_info['src_lang']}→"
                        f"{reverse_info['tgt_lang']}, not {tgt_lang}→{src_lang}"
                    )
                reverse_dev = dev_gold.reversed() if dev_gold is not None else None
                reverse_layer = _choose_layer(
                    reverse_model, reverse_tokenizer, args.layer, reverse_dev, options, "reverse model: "
                )
                reverse = align(
                    reverse_model, reverse_tokenizer, targets, sources, layer=reverse_layer,
                    progress=not args.pair, **options,
                )
                alignments = symmetrize_alignments(alignments, reverse, args.symmetrize)
        except ValueError as error:
            raise MtError(str(error)) from None
        if args.out:
            write_alignments(alignments, args.out, plot=args.plot)
            print(f"wrote {len(alignments)} alignments to {args.out}", file=sys.stderr)
        if args.html is not None:
            _write_alignment_view(args, model, alignments, layer, gold)
        if args.pair:
            print(format_table(alignments[0]))
            print(format_pharaoh(alignments[0].links))
        if gold is not None:
            print(format_scores(score_alignments([a.links for a in alignments], gold.sure, gold.possible)))

    _run("mt-align", body)


def _write_alignment_view(args: argparse.Namespace, model, alignments, layer: int | None, gold) -> None:
    """``--html``: the interactive view, opened at the method, layer and heads that made the links."""
    from mt.alignment.align import default_layer
    from mt.alignment.html_view import view_data, write_html

    path = Path(args.html or Path(args.out) / "alignments.html")
    n_layers, heads = len(model.decoder_layers), args.heads
    if args.method == "supervised":  # opened at the heads guided alignment trained
        layer = model.cfg.alignment.layer if layer is None else layer
        heads = list(range(model.cfg.alignment.heads)) if heads is None else heads
    layer = default_layer(n_layers) if layer is None else layer % n_layers
    title = f"mt-align {Path(args.checkpoint).name}: method {args.method}" + ("" if args.method == "aligner" else f", layer {layer}")
    if args.reverse_checkpoint:
        title += f", links symmetrized ({args.symmetrize}) with {Path(args.reverse_checkpoint).name}"
    size = write_html(path, view_data(alignments, args.method, layer, heads, gold, title))
    print(f"wrote the alignment view ({size / 1024:.0f} KiB) to {path}", file=sys.stderr)


# ---------------------------------------------------------------------------- mt-align-score
def align_score_main(argv: Sequence[str] | None = None) -> None:
    """``mt-align-score GOLD PRED [--one-based-gold] [--reverse-gold] [--json]``: precision, recall, F1, AER."""
    parser = argparse.ArgumentParser(
        prog="mt-align-score",
        description="Score word alignments against gold links (Och & Ney 2003): precision, recall, F1 and AER.",
    )
    parser.add_argument("gold", metavar="GOLD", help="gold links, one line per pair: i-j sure, i?j or ipj possible")
    parser.add_argument("pred", metavar="PRED", help="predicted links in Pharaoh format (i-j, 0-based)")
    parser.add_argument("--one-based-gold", action="store_true", help="GOLD positions count from 1 (.talp files)")
    parser.add_argument("--reverse-gold", action="store_true", help="swap GOLD's sides (its target side first)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (rates in [0, 1])")
    args = parser.parse_args(argv)

    def body() -> None:
        import dataclasses

        from mt.alignment.aer import format_scores, read_links, read_pharaoh, score_alignments

        gold = read_links(args.gold, args.one_based_gold, args.reverse_gold)
        predicted = read_pharaoh(args.pred)
        if len(predicted) != len(gold):
            raise MtError(f"{args.pred} has {len(predicted)} lines but {args.gold} has {len(gold)}")
        if not args.one_based_gold and gold and not any(0 in link for _, possible in gold for link in possible):
            print(f"mt-align-score: warning: {args.gold} never uses position 0; 1-based? (--one-based-gold)", file=sys.stderr)
        scores = score_alignments(predicted, [s for s, _ in gold], [p for _, p in gold])
        print(json.dumps(dataclasses.asdict(scores)) if args.json else format_scores(scores))

    _run("mt-align-score", body)


# -------------------------------------------------------------------------------- mt-average
def average_main(argv: Sequence[str] | None = None) -> None:
    """``mt-average RUN_DIR (--last N | --best N) [--out FILE]``: average the parameters of a run's
    newest N step checkpoints, or of the N with the highest validation BLEU."""
    parser = argparse.ArgumentParser(
        prog="mt-average",
        description="Average the parameters of N validation checkpoints of a run "
        "(RUN_DIR/checkpoints/step-S.pt, kept with train.keep_checkpoints=N) into one inference checkpoint: "
        "the newest N (--last) or the N with the highest validation BLEU (--best).",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the training run folder (the one holding checkpoints/)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--last", type=_positive_int, metavar="N", help="average the newest N step checkpoints")
    which.add_argument(
        "--best", type=_positive_int, metavar="N", help="average the N step checkpoints with the highest val BLEU"
    )
    parser.add_argument(
        "--out", metavar="FILE",
        help="output checkpoint (default: RUN_DIR/checkpoints/averaged.pt, with --best averaged_best.pt)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    def body() -> None:
        from mt.training.average import OUTPUT_NAMES, average_run

        select, n = ("last", args.last) if args.last is not None else ("best", args.best)
        out = args.out or str(Path(args.run_dir) / "checkpoints" / OUTPUT_NAMES[select])
        state = average_run(args.run_dir, n, out, select)
        steps = ", ".join(str(source["step"]) for source in state["averaged_from"])
        print(f"mt-average: averaged {len(state['averaged_from'])} checkpoints (steps {steps}) into {out}", file=sys.stderr)

    _run("mt-average", body)


# --------------------------------------------------------------------------------- mt-export
def export_main(argv: Sequence[str] | None = None) -> None:
    """``mt-export CHECKPOINT --format ctranslate2 --out DIR [--quantization ...] [--force]``."""
    from mt.inference.export import QUANTIZATIONS

    parser = argparse.ArgumentParser(
        prog="mt-export",
        description="Write a checkpoint as a model directory of another inference engine "
        "(ctranslate2: a CTranslate2 Transformer model, with the sentencepiece model copied beside it).",
    )
    parser.add_argument("checkpoint", help="checkpoint file, or a run dir (uses checkpoints/best.pt)")
    parser.add_argument("--format", required=True, choices=("ctranslate2",), help="the engine to export to")
    parser.add_argument("--out", required=True, metavar="DIR", help="the model directory to write")
    parser.add_argument(
        "--quantization", choices=QUANTIZATIONS, default="float32",
        help="weight type stored in the model (default: float32); CTranslate2 can convert again at load time",
    )
    parser.add_argument("--force", action="store_true", help="replace DIR if it exists")
    args = parser.parse_args(argv)

    def body() -> None:
        from mt.inference.export import export_ctranslate2

        out = export_ctranslate2(args.checkpoint, args.out, args.quantization, args.force)
        print(f"mt-export: wrote a CTranslate2 model ({args.quantization}) to {out}", file=sys.stderr)

    _run("mt-export", body)
