"""The front door for Python: a loaded checkpoint that translates and aligns.

:func:`mt.load` returns a :class:`Translator`; the console scripts ``mt-translate``, ``mt-evaluate``
and ``mt-align`` are thin wrappers over it. The examples below run as doctests on ``CHECKPOINT``,
the tiny model committed as ``tests/fixtures/checkpoint-2dea679.pt`` (d_model 40, 600 updates:
poor translations, but deterministic on the CPU in fp32):

>>> import mt
>>> translator = mt.load(CHECKPOINT)
>>> (translator.src_lang, translator.tgt_lang, translator.decoding.beam_size)
('de', 'en', 2)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mt.alignment.adapt import Teacher, eflomal_installed
from mt.alignment.aer import GoldAlignment, format_pharaoh, load_gold
from mt.alignment.align import (
    PairAlignment,
    align as align_pairs,
    default_layer,
    default_method,
    select_layer,
    symmetrize_alignments,
)
from mt.alignment.html_view import view_data, write_html
from mt.config import DecodingConfig, check_device
from mt.data.tokenizer import Tokenizer
from mt.device import for_inference, resolve_device
from mt.errors import ConfigError, DataError, MtError
from mt.inference.evaluate import Translation, translate_nbest
from mt.inference.markup import MODES, Markup, MarkupError, MarkupTransfer, parse
from mt.model.checkpoint import load_for_inference
from mt.model.transformer import Transformer


@dataclass
class LineTranslation:
    """What :meth:`Translator.translate_lines` gives for one input line.

    Attributes:
        source: the text the model translated: the line, or with markup its text without the tags.
        hypotheses: the best translations of ``source``, best first, as plain text with their
            pieces, scores and log-probs (:class:`~mt.inference.evaluate.Translation`); empty
            for a blank line and for a line whose markup does not parse.
        source_markup: the line as given, with its tags (markup only, else None).
        marked: each hypothesis with the line's tags put back (markup only, else None); a line
            without hypotheses has one entry: its tags alone, or "" where it did not parse.
        alignment: the word alignment of the best hypothesis, where one was computed (``align=True``,
            or markup that needed it); None otherwise.
        error: why the line's markup does not parse, as ``line N: …``; None otherwise.
    """

    source: str
    hypotheses: list[Translation]
    source_markup: str | None = None
    marked: list[str] | None = None
    alignment: PairAlignment | None = None
    error: str | None = None

    @property
    def texts(self) -> list[str]:
        """The output texts: ``marked`` with markup, else each hypothesis's text."""
        return self.marked if self.marked is not None else [h.text for h in self.hypotheses]

    def record(self, index: int, alignment: bool = False) -> dict:
        """The line as one JSON object of ``mt-translate --output-format jsonl``: ``index``, ``source``,
        ``hypotheses`` (each a :class:`~mt.inference.evaluate.Translation` as a dict); with
        ``alignment``, the best hypothesis's ``alignment`` (``src_words``, ``tgt_words``, ``links``,
        ``pharaoh``, ``word_matrix`` rounded to 6 decimals); with markup, ``source_markup``,
        ``translation_markup``, each hypothesis's ``markup`` and the line's ``error`` if any.
        """
        record = {"index": index, "source": self.source, "hypotheses": [dataclasses.asdict(h) for h in self.hypotheses]}
        if alignment and self.alignment is not None:
            record["hypotheses"][0]["alignment"] = {
                "src_words": self.alignment.src_words,
                "tgt_words": self.alignment.tgt_words,
                "links": [list(link) for link in self.alignment.links],
                "pharaoh": format_pharaoh(self.alignment.links),
                "word_matrix": np.round(self.alignment.word_matrix.astype(np.float64), 6).tolist(),
            }
        if self.marked is not None:
            record["source_markup"] = self.source_markup
            record["translation_markup"] = self.marked[0] if self.marked else ""
            for hypothesis, text in zip(record["hypotheses"], self.marked):
                hypothesis["markup"] = text
            if self.error is not None:
                record["error"] = self.error
        return record

    def json_line(self, index: int, alignment: bool = False) -> str:
        """:meth:`record` as one line of JSON: readable UTF-8, but the characters that
        ``str.splitlines`` also breaks on (U+0085, U+2028, U+2029; json escapes the control
        characters) escaped."""
        text = json.dumps(self.record(index, alignment), ensure_ascii=False)
        return text.replace("\x85", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class Translator:
    """A model, its tokenizer and its decoding defaults, ready to translate and align.

    Attributes:
        model: the Transformer in eval mode, on ``device``, cast for ``precision``.
        tokenizer: the checkpoint's sentencepiece models.
        info: the checkpoint's metadata (:func:`mt.model.checkpoint.load_for_inference`: ``path``,
            ``src_lang``, ``tgt_lang``, ``step``, ``decoding``, …).
        decoding: the defaults of every search (beam size, length penalty, length limits,
            sentences per batch): the checkpoint's, replaceable
            (``translator.decoding = translator.with_defaults(batch_size=8)``).
        device: where the model runs. precision: ``fp32``, ``bf16`` or ``int8``.
        teacher: for an aligner with a lexicon, eflomal's priors from its training links
            (:class:`mt.alignment.adapt.Teacher`), else None.
        adapt: whether the aligner adapts its lexicon to the pairs it aligns
            (:mod:`mt.alignment.adapt`): None (default) = where there is a teacher and eflomal
            is installed; True = always (an error where it cannot); False = never.
    """

    def __init__(
        self, model: Transformer, tokenizer: Tokenizer, info: dict, device: torch.device, precision: str = "fp32"
    ) -> None:
        self.model, self.tokenizer, self.info = model, tokenizer, info
        self.decoding: DecodingConfig = info["decoding"]
        self.device, self.precision = device, precision
        self.teacher = Teacher.from_state(info.get("alignment_teacher"))
        self.adapt: bool | None = None

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", precision: str = "fp32") -> Translator:
        """Load a checkpoint file, or a run dir's ``checkpoints/best.pt`` (:func:`mt.load` calls
        this after capping oneDNN's primitive cache).

        Args:
            device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available).
            precision: ``fp32``; ``bf16`` (weights and matmuls in bfloat16); ``int8`` (dynamic
                quantization of the linear layers, CPU only) (:func:`mt.device.for_inference`).

        Raises:
            CheckpointError: nothing loadable at ``path``.
            ConfigError: an unknown device or precision, CUDA asked for where there is none, int8 on CUDA.

        Examples:
            >>> translator = Translator.load(CHECKPOINT, precision="int8")
            >>> translator.precision, translator.device, translator.info["step"]
            ('int8', device(type='cpu'), 600)
        """
        check_device(device, "device")
        resolved = resolve_device(device)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device}: CUDA is not available on this machine")
        model, tokenizer, info = load_for_inference(path, resolved)
        try:
            model = for_inference(model, precision)
        except ValueError as error:  # an unknown precision, int8 on CUDA
            raise ConfigError(f"precision {precision}: {error}") from None
        return cls(model, tokenizer, info, resolved, precision)

    @property
    def src_lang(self) -> str:
        """The language the model translates from, as a code (``de``)."""
        return self.info["src_lang"]

    @property
    def tgt_lang(self) -> str:
        """The language the model translates into, as a code (``en``)."""
        return self.info["tgt_lang"]

    @property
    def default_method(self) -> str:
        """The alignment method of this checkpoint (:func:`mt.alignment.align.default_method`)."""
        return default_method(self.info)

    @property
    def default_layer(self) -> int:
        """The decoder layer the ``attention`` and ``shift`` methods read by default (the penultimate)."""
        return default_layer(len(self.model.decoder_layers))

    def adapting(self) -> Teacher | None:
        """The teacher the aligner adapts with (see ``adapt``), or None.

        Raises:
            ConfigError: ``adapt`` is True, and the checkpoint has no teacher or eflomal is not installed.

        Examples:
            >>> translator = mt.load(CHECKPOINT)  # no aligner: nothing to adapt
            >>> translator.teacher is None and translator.adapting() is None
            True
            >>> translator.adapt = True
            >>> translator.adapting()
            Traceback (most recent call last):
            mt.errors.ConfigError: --adapt: ...checkpoint-2dea679.pt has no aligner with eflomal priors (train one: ...)
        """
        if self.adapt is False:
            return None
        if self.teacher is None:
            if self.adapt:
                raise ConfigError(
                    f"--adapt: {self.info['path']} has no aligner with eflomal priors "
                    "(train one: mt-train experiment=align train.init_from=RUN_DIR)"
                )
            return None
        if not eflomal_installed():
            if self.adapt:
                raise ConfigError("--adapt needs eflomal: pip install -e \".[baselines]\"")
            _warn_once("eflomal is not installed: the aligner aligns without adapting to the text (--no-adapt)")
            return None
        return self.teacher

    # ------------------------------------------------------------------------------ translate
    def translate(
        self,
        sentences: Sequence[str],
        beam_size: int | None = None,
        n_best: int = 1,
        length_penalty: float | None = None,
        markup: str | None = None,
        progress: bool = False,
    ) -> list[str] | list[list[Translation]]:
        """Translate each sentence; the output list is aligned with the input.

        Args:
            sentences: one sentence each; a blank one translates to "" without reaching the model.
            beam_size: 1 = greedy search (default: ``decoding.beam_size``).
            n_best: hypotheses per sentence, 1 to ``beam_size``.
            length_penalty: GNMT alpha (Wu et al. 2016, eq. 14) (default: ``decoding.length_penalty``).
            markup: ``"html"`` or ``"xml"``: each sentence is a line of markup, translated without
                its tags, which are then put back on the translation's words through the word
                alignment (:mod:`mt.inference.markup`).
            progress: a tqdm bar over batches.

        Returns: with ``n_best`` 1, one translation per sentence (str); else per sentence its
            ``n_best`` hypotheses, best first (:class:`~mt.inference.evaluate.Translation`:
            ``text``, ``pieces``, ``score``, ``log_prob`` in nats, ``token_log_probs``; with markup
            ``text`` carries the tags), none for a blank sentence or one of tags only.

        Raises:
            ConfigError: ``n_best`` outside 1..``beam_size``, a beam wider than half the target
                vocabulary, an unknown markup mode.
            DataError: a line whose markup does not parse (its 1-based number and why).

        Examples:
            >>> translator = mt.load(CHECKPOINT)
            >>> translator.translate(["Ein Hund läuft im Park."], beam_size=1)
            ['A dog is asing a roooo']
            >>> [[round(h.score, 2) for h in hypotheses] for hypotheses in translator.translate(["Ein Hund.", ""], n_best=2)]
            [[-6.23, -6.47], []]
            >>> translator.translate(["Ein <b>Hund</b> läuft."], beam_size=1, markup="html")[0].count("<b>")
            1
        """
        markups, errors = _parse_lines(sentences, markup)
        if errors:
            raise DataError(errors[min(errors)])
        lines = self._translate_parsed(sentences, markups, errors, beam_size, n_best, length_penalty, False, progress)
        if n_best == 1:
            return [line.texts[0] if line.texts else "" for line in lines]
        return [
            [dataclasses.replace(h, text=text) for h, text in zip(line.hypotheses, line.texts)] for line in lines
        ]

    def translate_lines(
        self,
        lines: Sequence[str],
        beam_size: int | None = None,
        n_best: int = 1,
        length_penalty: float | None = None,
        markup: str | None = None,
        align: bool = False,
        progress: bool = False,
    ) -> list[LineTranslation]:
        """:meth:`translate` with everything it knows per line (what ``mt-translate --output-format
        jsonl`` prints): hypotheses with pieces and log-probs, the markup, the alignment.

        Args:
            align: also align each best hypothesis to its source (``default_method``, default layer).
            beam_size, n_best, length_penalty, markup, progress: as in :meth:`translate`.

        Returns: one :class:`LineTranslation` per line. A line whose markup does not parse is not
            an error here: it has no hypotheses, ``marked`` [""] and its ``error``.

        Raises:
            ConfigError: as :meth:`translate`.

        Examples:
            >>> translator = mt.load(CHECKPOINT)
            >>> [line] = translator.translate_lines(["Ein Hund läuft im Park."], beam_size=1, align=True)
            >>> line.hypotheses[0].pieces[:3], line.alignment.links[:2]
            (['▁A', '▁dog', '▁is'], [(2, 2), (4, 0)])
        """
        markups, errors = _parse_lines(lines, markup)
        return self._translate_parsed(lines, markups, errors, beam_size, n_best, length_penalty, align, progress)

    def _translate_parsed(
        self, lines, markups: list[Markup | None] | None, errors: dict[int, str], beam_size, n_best: int,
        length_penalty, align: bool, progress: bool,
    ) -> list[LineTranslation]:  # fmt: skip
        decoding = self.with_defaults(beam_size, length_penalty)
        if not 1 <= n_best <= decoding.beam_size:
            raise ConfigError(f"n_best {n_best} exceeds the beam size {decoding.beam_size} (raise beam_size)")
        sentences = list(lines) if markups is None else [m.text if m else "" for m in markups]
        transfer = None
        if markups is not None:  # each batch's hypotheses are aligned as it finishes, reusing its encoder pass
            transfer = MarkupTransfer(
                self.model, self.tokenizer, markups, decoding.batch_size, self.device, self.default_method,
                self.adapting(),
            )  # fmt: skip
        try:
            nbest = translate_nbest(
                self.model, self.tokenizer, sentences, decoding, n_best, self.device, progress, on_batch=transfer
            )
        except ValueError as error:  # a beam wider than half the vocabulary
            raise ConfigError(str(error)) from None
        marked, alignments = transfer.results() if transfer is not None else (None, {})
        if align:  # every line, or those the markup did not align (no tags)
            todo = [[] if index in alignments else hypotheses for index, hypotheses in enumerate(nbest)]
            alignments |= self._best_alignments(sentences, todo, decoding.batch_size)
        return [
            LineTranslation(
                source=sentence,
                hypotheses=hypotheses,
                source_markup=None if markups is None else line,
                marked=None if marked is None else marked[index],
                alignment=alignments.get(index),
                error=errors.get(index),
            )
            for index, (line, sentence, hypotheses) in enumerate(zip(lines, sentences, nbest))
        ]

    def _best_alignments(self, sentences, nbest: list[list[Translation]], batch_size: int) -> dict[int, PairAlignment]:
        """Line index → alignment of its best hypothesis, for the lines that have one."""
        indices = [i for i, hypotheses in enumerate(nbest) if hypotheses]
        alignments = align_pairs(
            self.model, self.tokenizer, [sentences[i] for i in indices], [nbest[i][0].text for i in indices],
            method=self.default_method, batch_size=batch_size, device=self.device, keep_attention=False,
            teacher=self.adapting(),
        )  # fmt: skip
        return dict(zip(indices, alignments))

    def with_defaults(
        self, beam_size: int | None = None, length_penalty: float | None = None, batch_size: int | None = None
    ) -> DecodingConfig:
        """``decoding`` with the given values in place of its own (None keeps its own).

        Examples:
            >>> mt.load(CHECKPOINT).with_defaults(beam_size=5).beam_size
            5
        """
        given = {"beam_size": beam_size, "length_penalty": length_penalty, "batch_size": batch_size}
        return dataclasses.replace(self.decoding, **{k: v for k, v in given.items() if v is not None})

    # ---------------------------------------------------------------------------------- align
    def align(
        self,
        sources: Sequence[str],
        targets: Sequence[str] | None = None,
        method: str | None = None,
        layer: int | None = None,
        heads: Sequence[int] | None = None,
        threshold: float | None = None,
        reverse: Translator | None = None,
        reverse_layer: int | None = None,
        symmetrize: str = "grow-diag-final-and",
        progress: bool = False,
    ) -> list[PairAlignment]:
        """Word-align each (source, target) pair from the model's cross-attention (or its aligner).

        Args:
            sources, targets: one text per pair, words separated by whitespace; without
                ``targets``, each source is aligned to its own translation (``decoding``'s search).
            method: ``attention``, ``shift``, ``supervised`` or ``aligner``
                (:data:`mt.alignment.align.METHODS`; default: :attr:`default_method`).
            layer: decoder layer, 0-based, negative from the end (default: :attr:`default_layer`).
            heads: heads to average (default: all). threshold: link every source word with
                probability ≥ this (many-to-many) instead of each target word's argmax.
            reverse: a target→source translator: its links of the swapped pairs, read at
                ``reverse_layer``, are symmetrized with these by ``symmetrize``
                (:data:`mt.alignment.symmetrize.HEURISTICS`).

        Returns: one :class:`~mt.alignment.align.PairAlignment` per pair: ``links``, the Pharaoh
            pairs (source word index, target word index), 0-based and sorted; ``word_matrix``,
            (n_tgt_words, n_src_words) float32 whose rows sum to 1 (or 0: no link); the
            piece-level ``attention`` (n_layers, n_heads, tgt_len + 1, src_len + 1) behind it.

        Raises:
            MtError: an unknown method or heuristic, a layer or head out of range, unequal
                numbers of sources and targets, a ``reverse`` that does not translate target→source.

        Examples:
            >>> translator = mt.load(CHECKPOINT)
            >>> [pair] = translator.align(["Ein Hund läuft im Park."], ["A dog runs in the park."])
            >>> pair.links
            [(2, 5), (4, 0), (4, 1), (4, 2), (4, 3), (4, 4)]
            >>> pair.word_matrix.shape  # (tgt words, src words)
            (6, 5)
        """
        method = method or self.default_method
        if reverse is not None:
            self.check_reverse(reverse)
        if targets is None:
            targets = self.translate(sources, progress=progress)
        options = {
            "method": method, "heads": heads, "threshold": threshold, "batch_size": self.decoding.batch_size,
            "device": self.device, "progress": progress,
        }  # fmt: skip
        try:
            teacher, reverse_teacher = self.adapting(), reverse.adapting() if reverse is not None else None
            if reverse is not None:  # both directions' links get symmetrized: Teacher.for_symmetrizing
                teacher = teacher and teacher.for_symmetrizing()
                reverse_teacher = reverse_teacher and reverse_teacher.for_symmetrizing()
            alignments = align_pairs(self.model, self.tokenizer, sources, targets, layer=layer, teacher=teacher, **options)
            if reverse is not None:
                backward = align_pairs(
                    reverse.model, reverse.tokenizer, targets, sources, layer=reverse_layer, teacher=reverse_teacher,
                    **options,
                )  # fmt: skip
                alignments = symmetrize_alignments(alignments, backward, symmetrize)
        except ValueError as error:
            raise MtError(str(error)) from None
        return alignments

    def check_reverse(self, reverse: Translator) -> None:
        """Raises MtError unless ``reverse`` translates this translator's target language into its source language.

        Examples:
            >>> translator = mt.load(CHECKPOINT)
            >>> translator.check_reverse(translator)
            Traceback (most recent call last):
            mt.errors.MtError: the reverse model ...checkpoint-2dea679.pt translates de→en, not en→de
        """
        if (reverse.src_lang, reverse.tgt_lang) != (self.tgt_lang, self.src_lang):
            raise MtError(
                f"the reverse model {reverse.info['path']} translates {reverse.src_lang}→{reverse.tgt_lang}, "
                f"not {self.tgt_lang}→{self.src_lang}"
            )

    def load_gold(self, prefix: str | Path) -> GoldAlignment:
        """The gold alignments ``PREFIX.src-tgt`` + ``PREFIX.talp``, source side in this model's source language.

        Raises:
            DataError: files missing or malformed (:func:`mt.alignment.aer.load_gold`), or a
                gold set of another language pair.

        Examples:
            >>> translator = mt.load(CHECKPOINT)
            >>> translator.load_gold("missing")
            Traceback (most recent call last):
            mt.errors.DataError: missing.src-tgt: cannot tell the languages from the name 'missing'; name the files like encs.src-tgt
        """
        try:
            return load_gold(prefix).oriented(self.src_lang, self.tgt_lang)
        except ValueError as error:
            raise DataError(f"{prefix}: {error} (the checkpoint translates {self.src_lang}→{self.tgt_lang})") from None

    def select_layer(
        self, gold: GoldAlignment, method: str | None = None, heads: Sequence[int] | None = None,
        threshold: float | None = None,
    ) -> tuple[int, list[float]]:  # fmt: skip
        """The decoder layer whose links have the lowest AER on ``gold`` (oriented as this model
        translates, :meth:`load_gold`).

        Returns: (that layer, 0-based; the AER of each layer, rates in [0, 1]).

        Raises:
            MtError: an unknown method, a head out of range.

        Examples:
            >>> from mt.alignment.aer import GoldAlignment
            >>> gold = GoldAlignment("de", "en", ["Ein Hund"], ["A dog"], [{(0, 0), (1, 1)}], [{(0, 0), (1, 1)}])
            >>> best, aers = mt.load(CHECKPOINT).select_layer(gold)
            >>> best in (0, 1), len(aers)
            (True, 2)
        """
        try:
            return select_layer(
                self.model, self.tokenizer, gold, method or self.default_method, heads, threshold,
                self.decoding.batch_size, self.device,
            )  # fmt: skip
        except ValueError as error:
            raise MtError(str(error)) from None

    def write_view(
        self, path: str | Path, alignments: Sequence[PairAlignment], method: str | None = None, layer: int | None = None,
        heads: Sequence[int] | None = None, gold: GoldAlignment | None = None, title: str = "mt", note: str = "",
    ) -> int:  # fmt: skip
        """Write the interactive alignment view of ``alignments`` (:mod:`mt.alignment.html_view`) to ``path``.

        Args:
            alignments: from :meth:`align` (which keeps their attention and segmentation).
            method, layer, heads: those :meth:`align` was given: the view opens where they read.
            gold: the gold set the pairs come from (same order), or None.
            title, note: the page's title is ``TITLE: method M, layer L, NOTE`` (no layer for
                the aligner method, no note if empty).

        Returns: the size of the file written, in bytes.

        Raises:
            MtError: alignments without attention, a layer out of range, a gold set of other sentences.

        Examples:
            >>> import tempfile
            >>> translator = mt.load(CHECKPOINT)
            >>> alignments = translator.align(["Ein Hund läuft."], ["A dog runs."])
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     translator.write_view(f"{folder}/view.html", alignments) > 0
            True
        """
        method = method or self.default_method
        if method == "supervised":  # opened at the heads guided alignment trained
            layer = self.model.cfg.alignment.layer if layer is None else layer
            heads = list(range(self.model.cfg.alignment.heads)) if heads is None else heads
        layer = self.default_layer if layer is None else layer % len(self.model.decoder_layers)
        title += f": method {method}" + ("" if method == "aligner" else f", layer {layer}") + (f", {note}" if note else "")
        try:
            return write_html(path, view_data(alignments, method, layer, heads, gold, title))
        except ValueError as error:
            raise MtError(str(error)) from None


def _parse_lines(lines: Sequence[str], mode: str | None) -> tuple[list[Markup | None] | None, dict[int, str]]:
    """Each line's :class:`~mt.inference.markup.Markup` (None where it does not parse) and line
    index → ``line N: why``; (None, {}) without ``mode``.

    Raises:
        ConfigError: an unknown mode.
    """
    if mode is None:
        return None, {}
    if mode not in MODES:
        raise ConfigError(f"markup {mode!r}: allowed: {', '.join(MODES)}")
    markups: list[Markup | None] = []
    errors: dict[int, str] = {}
    for index, line in enumerate(lines):
        try:
            markups.append(parse(line, mode))
        except MarkupError as error:
            errors[index] = f"line {index + 1}: {error}"
            markups.append(None)
    return markups, errors


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logging.getLogger(__name__).warning(message)
