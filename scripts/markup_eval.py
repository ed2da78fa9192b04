"""How well ``mt-translate --markup`` carries tags, measured on a gold-aligned set.

Each source sentence of the gold set gets tags around random word spans (a fixed seed; one
pattern per sentence in turn: a single span, two nested spans, two adjacent spans, a void element
with a span, a one-word span, a span at the start, a span at the end). The reference of a span is
the set of target words the gold alignment links to its words (Sure links; the Sure+Possible
variant too). The tags are then transferred onto the reference translation
(:func:`mt.inference.markup.transfer`) with the links of

- ``gold``: the gold alignment itself (an oracle: what the placement algorithm alone loses);
- ``checkpoint``: the checkpoint's best method (:func:`mt.alignment.align.default_method`: its aligner
  where it has one), teacher-forced on the reference pairs; symmetrized with
  ``--reverse-checkpoint`` (grow-diag-final-and);
- ``eflomal``: eflomal (Östling & Tiedemann 2016) on the gold set's text (``--multi30k``: with
  the Multi30k train bitext in front), grow-diag-final-and;
- ``diagonal``: target word j ↔ source word round(j·n/m), no model;

and each span's output words (the output parsed again) are scored against its reference:
exact match, and token precision, recall and F1 summed over spans. Every output is checked to
hold every tag exactly once, paired and nested (:func:`mt.inference.markup.markup_problems`) with the
reference's words as its text. Last, end to end: the model translates the tagged sources and
``--markup``'s own path puts the tags on its translations (no reference there: well-formedness
and tag counts), also on a hostile set (:data:`HOSTILE`), with the time each stage took.

    python scripts/markup_eval.py ../shared/alignments/czenali/encs outputs/czenali-en-cs [--limit 500]

Prints Markdown tables, then one JSON object of every number.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import random
import sys
import time
from collections import Counter

from mt.alignment.adapt import LINK_CHOICES
from mt.alignment.aer import load_gold
from mt.inference.markup import MAX_GAP, align_and_transfer, markup_problems, parse, transfer

KINDS = ("single", "nested", "adjacent", "void", "one word", "start", "end")
START_TAGS = ('<b id="{id}">', '<i id="{id}">', '<a href="/p?a=1&amp;b=2" id="{id}">', "<span class='x' id=\"{id}\">")
VOIDS = ("<br/>", '<img src="a.png" alt=\'"&gt;\'/>')
HOSTILE = [  # lines every --markup html run must carry whole; the tests hold the same list
    "<b></b>",
    "<b></b> <i> </i> Ein Hund <u></u>.",
    "Ein Hund<b>.</b> <i>,</i> <em>!?</em>",
    "".join(f'<span class="l{k}">' for k in range(20)) + "Ein Hund rennt" + "</span>" * 20 + ".",
    " ".join(f'<a id="t{k}">w{k}</a>' for k in range(500)),
    '<a href="/x?a=1&amp;b=2" title=\'say "hi" > there\' data-x="a>b">Ein Hund</a> rennt.',
    "Ein <![CDATA[ x < y ]]> Hund <!-- ein <b>Kommentar</b> --> rennt <?php echo 1; ?>.",
    "Ein <script>if (a < b) { x = '</b>'; }</script>Hund <style>p > b { color: red }</style>rennt.",
    "Zwei Männer <b>spielen Fußball</b> im <i>Park</i> — „schön“ &amp; ü &eacute;.",
    "<p>Ein Hund <br>rennt<img src='x.png'> im Park</p><hr/>",
    "Ein <b>Hu<i>n</i>d</b> ren<u>nt</u> schnell.",
]


def tag_sources(sources: list[str], seed: int) -> tuple[list[str], list[list[dict]]]:
    """Tagged versions of ``sources`` and, per sentence, its spans ``{"id", "kind", "words": [i, …]}``.

    Tags sit at word boundaries (opening after the space, closing before it) and the words are
    escaped, so the text without the tags is the source again.
    """
    rng = random.Random(seed)
    tagged, spans = [], []
    for k, source in enumerate(sources):
        words = source.split()
        n = len(words)
        kind = KINDS[k % len(KINDS)] if n >= 3 else "one word"

        def span(length: int, start: int | None = None) -> tuple[int, int]:
            length = max(1, min(length, n))
            start = rng.randint(0, n - length) if start is None else start
            return start, start + length - 1

        chosen: list[tuple[str, tuple[int, int]]] = []
        voids: list[int] = []
        if kind == "single":
            chosen = [("single", span(rng.randint(1, 4)))]
        elif kind == "nested":
            outer = span(rng.randint(2, 6))
            length = rng.randint(1, outer[1] - outer[0])
            start = rng.randint(outer[0], outer[1] - length + 1)
            chosen = [("nested outer", outer), ("nested inner", (start, start + length - 1))]
        elif kind == "adjacent":
            first = span(rng.randint(1, min(3, n - 1)), None)
            if first[1] == n - 1:
                first = (first[0] - 1, first[1] - 1) if first[0] > 0 else first
            second_length = rng.randint(1, min(3, n - 1 - first[1]))
            chosen = [("adjacent", first), ("adjacent", (first[1] + 1, first[1] + second_length))]
        elif kind == "void":
            chosen = [("single", span(rng.randint(1, 4)))]
            voids = sorted(rng.sample(range(1, n), min(2, n - 1)))
        elif kind == "one word":
            chosen = [("one word", span(1))]
        elif kind == "start":
            chosen = [("start", span(rng.randint(1, 4), 0))]
        else:
            length = min(rng.randint(1, 4), n)
            chosen = [("end", span(length, n - length))]
        opens: dict[int, list[str]] = {}
        closes: dict[int, list[str]] = {}
        sentence_spans = []
        for m, (name, (first, last)) in enumerate(chosen):  # outer spans come first, so they open first
            span_id = f"s{k}-{m}"
            opens.setdefault(first, []).append(rng.choice(START_TAGS).format(id=span_id))
            closes.setdefault(last, []).insert(0, "</" + opens[first][-1][1:].split()[0].rstrip(">") + ">")
            words_covered = list(range(first, last + 1))
            sentence_spans.append({"id": span_id, "kind": name, "start_tag": opens[first][-1], "words": words_covered})
        pieces = []
        for i, word in enumerate(words):
            void = "".join(rng.choice(VOIDS) for _ in range(voids.count(i)))
            text = html.escape(word, quote=False)  # the text stays the source's: "&amp;" in the corpus stays "&amp;"
            pieces.append(void + "".join(opens.get(i, [])) + text + "".join(closes.get(i, [])))
        tagged.append(" ".join(pieces))
        spans.append(sentence_spans)
    return tagged, spans


def diagonal(n_src: int, n_tgt: int) -> set[tuple[int, int]]:
    """Target word j ↔ source word round(j·n_src/n_tgt), as scripts/aer_table.py's floor."""
    return {(min(n_src - 1, round(j * n_src / n_tgt)), j) for j in range(n_tgt)} if n_src else set()


