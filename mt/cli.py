"""Console entry points (mt-train, -translate, -evaluate, -align, -align-score, -average, -export): thin wrappers.

A user mistake (:class:`~mt.errors.MtError`, or a bad value caught by argparse) prints one line
``PROG: error: …`` on stderr and exits with status 2 (128 + signal number for an interrupted
training run), without a traceback; ``HYDRA_FULL_ERROR=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mt.errors import MtError

if TYPE_CHECKING:  # hydra is imported by mt-train only: the inference commands start faster without it
    from omegaconf import DictConfig


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
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


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


def _add_adapt_option(parser: argparse.ArgumentParser) -> None:
    from mt.config import SYMMETRIZATION_HEURISTICS  # light: mt.alignment.adapt.LINK_CHOICES would import torch

    parser.add_argument(
        "--adapt", action=argparse.BooleanOptionalAction, default=None,
        help="the aligner (experiment=align) adapts its lexicon to the pairs it aligns: eflomal aligns them with the "
        "priors of the aligner's training links, and their counts join the lexicon (default: where the checkpoint "
        "has the priors and eflomal is installed)",
    )
    parser.add_argument(
        "--adapt-weight", type=_positive_float, metavar="W",
        help="with adapting: how many times each new pair's eflomal links count in the lexicon (default: 8)",
    )
    parser.add_argument(
        "--adapt-links", choices=("auto", "aligner", *SYMMETRIZATION_HEURISTICS), default=None,
        help="with adapting: the links given out: the adapted aligner's (aligner), or combined with eflomal's links of "
        "the same pairs (intersect: the links both make; union; grow-diag-final-and); auto: grow-diag-final-and, but "
        "intersect where --reverse-checkpoint's links are symmetrized with them (default: auto)",
    )


def _load(args: argparse.Namespace):
    """:func:`mt.load` of the CHECKPOINT argument, with the decoding flags in place of its defaults."""
    import mt
    from mt.config import check_device

    check_device(args.device, "--device")  # the message names the flag, not the Python argument
    translator = mt.load(args.checkpoint, args.device, getattr(args, "precision", "fp32"))
    translator.decoding = translator.with_defaults(args.beam_size, args.length_penalty, args.batch_size)
    _set_adapt(translator, args)
    return translator


def _set_adapt(translator, args: argparse.Namespace) -> None:
    """The --adapt, --adapt-weight and --adapt-links flags onto a loaded translator (the forward
    model's, and mt-align's --reverse-checkpoint's)."""
    translator.adapt = getattr(args, "adapt", None)
    if getattr(args, "adapt_weight", None) is not None and translator.teacher is not None:
        translator.teacher = dataclasses.replace(translator.teacher, weight=args.adapt_weight)
    if getattr(args, "adapt_links", None) is not None and translator.teacher is not None:
        translator.teacher = dataclasses.replace(translator.teacher, links=args.adapt_links)


def _read_text(path: str) -> list[str]:
    from mt.data.lines import read_lines

    file = Path(path)
    if not file.is_file():
        raise MtError(f"{path}: no such file")
    lines = read_lines(file)
    if not lines:
        raise MtError(f"{path} is empty")
    return lines


def _read_stdin() -> list[str]:
    from mt.data.lines import split_lines

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
    _add_adapt_option(parser)
    args = parser.parse_intermixed_args(argv)  # sentences may come before or after the flags
    if args.align and args.output_format != "jsonl":
        parser.error("--align goes with --output-format jsonl")

    def body() -> None:
        translator = _load(args)
        if args.n_best > translator.decoding.beam_size:
            raise MtError(f"--n-best {args.n_best} exceeds the beam size {translator.decoding.beam_size} (raise --beam-size)")
        lines = args.sentences if args.sentences else _read_stdin()
        results = translator.translate_lines(lines, n_best=args.n_best, markup=args.markup, align=args.align)
        errors = [line.error for line in results if line.error is not None]
        for error in errors:
            print(f"mt-translate: error: {error}", file=sys.stderr)
        if args.output_format == "jsonl":
            for index, line in enumerate(results):
                sys.stdout.write(line.json_line(index, alignment=args.align) + "\n")
        elif args.n_best == 1:
            for line in results:
                sys.stdout.write((line.texts[0] if line.texts else "") + "\n")
        else:  # the Moses n-best layout, without its feature-score field
            for index, line in enumerate(results):
                for h, text in zip(line.hypotheses, line.texts):
                    sys.stdout.write(f"{index} ||| {text} ||| {h.score:.6f}\n")
                if not line.hypotheses and line.marked and line.marked[0]:
                    sys.stdout.write(f"{index} ||| {line.marked[0]} ||| 0.000000\n")  # markup only: nothing to translate
        sys.stdout.flush()
        if errors:
            sys.exit(1)  # the lines named on stderr were not translated

    _run("mt-translate", body)


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
        from mt.inference.evaluate import score

        translator = _load(args)
        if args.src:
            sources, references = _read_text(args.src), _read_text(args.ref)
            if len(sources) != len(references):
                raise MtError(f"{args.src} has {len(sources)} lines but {args.ref} has {len(references)}")
        else:
            mirror = args.mirror or os.environ.get("MT_DATA_MIRROR") or None
            split = load_split(
                args.split or "test_2016_flickr", translator.src_lang, translator.tgt_lang, args.data_dir, mirror
            )
            sources, references = split["src"], split["tgt"]
        hypotheses = translator.translate(sources, progress=True)
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


def _gold(translator, prefix: str, flag: str):
    try:
        return translator.load_gold(prefix)
    except MtError as error:
        raise MtError(f"{flag} {error}") from None


def _choose_layer(translator, layer, dev_gold, args: argparse.Namespace, name: str) -> int | None:
    """``--layer``: an index, the checkpoint's default (None), or ``auto`` = lowest AER on ``--dev-gold``."""
    if layer != "auto":
        return layer
    if dev_gold is None:
        print(f"mt-align: --layer auto without --dev-gold: using the default layer {translator.default_layer}", file=sys.stderr)
        return translator.default_layer
    best, aers = translator.select_layer(dev_gold, args.method, args.heads, args.threshold)
    listing = ", ".join(f"{layer}: {100 * aer:.1f}" for layer, aer in enumerate(aers))
    print(f"mt-align: {name}--layer auto → {best} (dev AER % by layer: {listing})", file=sys.stderr)
    return best


def _align_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """mt-align's arguments, checked for the combinations that cannot go together."""
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
    _add_adapt_option(parser)
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
    return args


def align_main(argv: Sequence[str] | None = None) -> None:
    """``mt-align CHECKPOINT --src FILE [--tgt FILE] --out DIR [--plot] [--html [FILE]]``, ``mt-align CHECKPOINT
    SRC [TGT]`` or ``mt-align CHECKPOINT --gold PREFIX [--out DIR]``; see ``mt-align --help``."""
    args = _align_arguments(argv)

    def body() -> None:
        import mt
        from mt.alignment.aer import format_pharaoh, format_scores, score_alignments
        from mt.alignment.files import format_table, write_alignments

        translator = _load(args)
        reverse = mt.load(args.reverse_checkpoint, args.device) if args.reverse_checkpoint else None
        if reverse is not None:
            translator.check_reverse(reverse)
            _set_adapt(reverse, args)
        args.method = args.method or translator.default_method
        gold = _gold(translator, args.gold, "--gold") if args.gold else None
        dev_gold = _gold(translator, args.dev_gold, "--dev-gold") if args.dev_gold else None
        if args.pair:
            sources, targets = [args.pair[0]], args.pair[1:] or None
        elif gold is not None:
            sources, targets = gold.src, gold.tgt
        else:
            sources = _read_text(args.src)
            targets = _read_text(args.tgt) if args.tgt else None
            if targets is not None and len(targets) != len(sources):
                raise MtError(f"{args.src} has {len(sources)} lines but {args.tgt} has {len(targets)}")
        layer = _choose_layer(translator, args.layer, dev_gold, args, "")
        reverse_layer = None
        if reverse is not None:
            reverse_dev = dev_gold.reversed() if dev_gold is not None else None
            reverse_layer = _choose_layer(reverse, args.layer, reverse_dev, args, "reverse model: ")
        alignments = translator.align(
            sources, targets, args.method, layer, args.heads, args.threshold, reverse, reverse_layer, args.symmetrize,
            progress=not args.pair,
        )  # fmt: skip
        if args.out:
            write_alignments(alignments, args.out, plot=args.plot)
            print(f"wrote {len(alignments)} alignments to {args.out}", file=sys.stderr)
        if args.html is not None:
            path = Path(args.html or Path(args.out) / "alignments.html")
            note = f"links symmetrized ({args.symmetrize}) with {Path(args.reverse_checkpoint).name}" if reverse else ""
            title = f"mt-align {Path(args.checkpoint).name}"
            size = translator.write_view(path, alignments, args.method, layer, args.heads, gold, title, note)
            print(f"wrote the alignment view ({size / 1024:.0f} KiB) to {path}", file=sys.stderr)
        if args.pair:
            print(format_table(alignments[0]))
            print(format_pharaoh(alignments[0].links))
        if gold is not None:
            print(format_scores(score_alignments([a.links for a in alignments], gold.sure, gold.possible)))

    _run("mt-align", body)


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
