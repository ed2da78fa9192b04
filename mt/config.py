"""The configuration schema: one dataclass per config node, and the one place defaults live.

Hydra composes ``configs/train.yaml``, starting from these defaults (:func:`register_with_hydra`)
and merging the YAML files, which select groups and hold only differences; :func:`from_hydra`
merges the result into these dataclasses, which catches misspelt keys and wrong types inside
YAML files (Hydra alone does not), then :func:`validate` checks the values that types cannot
express. Everything after start-up receives plain dataclasses, each constructor only its own
slice.

This module and ``cli.py`` are the only ones that know about Hydra and OmegaConf.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from mt.errors import ConfigError, require

if TYPE_CHECKING:  # Hydra and OmegaConf are imported where used: the inference commands never load them (-0.2 s)
    from omegaconf import DictConfig

# The YAML files of the checkout; absolute: Hydra would resolve a relative path as a Python
# package ("pkg://configs").
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
LANGUAGES = ("de", "en", "fr", "cs")  # Multi30k's
DATA_SOURCES = ("multi30k", "hf", "files")
FILE_FORMATS = ("text", "tsv", "jsonl")
POSITIONAL_EMBEDDINGS = ("sinusoidal", "learned", "none")
DROPOUT_MASKS = ("bits", "bernoulli")  # how dropout draws its masks (mt.model.dropout)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TRAINABLE = ("all", "alignment")
ALIGNER_INPUTS = ("shift", "predict", "both")
OPTIMIZER_IMPLS = ("fused", "foreach", "for-loop")
LR_SCHEDULES = ("inverse_sqrt", "cosine", "linear")
# The choices that modules below own, named here so that the schema checks them without
# importing those modules: mt.model.attention keys its kernels by ATTENTION_TYPES (and refuses
# to import when the two differ), mt.alignment.targets reads ALIGNMENT_SOURCES and
# ALIGNMENT_UNITS, mt.alignment.symmetrize runs SYMMETRIZATION_HEURISTICS.
ATTENTION_TYPES = ("full", "local", "topk")
SELF_ATTENTION_ONLY = ("local",)  # a window around the query's own position needs queries and keys from one sequence
ATTENTION_KNOBS = {"local": ("window",), "topk": ("top_k",)}  # a variant's own AttentionConfig fields, integers >= 1
POSITION_TYPES = ("absolute", "rope")
ALIGNMENT_SOURCES = ("none", "eflomal", "file")
ALIGNMENT_UNITS = ("piece", "word")
SYMMETRIZATION_HEURISTICS = ("intersect", "union", "grow-diag-final-and")


@dataclass
class AttentionConfig:
    """One attention site (encoder self-attention, decoder self-attention or cross-attention).

    Attributes:
        type: attention variant (:data:`mt.config.ATTENTION_TYPES`): ``full``, ``local``
            (sliding window, self-attention sites only), ``topk`` (explicit sparse attention);
            the kernels are :mod:`mt.model.attention`'s.
        n_heads: number of query heads; must divide ``model.d_model``.
        n_kv_heads: number of key/value heads (grouped-query attention, Ainslie et al. 2023);
            must divide ``n_heads``; 1 = multi-query attention; None = ``n_heads``.
        dropout: dropout probability on the attention weights.
        bias: whether the q/k/v/out projections have a bias.
        window: ``local`` only: each query sees keys at most ``window`` positions away.
        top_k: ``topk`` only: keys kept per query (the largest scores).
        positions: ``absolute`` (only the model's absolute embeddings) or ``rope`` (rotary
            position embeddings on queries and keys, Su et al. 2021; self-attention sites only).
    """

    type: str = "full"
    n_heads: int = 4
    n_kv_heads: int | None = None
    dropout: float = 0.1
    bias: bool = True
    window: int = 16
    top_k: int = 8
    positions: str = "absolute"


def check_attention_site(cfg: AttentionConfig, key: str, d_model: int, self_attention: bool) -> None:
    """Check one attention site's settings before any model is built.

    Args:
        cfg: the site's config node.
        key: its config key, e.g. ``model.decoder.cross_attention``; messages name ``KEY.FIELD``.
        d_model: the model width (``model.d_model``) the heads split.
        self_attention: queries and keys come from one sequence (encoder or decoder
            self-attention); False for cross-attention.

    Raises:
        ConfigError: one line naming the first offending key, its value and what is allowed,
            e.g. ``config key 'model.decoder.cross_attention.n_heads' = 3: must divide
            model.d_model = 256``.
    """
    allowed_types = [name for name in ATTENTION_TYPES if self_attention or name not in SELF_ATTENTION_ONLY]
    require(cfg.type in ATTENTION_TYPES, f"{key}.type", cfg.type, "allowed: " + ", ".join(ATTENTION_TYPES))
    require(
        cfg.type in allowed_types,
        f"{key}.type",
        cfg.type,
        f"{cfg.type} is for self-attention sites; allowed here: " + ", ".join(allowed_types),
    )
    require(cfg.n_heads > 0, f"{key}.n_heads", cfg.n_heads, "must be > 0")
    require(d_model % cfg.n_heads == 0, f"{key}.n_heads", cfg.n_heads, f"must divide model.d_model = {d_model}")
    if cfg.n_kv_heads is not None:
        require(
            1 <= cfg.n_kv_heads <= cfg.n_heads and cfg.n_heads % cfg.n_kv_heads == 0,
            f"{key}.n_kv_heads",
            cfg.n_kv_heads,
            f"must be between 1 and n_heads = {cfg.n_heads} and divide it",
        )
    require(0 <= cfg.dropout < 1, f"{key}.dropout", cfg.dropout, "must be in [0, 1)")
    for knob in ATTENTION_KNOBS.get(cfg.type, ()):
        require(getattr(cfg, knob) >= 1, f"{key}.{knob}", getattr(cfg, knob), "must be >= 1")
    allowed_positions = POSITION_TYPES if self_attention else ("absolute",)
    require(
        cfg.positions in allowed_positions,
        f"{key}.positions",
        cfg.positions,
        "allowed: " + ", ".join(allowed_positions) + ("" if self_attention else " (rope is for self-attention sites)"),
    )
    if cfg.positions == "rope":  # rotary() rotates pairs of dimensions
        head_dim = d_model // cfg.n_heads
        require(head_dim % 2 == 0, f"{key}.n_heads", cfg.n_heads, f"rope needs an even head_dim, got {head_dim}")


@dataclass
class EncoderConfig:
    n_layers: int = 3
    self_attention: AttentionConfig = field(default_factory=AttentionConfig)


@dataclass
class DecoderConfig:
    n_layers: int = 3
    self_attention: AttentionConfig = field(default_factory=AttentionConfig)
    cross_attention: AttentionConfig = field(default_factory=AttentionConfig)


@dataclass
class AlignmentConfig:
    """Which cross-attention heads guided alignment supervises (Garg et al. 2019), and the ones
    ``mt-align --method supervised`` reads back.

    Attributes:
        layer: the decoder layer, 0-based; negative counts from the top (-2 = penultimate, as
            Garg et al. and fairseq's ``--alignment-layer``).
        heads: how many heads of that layer (the first ones) are supervised; their average is
            the alignment.
        full_context: take the supervised weights from an extra pass of that layer without the
            future mask, so target piece t sees the whole target (Garg et al.'s full context).
    """

    layer: int = -2
    heads: int = 1
    full_context: bool = False


def _check_alignment(alignment: AlignmentConfig, n_layers: int, cross_heads: int) -> None:
    """``model.alignment`` against the decoder's ``n_layers`` layers of ``cross_heads`` cross-attention heads."""
    require(
        -n_layers <= alignment.layer < n_layers,
        "model.alignment.layer",
        alignment.layer,
        f"must name one of the {n_layers} decoder layers (0 … {n_layers - 1}, or -1 … -{n_layers} from the top)",
    )
    require(
        1 <= alignment.heads <= cross_heads,
        "model.alignment.heads",
        alignment.heads,
        f"must be in 1 … model.decoder.cross_attention.n_heads = {cross_heads}",
    )


@dataclass
class AlignerConfig:
    """The aligner: a small module on top of the encoder and decoder that learns word alignment
    from links (``data.alignments``) while the translation model stays as it is
    (:mod:`mt.model.aligner`; trained with ``train.trainable=alignment``, ``experiment=align``).

    Attributes:
        enabled: the model has an aligner (saved in its checkpoints; ``mt-align --method aligner``
            is then the default).
        inputs: which decoder rows describe target piece y_t: ``shift`` (the row whose input is
            y_t, which has seen it: Shift-Att, Chen et al. 2020), ``predict`` (the row that
            predicts y_t, as guided alignment reads) or ``both`` (their sum, each projected).
        n_layers: full-context self-attention layers over the target before the alignment
            attention (each target piece sees the whole target, Garg et al. 2019's full context).
        n_heads: heads of those layers.
        align_heads: heads of the alignment attention; their average is the alignment.
        ffn_dim: inner width of those layers' feed-forward blocks.
        dropout: dropout inside the aligner.
        position_bias: subtract a learnt multiple of |j/n - i/m| (relative distance from the
            diagonal; target piece j of n, source piece i of m) from the alignment scores, as
            fast_align's diagonal prior (Dyer et al. 2013); the EOS column has none.
        null: target pieces without links learn to attend to the source EOS, which stands for
            "aligned to nothing" (the NULL word of the IBM models, Brown et al. 1993); a target
            word then gets no link when its EOS mass exceeds that of its best source word.
        lexicon: add learnt multiples of log c(s, t) and log c(s) to the alignment scores, where
            c counts the teacher's links between source piece s and target piece t over the
            training pairs (NULL links included): the translation table of IBM Model 1 (Brown
            et al. 1993) estimated from the teacher, as eflomal's priors carry one. Counted when
            the stage starts (:class:`mt.model.aligner.Lexicon`) and stored in the checkpoint.
    """

    enabled: bool = False
    inputs: str = "both"
    n_layers: int = 1
    n_heads: int = 4
    align_heads: int = 1
    ffn_dim: int = 1024
    dropout: float = 0.1
    position_bias: bool = True
    null: bool = True
    lexicon: bool = False


def _check_aligner(aligner: AlignerConfig, d_model: int) -> None:
    """``model.aligner``, whose heads split the model width ``d_model``."""
    require(aligner.inputs in ALIGNER_INPUTS, "model.aligner.inputs", aligner.inputs, "allowed: " + ", ".join(ALIGNER_INPUTS))
    require(aligner.n_layers >= 0, "model.aligner.n_layers", aligner.n_layers, "must be >= 0")
    for key in ("n_heads", "align_heads"):
        heads = getattr(aligner, key)
        require(heads > 0 and d_model % heads == 0, f"model.aligner.{key}", heads, f"must divide model.d_model = {d_model}")
    require(aligner.ffn_dim > 0, "model.aligner.ffn_dim", aligner.ffn_dim, "must be > 0")
    require(0 <= aligner.dropout < 1, "model.aligner.dropout", aligner.dropout, "must be in [0, 1)")


@dataclass
class ModelConfig:
    """Transformer dimensions (Vaswani et al. 2017), pre-norm residual blocks.

    Attributes:
        d_model: width of embeddings and residual stream.
        positional_embedding: absolute positions added to the embeddings: ``sinusoidal``
            (Vaswani et al. 2017), ``learned`` or ``none`` (e.g. with rope at every
            self-attention site).
        ffn_dim: inner width of the position-wise feed-forward blocks.
        dropout: dropout on embeddings and sublayer outputs (residual dropout).
        ffn_dropout: dropout on the feed-forward activation (fairseq's activation_dropout);
            off by default: on CPU the random masks cost more than they bring on small models.
        dropout_masks: how every dropout of the model (residual, embedding, attention weights,
            FFN, aligner) draws its masks on the CPU: ``bits`` (16 random bits per element
            from one 64-bit draw, the drop probability rounded to a multiple of 2⁻¹⁶; half the
            cost of a training step's masks) or ``bernoulli`` (``torch.nn.functional.dropout``,
            the masks of runs trained before ``bits``). The same distribution either way; CUDA
            and ``train.compile`` use torch's own (:mod:`mt.model.dropout`). A training
            setting: a run started from a checkpoint may change it.
        activation: ``relu`` or ``gelu``.
        max_positions: longest sequence (in subword tokens, EOS included) the model accepts.
        share_embeddings: one embedding matrix for source and target (needs a joint vocabulary).
        tie_output: output projection shares the target embedding matrix (Press & Wolf 2017).
        alignment: the cross-attention heads guided alignment trains (``train.alignment_weight``).
        aligner: the alignment module on top of the model (``model.aligner.enabled``).
    """

    d_model: int = 256
    ffn_dim: int = 1024
    positional_embedding: str = "sinusoidal"
    dropout: float = 0.1
    ffn_dropout: float = 0.0
    dropout_masks: str = "bits"
    activation: str = "relu"
    max_positions: int = 256
    share_embeddings: bool = True
    tie_output: bool = True
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    aligner: AlignerConfig = field(default_factory=AlignerConfig)


def _check_model(model: ModelConfig) -> None:
    """The ``model`` node: its own values, then each attention site, ``alignment`` and ``aligner``."""
    require(model.d_model > 0, "model.d_model", model.d_model, "must be > 0")
    require(model.ffn_dim > 0, "model.ffn_dim", model.ffn_dim, "must be > 0")
    require(model.activation in ("relu", "gelu"), "model.activation", model.activation, "allowed: relu, gelu")
    require(model.max_positions > 1, "model.max_positions", model.max_positions, "must be > 1")
    require(0 <= model.dropout < 1, "model.dropout", model.dropout, "must be in [0, 1)")
    require(0 <= model.ffn_dropout < 1, "model.ffn_dropout", model.ffn_dropout, "must be in [0, 1)")
    require(model.dropout_masks in DROPOUT_MASKS, "model.dropout_masks", model.dropout_masks, "allowed: " + ", ".join(DROPOUT_MASKS))
    for side, n_layers in (("encoder", model.encoder.n_layers), ("decoder", model.decoder.n_layers)):
        require(n_layers > 0, f"model.{side}.n_layers", n_layers, "must be > 0")
    require(
        model.positional_embedding in POSITIONAL_EMBEDDINGS,
        "model.positional_embedding",
        model.positional_embedding,
        "allowed: " + ", ".join(POSITIONAL_EMBEDDINGS),
    )
    sites = {
        "model.encoder.self_attention": model.encoder.self_attention,
        "model.decoder.self_attention": model.decoder.self_attention,
        "model.decoder.cross_attention": model.decoder.cross_attention,
    }
    for key, site in sites.items():
        check_attention_site(site, key, model.d_model, self_attention=not key.endswith("cross_attention"))
    _check_alignment(model.alignment, model.decoder.n_layers, model.decoder.cross_attention.n_heads)
    _check_aligner(model.aligner, model.d_model)


@dataclass
class DataConfig:
    """Which corpus and which slice of it (read by :func:`mt.data.corpora.load_splits`).

    Attributes:
        source: where the pairs come from: ``multi30k`` (Multi30k task 1), ``hf`` (a Hugging
            Face dataset) or ``files`` (local parallel files); the config groups
            ``data=multi30k|hf|files`` set it.
        name: ``multi30k``: the corpus name, ``multi30k``. ``hf``: the dataset's configuration
            (subset), e.g. ``de-en`` for ``wmt14``; None = its default. Unused by ``files``.
        src_lang, tgt_lang: language codes: two of de/en/fr/cs for ``multi30k``; any codes
            (without whitespace or ``/``) for ``hf`` (keys of the translation dicts) and
            ``files`` (file suffixes ``{split}.{lang}``, JSONL keys).
        data_dir: where corpus files and caches are kept (relative to the working directory).
        mirror: local folder holding the raw ``{split}.{lang}.gz`` files; defaults to the
            ``MT_DATA_MIRROR`` environment variable. Used before any download. ``multi30k`` only.
        train_split, valid_split, test_split: split names of the corpus (``files``: file stems
            relative to ``path``). ``hf``/``files`` names may take a slice, ``train[:1000]``,
            ``train[1000:]``, ``train[:5%]``, to carve valid/test out of a single split.
        max_train_sentences, max_valid_sentences, max_test_sentences: keep only the first N
            lines of a split (0 = all); for smoke runs and quick experiments.
        max_len: training pairs with more subword tokens than this on either side are dropped.
        alignment_gold: path prefix of a gold word-alignment set (``NAME.src-tgt`` +
            ``NAME.talp``, see :mod:`mt.alignment.aer`) for this language pair, either side first; each
            validation then also logs its AER to ``metrics.jsonl``. None = off.
        alignment_gold_train_copies: add the gold set's sentence pairs, text only (never its
            links), this many times to the training data, as unsupervised aligners train on
            the text they align; 0 = not at all.
        path: required by ``hf`` and ``files``. ``hf``: a Hub dataset id (``wmt14``,
            ``Helsinki-NLP/opus_books``), a builder name (``parquet``, ``json``, ``csv``, with
            ``data_files``), a local folder of parquet/json/csv files named after their splits,
            or a ``DatasetDict.save_to_disk`` folder. ``files``: the folder holding the split
            files.
        revision: ``hf``: Hub revision (branch, tag or commit), e.g. ``refs/convert/parquet``
            for a script-based dataset; None = main.
        data_files: ``hf``: ``{split: file or glob}`` passed to ``load_dataset``; None = the
            dataset's own files.
        cache_dir: ``hf``: the Hugging Face datasets cache; None = ``HF_DATASETS_CACHE``.
        trust_remote_code: ``hf``: let ``datasets`` < 4 run a dataset's loading script (newer
            versions run none: use ``revision=refs/convert/parquet``).
        translation_column: ``hf``/``jsonl``: the column of ``{lang: text}`` dicts (used while
            ``src_column`` is None).
        src_column, tgt_column: ``hf``/``jsonl``: two text columns (keys) holding source and
            target instead; both or neither. JSONL without either reads the top-level keys
            ``src_lang``/``tgt_lang`` when ``translation_column`` is absent.
        format: ``files``: ``text`` (``{split}.{src_lang}`` + ``{split}.{tgt_lang}``, one
            sentence per line), ``tsv`` (``{split}.tsv``, ``source<TAB>target`` per line) or
            ``jsonl`` (``{split}.jsonl``, one object per line); each file may be gzipped
            (``.gz`` appended).
        streaming: ``hf``/``files``: read the training split as a stream instead of loading it
            (for corpora bigger than memory): only its token ids are kept.
        tokenizer_sample: with ``streaming``, sentencepiece trains on the first N training pairs.
        alignments: word-alignment targets of each training pair, for guided alignment (Garg
            et al. 2019; :mod:`mt.alignment.targets`): ``none``, ``eflomal`` (align the training
            split with eflomal at start-up, cached in ``data_dir/cache``; extra ``[baselines]``)
            or ``file`` (read ``alignments_path``). Not with ``streaming``. The gold copies
            (``alignment_gold_train_copies``) never get gold links: ``eflomal`` aligns their text
            like any other pair's, ``file`` gives them none.
        alignments_path: ``file``: 0-based Pharaoh ``src_word-tgt_word`` links over whitespace
            words, one line per training pair (blank = none), before ``max_len`` filtering. With
            gold copies the file holds the training split's lines only, or also one blank line
            per copied pair: a links file with links on those lines is refused (a data error
            naming the file and line).
        alignments_symmetrize: ``eflomal``: how the two directions combine, one of
            ``mt.alignment.symmetrize.HEURISTICS`` (``intersect``, ``union``, ``grow-diag-final-and``).
        alignments_unit: ``eflomal``: align sentencepiece pieces directly (``piece``) or
            whitespace words whose links then cover all their pieces (``word``: on CzEnAli as
            good at grow-diag-final-and and faster, see the README).
    """

    source: str = "multi30k"
    name: str | None = "multi30k"
    src_lang: str = "de"
    tgt_lang: str = "en"
    data_dir: str = "data"
    mirror: str | None = None
    train_split: str = "train"
    valid_split: str = "val"
    test_split: str = "test_2016_flickr"
    max_train_sentences: int = 0
    max_valid_sentences: int = 0
    max_test_sentences: int = 0
    max_len: int = 128
    alignment_gold: str | None = None
    alignment_gold_train_copies: int = 0
    path: str | None = None
    revision: str | None = None
    data_files: dict[str, str] | None = None
    cache_dir: str | None = None
    trust_remote_code: bool = False
    translation_column: str = "translation"
    src_column: str | None = None
    tgt_column: str | None = None
    format: str = "text"
    streaming: bool = False
    tokenizer_sample: int = 1_000_000
    alignments: str = "none"
    alignments_path: str | None = None
    alignments_symmetrize: str = "grow-diag-final-and"
    alignments_unit: str = "word"


def _check_data_source(data: DataConfig) -> None:
    """The data keys that depend on ``data.source``."""
    require(data.source in DATA_SOURCES, "data.source", data.source, "allowed: " + ", ".join(DATA_SOURCES))
    languages = (("data.src_lang", data.src_lang), ("data.tgt_lang", data.tgt_lang))
    if data.source == "multi30k":
        require(data.name == "multi30k", "data.name", data.name, "allowed: multi30k")
        for key, lang in languages:
            require(lang in LANGUAGES, key, lang, "allowed: " + ", ".join(LANGUAGES))
        require(not data.streaming, "data.streaming", data.streaming, "only for data.source=hf or files")
    else:
        for key, lang in languages:
            require(bool(re.fullmatch(r"[^\s/]+", lang)), key, lang, "must be a language code (no spaces or '/')")
        require(bool(data.path), "data.path", data.path, f"required for data.source={data.source}")
        require(
            (data.src_column is None) == (data.tgt_column is None),
            "data.src_column" if data.src_column is None else "data.tgt_column",
            data.src_column if data.src_column is None else data.tgt_column,
            "data.src_column and data.tgt_column go together (or neither: the translation column)",
        )
        require(
            data.src_column is None or data.src_column != data.tgt_column,
            "data.tgt_column",
            data.tgt_column,
            "must differ from data.src_column",
        )
        require(bool(data.translation_column), "data.translation_column", data.translation_column, "must not be empty")
    if data.source == "files":
        require(data.format in FILE_FORMATS, "data.format", data.format, "allowed: " + ", ".join(FILE_FORMATS))
        require(
            data.src_column is None or data.format == "jsonl",
            "data.src_column",
            data.src_column,
            f"only for data.format=jsonl (data.format={data.format})",
        )


def _check_alignment_targets(data: DataConfig) -> None:
    """``data.alignments`` and the keys that go with it."""
    require(
        data.alignments in ALIGNMENT_SOURCES, "data.alignments", data.alignments, "allowed: " + ", ".join(ALIGNMENT_SOURCES)
    )
    require(
        data.alignments == "none" or not data.streaming,
        "data.alignments",
        data.alignments,
        "needs a non-streaming corpus (data.streaming=false); set it to none",
    )
    require(
        data.alignments != "file" or bool(data.alignments_path),
        "data.alignments_path",
        data.alignments_path,
        "required for data.alignments=file",
    )
    require(
        data.alignments_symmetrize in SYMMETRIZATION_HEURISTICS,
        "data.alignments_symmetrize",
        data.alignments_symmetrize,
        "allowed: " + ", ".join(SYMMETRIZATION_HEURISTICS),
    )
    require(
        data.alignments_unit in ALIGNMENT_UNITS,
        "data.alignments_unit",
        data.alignments_unit,
        "allowed: " + ", ".join(ALIGNMENT_UNITS),
    )


def _check_data(data: DataConfig, max_positions: int) -> None:
    """The ``data`` node; ``max_positions`` (``model.max_positions``) bounds ``data.max_len``."""
    _check_data_source(data)
    for key in ("train_split", "valid_split", "test_split"):
        require(bool(getattr(data, key)), f"data.{key}", getattr(data, key), "must not be empty")
    for key in ("max_train_sentences", "max_valid_sentences", "max_test_sentences"):
        require(getattr(data, key) >= 0, f"data.{key}", getattr(data, key), "must be >= 0 (0 = all)")
    require(data.tokenizer_sample > 0, "data.tokenizer_sample", data.tokenizer_sample, "must be > 0")
    _check_alignment_targets(data)
    require(data.src_lang != data.tgt_lang, "data.tgt_lang", data.tgt_lang, "must differ from data.src_lang")
    require(data.max_len > 0, "data.max_len", data.max_len, "must be > 0")
    require(
        data.max_len + 1 <= max_positions,
        "data.max_len",
        data.max_len,
        f"must be < model.max_positions = {max_positions} (EOS/BOS take one position)",
    )
    copies = data.alignment_gold_train_copies
    require(copies >= 0, "data.alignment_gold_train_copies", copies, "must be >= 0")
    require(not copies or data.alignment_gold, "data.alignment_gold_train_copies", copies, "needs data.alignment_gold")
    require(
        not (copies and data.streaming),
        "data.alignment_gold_train_copies",
        copies,
        "cannot join a streamed training split (data.streaming=true); set it to 0",
    )


@dataclass
class TokenizerConfig:
    """sentencepiece settings (Kudo & Richardson 2018), trained on the training split only.

    Attributes:
        model_type: ``unigram`` or ``bpe``.
        vocab_size: pieces in the (joint) vocabulary, special tokens included.
        joint: one vocabulary for both languages; ``false`` trains one model per side.
        character_coverage: share of characters covered by the vocabulary.
        input_sentence_size: sentences sentencepiece trains on at most (its own option of that
            name): from a larger training split it draws a uniform sample of this many
            (reservoir sampling, ``shuffle_input_sentence``, a fixed seed); 0 = all. A joint
            model counts the sentences of both sides. 500,000 trains in 11 s and 1 GB on one
            core, where all 2.3M sentences of Multi30k × 40 took 35 s and 3.5 GB (README, Data
            at scale). Multi30k's own 58,000 sentences are all used: its vocabulary is the one
            trained on everything.
        sampling: subword regularization (Kudo 2018): each epoch segments every training
            sentence anew, drawn from the model's segmentations (sentencepiece's
            ``enable_sampling``; BPE-dropout for ``bpe``, Provilkov et al. 2020); validation,
            test and translation keep the single best one. Seeded by ``train.seed`` and the
            epoch, which reproduces a draw within one process only (sentencepiece 0.2.3; under
            ``torch.distributed`` rank 0's draw is broadcast). It needs a loaded corpus without
            piece links: not with ``data.streaming`` or ``data.alignments`` (the links are per
            piece). ``null`` (the default) samples wherever it can (:func:`subword_sampling`),
            ``true`` insists (a config error where it cannot), ``false`` trains on the best
            segmentation only (the recipe before issue 25, ``experiment=recipe_v1``).
        alpha: sentencepiece's ``alpha``: for ``unigram`` the smoothing of the sampled
            distribution (smaller = flatter = more varied); for ``bpe`` the merge-dropout rate.
        nbest_size: sentencepiece's ``nbest_size`` for ``unigram``: sample among the n best
            segmentations, -1 = all of them (forward-filtering backward-sampling). The default,
            64 with alpha 0.1 (Kudo 2018's l=64, α=0.1), changes 95% of Multi30k's English
            training sentences and lengthens them by 12%; -1 with alpha 0.1 nearly doubles them.
            Cost on Multi30k, one thread: 2.5 s per side and epoch at 64, 0.65 s at -1.
    """

    model_type: str = "unigram"
    vocab_size: int = 8000
    joint: bool = True
    character_coverage: float = 1.0
    input_sentence_size: int = 500_000
    sampling: bool | None = None
    alpha: float = 0.1
    nbest_size: int = 64


def _check_tokenizer(tok: TokenizerConfig, data: DataConfig, sampling: bool) -> None:
    """The ``tokenizer`` node; ``data`` says whether sampling can run, ``sampling`` whether it
    will (:func:`subword_sampling`)."""
    require(tok.model_type in ("unigram", "bpe"), "tokenizer.model_type", tok.model_type, "allowed: unigram, bpe")
    require(tok.vocab_size >= 16, "tokenizer.vocab_size", tok.vocab_size, "must be >= 16")
    require(
        tok.input_sentence_size == 0 or tok.input_sentence_size > 100,
        "tokenizer.input_sentence_size",
        tok.input_sentence_size,
        "must be 0 (all sentences) or > 100 (sentencepiece's limit)",
    )
    require(0 < tok.alpha <= 1 or not sampling, "tokenizer.alpha", tok.alpha, "must be in (0, 1]")
    require(tok.nbest_size != 0 and tok.nbest_size >= -1, "tokenizer.nbest_size", tok.nbest_size, "must be -1 (all) or >= 1")
    require(
        not (tok.sampling is True and (data.streaming or data.alignments != "none")),
        "tokenizer.sampling",
        tok.sampling,
        "needs a loaded corpus (data.streaming=false) without piece links (data.alignments=none)",
    )


@dataclass
class TrainConfig:
    """Optimisation and schedule.

    Attributes:
        seed: seeds Python, NumPy and torch, and the batch order.
        device: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; weights and optimizer stay fp32;
            fp16 scales the loss with a ``torch.amp.GradScaler``), or ``auto``: bf16 where the
            device runs it natively (CUDA with bf16 support, or a CPU with AVX-512 BF16/AMX),
            else fp32.
        compile: wrap the model in ``torch.compile`` (dynamic shapes) for training.
        optimizer_impl: PyTorch's AdamW kernel: ``fused``, ``foreach`` or ``for-loop``.
        accum_steps: batches whose gradients are summed before each update (the effective
            batch is ``batch_tokens x accum_steps x world size``).
        batch_tokens: token budget of one batch: sentences x longest side (padded), in tokens.
        max_steps: stop after this many updates (0 = no limit).
        max_epochs: stop after this many passes over the data (0 = no limit).
        max_minutes: stop after this much training wall-clock, in minutes (0 = no limit).
        lr: peak learning rate, reached after ``warmup_steps``; then decays by ``lr_schedule``.
            A resumed run keeps its own: another value is a config error (start a new run from
            its weights with ``init_from`` to change it).
        warmup_steps: linear warm-up length in updates. Resuming: as ``lr``.
        lr_schedule: the decay after the warm-up: ``inverse_sqrt`` (lr·sqrt(warmup/step),
            Vaswani et al. 2017), or ``cosine`` / ``linear`` from ``lr`` to ``min_lr`` at the end
            of the budget (the first of ``max_steps``, ``max_minutes`` and ``max_epochs`` to be
            used up; a time-bounded run anneals by its wall-clock).
        min_lr: the learning rate ``cosine`` and ``linear`` end at. Resuming: as ``lr``.
        betas, weight_decay: AdamW settings (Loshchilov & Hutter 2019).
        label_smoothing: label-smoothing epsilon (Szegedy et al. 2016).
        alignment_weight: λ of the guided-alignment loss (Garg et al. 2019) against the links of
            ``data.alignments``: on the aligner's attention where ``model.aligner.enabled``, else
            on the heads ``model.alignment`` names; 0 = off.
        agreement_weight: λ of the aligner stage's agreement term (0 = off): the squared
            difference between this aligner's piece matrix and the transposed one of the other
            direction's aligner, ``agreement_with`` (Mask-Align, Chen et al. 2021; alignment by
            agreement, Liang et al. 2006; :func:`mt.training.objective.agreement_loss`).
        agreement_with: the other direction's aligner stage (checkpoint or run dir), frozen,
            with the same sentencepiece model(s) the other way round; needed with
            ``agreement_weight`` > 0.
        init_from: start from the weights of this checkpoint (or run dir: its best.pt), with
            its tokenizer, model config, data and decoding settings, and a new optimizer,
            schedule and step count (fine-tuning; OpenNMT-py's ``train_from`` with
            ``reset_optim``). A key given on the command line is applied or refused, never
            ignored (:func:`mt.training.init_from.init_config`): a ``model`` key must agree with
            the checkpoint's, except dropout rates; ``model.aligner`` is this config's when
            ``model.aligner.enabled`` (``experiment=align``), else the checkpoint's, which a
            given ``model.aligner`` key must then agree with (on a model without an aligner it
            is refused); a ``tokenizer`` key must agree with the checkpoint's, except the
            sampling keys ``sampling``, ``alpha`` and ``nbest_size``, and the run's saved config
            records the checkpoint's tokenizer settings. When resuming a run started this way,
            its checkpoint is not read again: model, tokenizer, data and decoding come from the
            checkpoint being resumed, by the same rules.
        trainable: ``all`` parameters learn, or only the aligner's (``alignment``): the
            translation model is then frozen (bit-identical after the run, run under
            ``torch.no_grad``, no cross-entropy computed), validation decodes the validation
            set once (its BLEU cannot change) and every validation's checkpoint is the best.
        clip_norm: gradient-norm clipping threshold (0 = off).
        valid_every: validate every N updates (and at the end of training).
        valid_beam_size: beam size of the validation BLEU decode (1 = greedy).
        patience: stop after this many validations without a better val BLEU (0 = never).
        log_every: refresh the progress bar statistics every N updates.
        num_threads: intra-op CPU threads (0 = torch's default).
        resume: ``auto`` continues the run dir's ``checkpoints/last.pt`` (pass the old
            ``hydra.run.dir``); a path continues that checkpoint; None starts afresh. Restores
            model, optimizer, schedule, RNG states, data position, step, epoch, best score and
            early-stopping counter. The schedule continues as saved, so ``lr``, ``min_lr``,
            ``warmup_steps`` and ``lr_schedule`` must be the run's (another value is a config
            error naming the key); so must a ``tokenizer.*`` key given on the command line, but
            for the sampling keys (the run keeps the sentencepiece models it saved).
        max_nonfinite: stop after this many non-finite losses in a row (each skips its update).
        keep_checkpoints: keep the last N validation checkpoints as ``checkpoints/step-S.pt``
            (0 = only best.pt and last.pt).
        average_last: after training, average the parameters of the last N validation
            checkpoints into ``checkpoints/averaged.pt`` and score it too (0 = off).
        average_best: after training, average the parameters of the N validation checkpoints
            with the highest val BLEU into ``checkpoints/averaged_best.pt`` and score it too
            (Sockeye's ``--strategy best``; 0 = off). Unlike the last N, they do not all come
            after the best validation when ``train.patience`` stops the run.
        tensorboard: also log to TensorBoard under ``RUN_DIR/tensorboard`` (extra
            ``[tensorboard]``).
        heatmap_sentences: validation sentences whose cross-attention heatmaps are logged to
            TensorBoard at each validation.
        release_memory_every: hand the heap's free pages back to the system every N updates
            (glibc ``malloc_trim``; :mod:`mt.training.memory`), so that batches of ever new shapes do
            not grow the resident set; 0 = never.
        onednn_cache_capacity: primitives oneDNN's cache keeps (one per matmul shape; its own
            default is 1,024, about 1 GB here; 0 saves ~0.3 GB more but costs ~9% tokens/s);
            set before training unless the environment sets ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``;
            -1 = leave oneDNN's default.
    """

    seed: int = 1
    device: str = "auto"
    precision: str = "auto"
    batch_tokens: int = 4096
    max_steps: int = 0
    max_epochs: int = 0
    max_minutes: float = 60.0
    lr: float = 1e-3
    warmup_steps: int = 800
    lr_schedule: str = "inverse_sqrt"
    min_lr: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.0001
    label_smoothing: float = 0.1
    alignment_weight: float = 0.0
    agreement_weight: float = 0.0
    agreement_with: str | None = None
    init_from: str | None = None
    trainable: str = "all"
    clip_norm: float = 1.0
    valid_every: int = 250
    valid_beam_size: int = 1
    patience: int = 10
    log_every: int = 10
    num_threads: int = 0
    resume: str | None = None
    max_nonfinite: int = 10
    compile: bool = False
    optimizer_impl: str = "foreach"
    accum_steps: int = 1
    keep_checkpoints: int = 0
    average_last: int = 5
    average_best: int = 5
    tensorboard: bool = False
    heatmap_sentences: int = 4
    release_memory_every: int = 100
    onednn_cache_capacity: int = 64


def _check_train(train: TrainConfig, data: DataConfig, aligner: AlignerConfig) -> None:
    """The ``train`` node; ``data`` and ``model.aligner`` for the keys that depend on them."""
    _check_train_machinery(train)
    require(train.batch_tokens > 0, "train.batch_tokens", train.batch_tokens, "must be > 0")
    require(
        train.batch_tokens >= data.max_len + 1,
        "train.batch_tokens",
        train.batch_tokens,
        f"must hold one sentence of data.max_len + 1 = {data.max_len + 1} tokens",
    )
    _check_schedule(train)
    _check_alignment_training(train, data, aligner)
    require(0 <= train.label_smoothing < 1, "train.label_smoothing", train.label_smoothing, "must be in [0, 1)")
    require(train.valid_every > 0, "train.valid_every", train.valid_every, "must be > 0")
    require(train.valid_beam_size > 0, "train.valid_beam_size", train.valid_beam_size, "must be > 0")
    require(
        train.max_steps > 0 or train.max_epochs > 0 or train.max_minutes > 0 or train.patience > 0,
        "train.max_steps",
        train.max_steps,
        "set train.max_steps, train.max_epochs, train.max_minutes or train.patience, or training never ends",
    )
    check_device(train.device, "train.device")
    require(train.max_nonfinite >= 1, "train.max_nonfinite", train.max_nonfinite, "must be >= 1")


def _check_train_machinery(train: TrainConfig) -> None:
    """How training runs and what it keeps: precision, optimizer kernel, checkpoints, memory."""
    require(train.precision in PRECISIONS, "train.precision", train.precision, "allowed: " + ", ".join(PRECISIONS))
    require(
        train.optimizer_impl in OPTIMIZER_IMPLS,
        "train.optimizer_impl",
        train.optimizer_impl,
        "allowed: " + ", ".join(OPTIMIZER_IMPLS),
    )
    require(train.accum_steps >= 1, "train.accum_steps", train.accum_steps, "must be >= 1")
    require(train.keep_checkpoints >= 0, "train.keep_checkpoints", train.keep_checkpoints, "must be >= 0")
    require(train.average_last >= 0, "train.average_last", train.average_last, "must be >= 0")
    require(train.average_best >= 0, "train.average_best", train.average_best, "must be >= 0")
    require(train.release_memory_every >= 0, "train.release_memory_every", train.release_memory_every, "must be >= 0")
    require(train.onednn_cache_capacity >= -1, "train.onednn_cache_capacity", train.onednn_cache_capacity, "must be >= -1")
    require(train.heatmap_sentences >= 0, "train.heatmap_sentences", train.heatmap_sentences, "must be >= 0")


def _check_schedule(train: TrainConfig) -> None:
    """The learning rate, its schedule and AdamW's betas."""
    require(train.lr >= 0, "train.lr", train.lr, "must be >= 0 (0: the weights do not move)")
    require(train.warmup_steps >= 0, "train.warmup_steps", train.warmup_steps, "must be >= 0")
    require(
        train.lr_schedule in LR_SCHEDULES, "train.lr_schedule", train.lr_schedule, "allowed: " + ", ".join(LR_SCHEDULES)
    )
    require(0 <= train.min_lr <= train.lr, "train.min_lr", train.min_lr, f"must be in [0, train.lr={train.lr}]")
    require(
        train.lr_schedule == "inverse_sqrt" or train.max_steps > 0 or train.max_minutes > 0 or train.max_epochs > 0,
        "train.lr_schedule",
        train.lr_schedule,
        "anneals to the end of the budget: set train.max_steps, train.max_minutes or train.max_epochs",
    )
    require(len(train.betas) == 2, "train.betas", train.betas, "must be two numbers")


def _check_alignment_training(train: TrainConfig, data: DataConfig, aligner: AlignerConfig) -> None:
    """Guided alignment and the aligner stage: ``train.alignment_weight``, ``train.trainable``,
    and ``model.aligner.lexicon``, which counts the links they train on."""
    require(train.alignment_weight >= 0, "train.alignment_weight", train.alignment_weight, "must be >= 0")
    require(
        train.alignment_weight == 0 or data.alignments != "none",
        "train.alignment_weight",
        train.alignment_weight,
        "needs alignment targets: set data.alignments=eflomal or data.alignments=file",
    )
    require(train.trainable in TRAINABLE, "train.trainable", train.trainable, "allowed: " + ", ".join(TRAINABLE))
    if aligner.enabled and aligner.lexicon:
        require(
            data.alignments != "none" and not data.streaming,
            "model.aligner.lexicon",
            True,
            "counts the teacher's links: needs data.alignments=eflomal or data.alignments=file, and data.streaming=false",
        )
    if train.trainable == "alignment":
        require(aligner.enabled, "train.trainable", train.trainable, "needs an aligner: model.aligner.enabled=true")
        require(
            bool(train.init_from or train.resume),
            "train.trainable",
            train.trainable,
            "trains the aligner of a finished model: set train.init_from=CHECKPOINT_OR_RUN_DIR",
        )
        require(
            train.alignment_weight > 0,
            "train.alignment_weight",
            train.alignment_weight,
            "must be > 0 with train.trainable=alignment (it is the aligner's only loss)",
        )
    require(train.agreement_weight >= 0, "train.agreement_weight", train.agreement_weight, "must be >= 0")
    if train.agreement_weight > 0:
        require(
            train.trainable == "alignment" and bool(train.agreement_with),
            "train.agreement_weight",
            train.agreement_weight,
            "trains an aligner stage against the other direction's: needs experiment=align and "
            "train.agreement_with=REVERSE_STAGE_RUN_DIR",
        )


@dataclass
class DecodingConfig:
    """Search settings used for the test split and as defaults of ``mt-translate``.

    Attributes:
        beam_size: hypotheses kept per sentence (1 = greedy search).
        length_penalty: alpha of the GNMT length penalty ((5 + len) / 6) ** alpha (Wu et al. 2016).
            1.4 was chosen on Multi30k's val split for the default recipe (README, Results:
            issue 25); 1.0 is the value before it (``experiment=recipe_v1``).
        max_len_a, max_len_b: hypotheses stop at ``max_len_a * src_len + max_len_b`` tokens.
        batch_size: sentences decoded together.
    """

    beam_size: int = 5
    length_penalty: float = 1.4
    max_len_a: float = 1.2
    max_len_b: int = 10
    batch_size: int = 64


def _check_decoding(decoding: DecodingConfig) -> None:
    """The ``decoding`` node."""
    require(decoding.beam_size > 0, "decoding.beam_size", decoding.beam_size, "must be > 0")
    require(decoding.batch_size > 0, "decoding.batch_size", decoding.batch_size, "must be > 0")
    require(decoding.max_len_a >= 0, "decoding.max_len_a", decoding.max_len_a, "must be >= 0")
    require(decoding.max_len_b > 0, "decoding.max_len_b", decoding.max_len_b, "must be > 0")


@dataclass
class Config:
    """The root node composed from ``configs/train.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)


def register_with_hydra() -> None:
    """Prepare Hydra to compose ``configs/train.yaml``; call it first (``mt-train`` does).

    Stores the schema's defaults in Hydra's config store as ``schema``, the first entry of the
    root defaults list: every key then exists, with its default, before the YAML files (which
    hold only differences) and the command line are merged in, so ``data.data_dir=…`` overrides
    without a ``+``. The node is untyped: types are checked by :func:`from_hydra`, which reports
    them in one line. Also registers the resolver ``mt.or`` (``${mt.or:VALUE,FALLBACK}``:
    FALLBACK when VALUE is null) that names the run dir after the experiment. Calling it again
    is harmless.
    """
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="schema", node=to_dict(Config()))
    OmegaConf.register_new_resolver("mt.or", lambda value, fallback: fallback if value is None else value, replace=True)


def from_hydra(cfg: DictConfig) -> Config:
    """Merge a composed Hydra config into the schema and validate it.

    Raises:
        ConfigError: one line naming the key and what is wrong (unknown key, wrong type,
            value out of range).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        message = str(error).splitlines()[0]
        raise ConfigError(f"config key '{key}': {message}" if key else f"config: {message}") from None
    if config.data.mirror is None:
        config.data.mirror = os.environ.get("MT_DATA_MIRROR") or None
    validate(config)
    return config


def model_preset(name: str) -> ModelConfig:
    """The model that ``mt-train model=NAME`` trains, composed from ``configs/`` (the YAML files
    are the one description of each preset) with every other group at its default.

    Args:
        name: a file of ``configs/model/``: ``transformer`` (the schema's default), ``base`` or
            ``big`` (Vaswani et al. 2017, Table 3).

    Raises:
        ValueError: no such preset (the message lists them).
        ConfigError: the preset's values are invalid.

    Not for use inside a running Hydra app (Hydra is initialised once per process at a time).
    """
    presets = sorted(path.stem for path in (Path(CONFIG_DIR) / "model").glob("*.yaml"))
    if name not in presets:
        raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(presets)}")
    from hydra import compose, initialize_config_dir

    register_with_hydra()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={name}"])
    return from_hydra(cfg).model


def subword_sampling(config: Config) -> bool:
    """Whether training segments its subwords anew each epoch (``tokenizer.sampling``): the key
    where it is ``true`` or ``false``; where it is ``null``, wherever sampling can run, that is
    a loaded training corpus (``data.streaming=false``) without piece links
    (``data.alignments=none``)."""
    if config.tokenizer.sampling is not None:
        return config.tokenizer.sampling
    return not config.data.streaming and config.data.alignments == "none"


def validate(config: Config) -> None:
    """Check values the types cannot express, before any data work: each node's checks, beside
    its dataclass, in the order model, data, tokenizer, train, decoding; a check that ties two
    nodes together takes what it needs of the other as arguments.

    Raises:
        ConfigError: naming the first offending key, its value and what is allowed.
    """
    model, tok = config.model, config.tokenizer
    _check_model(model)
    _check_data(config.data, model.max_positions)
    _check_tokenizer(tok, config.data, subword_sampling(config))
    require(
        tok.joint or not model.share_embeddings,
        "model.share_embeddings",
        model.share_embeddings,
        "needs tokenizer.joint=true (one vocabulary for both sides)",
    )
    _check_train(config.train, config.data, model.aligner)
    _check_decoding(config.decoding)


def command_line_keys(overrides: Sequence[str]) -> list[str]:
    """The config keys and groups that Hydra command-line overrides set, as dotted paths.

    Args:
        overrides: Hydra's task overrides (``HydraConfig.get().overrides.task``), e.g.
            ``["model.d_model=128", "model/encoder/self_attention=local", "train.lr=2e-4"]``.

    Returns: e.g. ``["model.d_model", "model.encoder.self_attention", "train.lr"]``: a group
    stands for every key under it.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [o.key_or_group.replace("/", ".") for o in OverridesParser.create().parse_overrides(list(overrides))]


# Options removed from the schema, each with its value that meant "off". Checkpoints saved
# before hold them: at that value they are dropped; on, the weights or the run need code that
# is gone (the results docs name the commit that measured each, for anyone to try again).
REMOVED_OPTIONS = {
    "model.aligner.word_lexicon": False,
    "model.aligner.lexicon_leave_one_out": False,
    "train.rdrop_alpha": 0.0,
}


def without_removed_options(saved: dict, node: str = "") -> dict:
    """A config node a checkpoint saved, as nested dicts, without the options removed since
    (:data:`REMOVED_OPTIONS`); ``saved`` itself is left as it is.

    Args:
        saved: e.g. a checkpoint's ``config`` (the root node) or ``model_config``.
        node: its key: ``""`` for the root, ``"model"`` for ``model_config``.

    Raises:
        ConfigError: one of them is on, e.g. ``config key 'model.aligner.word_lexicon' = True:
            saved in this checkpoint, but the option was removed …``.
    """
    saved = copy.deepcopy(saved)
    prefix = f"{node}." if node else ""
    for key, off in REMOVED_OPTIONS.items():
        if not key.startswith(prefix):
            continue
        *path, leaf = key[len(prefix) :].split(".")
        holder = saved
        for part in path:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and leaf in holder:
            value = holder.pop(leaf)
            require(
                value == off,
                key,
                value,
                "saved in this checkpoint, but the option was removed (it measured worse): "
                "a version of mt from before its removal runs it",
            )
    return saved


def model_config_from_dict(data: dict) -> ModelConfig:
    """A ``model`` node saved as nested dicts (a checkpoint's) as a :class:`ModelConfig`; keys
    added to the schema since it was saved take their defaults (e.g. ``aligner``), keys of
    removed options are dropped (:func:`without_removed_options`).

    Raises:
        ConfigError: the checkpoint has a removed option on.
    """
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), without_removed_options(data, "model")))


def check_device(device: str, key: str) -> None:
    """Raise ConfigError unless ``device`` is auto, cpu, cuda or cuda:N."""
    valid = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    require(valid, key, device, "allowed: auto, cpu, cuda, cuda:N")


def to_dict(node: object) -> dict:
    """A dataclass config node as plain nested dicts (for checkpoints and JSON)."""
    return dataclasses.asdict(node)