def eflomal_links(gold, multi30k: bool, data_dir: str) -> list[set[tuple[int, int]]]:
    """grow-diag-final-and links of eflomal on the whole gold set's text (and Multi30k's)."""
    from mt.alignment.targets import run_eflomal
    from mt.alignment.symmetrize import symmetrize

    src, tgt = list(gold.src), list(gold.tgt)
    extra = 0
    if multi30k:
        from mt.data.corpora import load_split

        split = load_split("train", gold.src_lang, gold.tgt_lang, data_dir, os.environ.get("MT_DATA_MIRROR"))
        src, tgt, extra = [*split["src"], *src], [*split["tgt"], *tgt], len(split)
    forward, reverse = run_eflomal([s.split() for s in src], [t.split() for t in tgt])
    return [symmetrize(f, r, "grow-diag-final-and") for f, r in zip(forward[extra:], reverse[extra:])]


def score(tagged, spans, targets, links, references: dict[str, list], max_gap: int) -> dict:
    """Transfer every line's tags onto its target with ``links`` and score the spans against each
    reference (name → per line, the (src_word, tgt_word) links that define a span's words).

    Returns: reference name → {"all": rates, "by_kind": {kind: rates}} (see :func:`_rates`).
    """
    counts = {name: Counter() for name in references}
    by_kind: dict[str, dict[str, Counter]] = {name: {} for name in references}
    for k, (line, line_spans, target, line_links) in enumerate(zip(tagged, spans, targets, links)):
        output = transfer(parse(line, "html"), target, line_links, max_gap)
        reparsed = parse(output, "html")
        complete = not markup_problems(line, output, "html") and reparsed.words == target.split()
        predicted = {e.start: set(range(e.first, e.last + 1)) for e in reparsed.elements}
        for name, reference_links in references.items():
            counts[name]["lines"] += 1
            counts[name]["complete"] += complete
            for span in line_spans:
                words = set(span["words"])
                reference = {j for i, j in reference_links[k] if i in words}
                guess = predicted.get(span["start_tag"], set())  # absent: written empty
                for bucket in (counts[name], by_kind[name].setdefault(span["kind"], Counter())):
                    bucket["spans"] += 1
                    bucket["exact"] += guess == reference
                    bucket["hits"] += len(guess & reference)
                    bucket["predicted"] += len(guess)
                    bucket["reference"] += len(reference)
    return {
        name: {"all": _rates(counts[name]), "by_kind": {kind: _rates(c) for kind, c in sorted(by_kind[name].items())}}
        for name in references
    }


def ceiling(spans, references) -> dict:
    """The best any exactly-once transfer can do: each span's single run of target words with the
    highest F1 against its reference (an element is emitted once, so it covers one run)."""
    counts = Counter()
    for line_spans, reference_links in zip(spans, references):
        for span in line_spans:
            words = set(span["words"])
            reference = sorted({j for i, j in reference_links if i in words})
            guess = set()  # an empty reference: written empty
            if reference:
                runs = [
                    (2 * (y - x + 1) / (reference[y] - reference[x] + 1 + len(reference)), x, y)
                    for x in range(len(reference))
                    for y in range(x, len(reference))
                ]
                _, x, y = max(runs, key=lambda run: run[0])  # the first of equals
                guess = set(range(reference[x], reference[y] + 1))
            counts["spans"] += 1
            counts["exact"] += guess == set(reference)
            counts["hits"] += len(guess & set(reference))
            counts["predicted"] += len(guess)
            counts["reference"] += len(reference)
    return _rates(counts)


def _rates(c: Counter) -> dict:
    precision = c["hits"] / c["predicted"] if c["predicted"] else 0.0
    recall = c["hits"] / c["reference"] if c["reference"] else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rates = {"spans": c["spans"], "exact": c["exact"] / max(c["spans"], 1)}
    rates.update(precision=precision, recall=recall, f1=f1)
    if "lines" in c:
        rates.update(lines=c["lines"], complete=c["complete"] / c["lines"])
    return rates


def end_to_end(model, tokenizer, lines: list[str], decoding, method: str, device: str, max_gap: int, teacher=None) -> dict:
    """``--markup html``'s path on the model's own translations: time of each stage, well-formedness, tag counts."""
    from mt.inference.evaluate import translate

    start = time.perf_counter()
    markups = [parse(line, "html") for line in lines]
    parsed = time.perf_counter()
    translations = translate(model, tokenizer, [m.text for m in markups], decoding, device)
    translated = time.perf_counter()
    outputs, _ = align_and_transfer(
        model, tokenizer, markups, translations, method, decoding.batch_size, device, max_gap, teacher=teacher
    )
    done = time.perf_counter()
    problems = [markup_problems(line, output, "html") for line, output in zip(lines, outputs)]
    tags_in = sum(_count_tags(line) for line in lines)
    tags_out = sum(_count_tags(output) for output in outputs)
    return {
        "lines": len(lines),
        "complete": sum(not p for p in problems) / max(len(lines), 1),
        "tags_in": tags_in,
        "tags_out": tags_out,
        "seconds_translate": translated - parsed,
        "seconds_markup": (parsed - start) + (done - translated),
        "first_problems": [p for p in problems if p][:3],
        "examples": list(zip(lines, outputs)),
    }


def _count_tags(line: str) -> int:
    from mt.inference.markup import tokenize

    return sum(token.kind != "text" for token in tokenize(line, "html"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gold", metavar="GOLD_PREFIX", help="gold set PREFIX (PREFIX.src-tgt, PREFIX.talp)")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or run dir")
    parser.add_argument("--reverse-checkpoint", help="a target→source model: symmetrize the checkpoint's links with it")
    parser.add_argument("--limit", type=int, help="only the first N pairs (eflomal still learns from all)")
    parser.add_argument("--seed", type=int, default=0, help="for the spans (default: 0)")
    parser.add_argument("--max-gap", type=int, default=MAX_GAP, help=f"mt.inference.markup.place's max_gap (default: {MAX_GAP})")
    parser.add_argument("--no-eflomal", action="store_true", help="skip the eflomal row")
    parser.add_argument(
        "--adapt", action=argparse.BooleanOptionalAction, default=True,
        help="an aligner with its teacher's priors adapts to the gold pairs, as mt-align does, and eflomal from those "
        "priors gets a row (default: --adapt)",
    )
    parser.add_argument(
        "--adapt-links", choices=LINK_CHOICES,
        help="with --adapt: mt-align's --adapt-links (default: mt-align's)",
    )
    parser.add_argument("--multi30k", action="store_true", help="eflomal also learns from the Multi30k train bitext")
    parser.add_argument("--data-dir", default="data", help="Multi30k cache folder (default: data)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--end-to-end-limit", type=int, help="translate only the first N tagged sources (default: all)")
    parser.add_argument("--examples", type=int, default=3, help="end-to-end before/after lines to print (default: 3)")
    args = parser.parse_args()

    import dataclasses

    from mt.alignment.adapt import Teacher, teacher_word_links
    from mt.alignment.align import align, default_method, symmetrize_alignments
    from mt.model.checkpoint import load_for_inference

    model, tokenizer, info = load_for_inference(args.checkpoint, args.device)
    method = default_method(info)
    teacher = Teacher.from_state(info["alignment_teacher"]) if args.adapt and method == "aligner" else None
    if teacher is not None and args.adapt_links:
        teacher = dataclasses.replace(teacher, links=args.adapt_links)
    gold = load_gold(args.gold).oriented(info["src_lang"], info["tgt_lang"])
    n = len(gold) if args.limit is None else min(args.limit, len(gold))
    sources, targets = gold.src[:n], gold.tgt[:n]
    sure, possible = gold.sure[:n], [p | s for p, s in zip(gold.possible[:n], gold.sure[:n])]
    tagged, spans = tag_sources(sources, args.seed)
    assert all(parse(t, "html").words == s.split() for t, s in zip(tagged, sources)), "tags changed the text"

    aligners: dict[str, list] = {}
    start = time.perf_counter()
    forward_teacher = teacher.for_symmetrizing() if teacher and args.reverse_checkpoint else teacher
    forward = align(model, tokenizer, sources, targets, method=method, batch_size=args.batch_size, device=args.device,
                    teacher=forward_teacher)  # fmt: skip
    name = f"checkpoint ({method}{f', adapting, links {teacher.links}' if teacher else ''})"
    if args.reverse_checkpoint:
        reverse_model, reverse_tokenizer, reverse_info = load_for_inference(args.reverse_checkpoint, args.device)
        reverse_method = default_method(reverse_info)
        reverse_teacher = (
            Teacher.from_state(reverse_info["alignment_teacher"]) if args.adapt and reverse_method == "aligner" else None
        )
        if reverse_teacher is not None and args.adapt_links:
            reverse_teacher = dataclasses.replace(reverse_teacher, links=args.adapt_links)
        reverse_teacher = reverse_teacher and reverse_teacher.for_symmetrizing()
        reverse = align(reverse_model, reverse_tokenizer, targets, sources, method=reverse_method,
                        batch_size=args.batch_size, device=args.device, teacher=reverse_teacher)  # fmt: skip
        forward = symmetrize_alignments(forward, reverse, "grow-diag-final-and")
        name = f"checkpoint ({method}, both directions, grow-diag-final-and)"
    aligners[name] = [a.links for a in forward]
    print(f"checkpoint links: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if not args.no_eflomal:
        start = time.perf_counter()
        aligners["eflomal (grow-diag-final-and)"] = eflomal_links(gold, args.multi30k, args.data_dir)[:n]
        print(f"eflomal links: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if teacher is not None:  # what the aligner adapts with, alone
        start = time.perf_counter()
        aligners[f"eflomal from the checkpoint's priors ({teacher.symmetrize})"] = teacher_word_links(
            teacher, tokenizer, sources, targets
        )
        print(f"eflomal links from the priors: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    aligners["diagonal"] = [diagonal(len(s.split()), len(t.split())) for s, t in zip(sources, targets)]

    results: dict = {"pairs": n, "seed": args.seed, "max_gap": args.max_gap, "method": method, "rows": {}}
    results["ceiling"] = {"sure": ceiling(spans, sure), "sure+possible": ceiling(spans, possible)}
    references = {"sure": sure, "sure+possible": possible}
    results["rows"]["gold (oracle)"] = {  # the oracle transfers with the links of each reference
        name: score(tagged, spans, targets, links, {name: links}, args.max_gap)[name] for name, links in references.items()
    }
    for name, links in aligners.items():
        results["rows"][name] = score(tagged, spans, targets, links, references, args.max_gap)

    decoding = dataclasses.replace(info["decoding"], batch_size=args.batch_size)
    e2e = tagged[: args.end_to_end_limit]
    results["end_to_end"] = end_to_end(model, tokenizer, e2e, decoding, method, args.device, args.max_gap, teacher)
    results["hostile"] = end_to_end(model, tokenizer, HOSTILE, decoding, method, args.device, args.max_gap, teacher)

    total = sum(len(s) for s in spans)
    gold_name = os.path.basename(args.gold)
    print(f"## Markup transfer on {gold_name}: {n} pairs, {total} spans, seed {args.seed}, max_gap {args.max_gap}\n")
    print("| aligner | exact % (S) | P (S) | R (S) | F1 (S) | exact % (S+P) | F1 (S+P) | complete, well-formed % |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in results["rows"].items():
        s, sp = row["sure"]["all"], row["sure+possible"]["all"]
        print(
            f"| {name} | {100 * s['exact']:.1f} | {100 * s['precision']:.1f} | {100 * s['recall']:.1f} | "
            f"{100 * s['f1']:.1f} | {100 * sp['exact']:.1f} | {100 * sp['f1']:.1f} | "
            f"{100 * min(s['complete'], sp['complete']):.1f} |"
        )
    s, sp = results["ceiling"]["sure"], results["ceiling"]["sure+possible"]
    print(
        f"| best single run per span (the ceiling of any exactly-once transfer) | {100 * s['exact']:.1f} | "
        f"{100 * s['precision']:.1f} | {100 * s['recall']:.1f} | {100 * s['f1']:.1f} | {100 * sp['exact']:.1f} | "
        f"{100 * sp['f1']:.1f} | |"
    )
    kinds = list(results["rows"]["gold (oracle)"]["sure"]["by_kind"])
    print("\nToken F1 % (Sure reference) by span kind:\n")
    print("| aligner | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for name, row in results["rows"].items():
        print(f"| {name} | " + " | ".join(f"{100 * row['sure']['by_kind'][k]['f1']:.1f}" for k in kinds) + " |")
    print("\nEnd to end (the model's own translations; no reference):\n")
    print("| lines | complete, well-formed % | tags in | tags out | translate s | parse + align + transfer s |")
    print("|---|---|---|---|---|---|")
    for name in ("end_to_end", "hostile"):
        e = results[name]
        print(
            f"| {e['lines']} ({'tagged sources' if name == 'end_to_end' else 'hostile set'}) | {100 * e['complete']:.1f} | "
            f"{e['tags_in']} | {e['tags_out']} | {e['seconds_translate']:.1f} | {e['seconds_markup']:.1f} |"
        )
    print()
    for line, output in results["end_to_end"]["examples"][: args.examples]:
        print(f"    {line}\n    → {output}\n")
    for name in ("end_to_end", "hostile"):
        results[name]["examples"] = results[name]["examples"][: args.examples]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
