"""Any parallel corpus → ``{"train", "valid", "test"}`` splits with string columns ``src`` and ``tgt``.

``data.source`` picks the reader (keys documented in :class:`mt.config.DataConfig`):

- ``multi30k``: Multi30k task 1 (Elliott et al. 2016) through :func:`load_split`, read from its
  raw ``{split}.{lang}.gz`` files, which are fetched once into ``data/multi30k/``: copied from a
  local mirror folder (``data.mirror`` or the ``MT_DATA_MIRROR`` environment variable) or
  downloaded from the upstream repository (:func:`multi30k_file`).
- ``hf``: a Hugging Face dataset (Lhoest et al. 2021): a Hub id (``wmt14``, ``iwslt2017``,
  ``Helsinki-NLP/opus_books`` …), a local folder ``load_dataset`` reads (parquet/json/csv files
  named after their split), or a ``save_to_disk`` folder. Pairs come from a ``translation``
  column of ``{lang: text}`` dicts or from two text columns.
- ``files``: local parallel files under ``data.path``: ``{split}.{lang}`` (plain or ``.gz``, one
  sentence per line), ``{split}.tsv`` (``source<TAB>target``) or ``{split}.jsonl`` (one object
  per line); the split names are the file stems, so ``train_split=newstest2014`` reads
  ``newstest2014.de`` / ``newstest2014.en``.

Split names may carry a slice, ``train[:1000]``, ``train[1000:]``, ``train[:5%]`` (Python slice
bounds over rows, or percentages of the split), to carve validation and test sets out of a corpus
with a single split.

With ``data.streaming`` (hf and files) the train split comes back as a
``datasets.IterableDataset`` of ``{"src", "tgt"}`` that never sits in memory as text:
:func:`text_sample` gives the sentencepiece training sample and
:func:`mt.training.training_data.encode_stream` the compact token ids. Valid and test are always
materialised.

Text files are read as the rest of ``mt`` reads them (:mod:`mt.data.lines`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import datasets

from mt.config import DataConfig
from mt.data.lines import iter_lines, read_lines
from mt.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ROLES = ("train", "valid", "test")
PAIR_FEATURES = datasets.Features({"src": datasets.Value("string"), "tgt": datasets.Value("string")})
_SLICE = re.compile(r"^(?P<name>.+?)\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\]$")


def load_splits(cfg: DataConfig) -> dict[str, datasets.Dataset | datasets.IterableDataset]:
    """The train, valid and test splits of the configured corpus.

    Each split has string columns ``src`` and ``tgt`` (source and target sentence, in that
    order), holds the split's slice if its name has one, and then only its first
    ``max_{role}_sentences`` pairs (0 = all).

    Returns:
        ``{"train": …, "valid": …, "test": …}``: ``datasets.Dataset`` each, except the train
        split with ``cfg.streaming``: a ``datasets.IterableDataset`` yielding ``{"src", "tgt"}``.

    Raises:
        DataError: the corpus, a split, a column or a language is missing (the message lists
            what there is), or a file is malformed (the message names ``file:line``).
        ConfigError: a slice the source cannot honour (percentages or negative bounds while
            streaming).
    """
    specs = {"train": cfg.train_split, "valid": cfg.valid_split, "test": cfg.test_split}
    limits = {"train": cfg.max_train_sentences, "valid": cfg.max_valid_sentences, "test": cfg.max_test_sentences}
    if cfg.source == "multi30k":
        return {
            role: load_split(specs[role], cfg.src_lang, cfg.tgt_lang, cfg.data_dir, cfg.mirror, limits[role])
            for role in ROLES
        }
    hf_splits = _open_hf(cfg) if cfg.source == "hf" else None
    splits = {}
    for role in ROLES:
        stream = cfg.streaming and role == "train"
        if hf_splits is not None:
            pairs = _hf_split(hf_splits, cfg, role, specs[role], stream)
        else:
            pairs = _files_split(cfg, role, specs[role], stream)
        if isinstance(pairs, datasets.IterableDataset):
            pairs = pairs.take(limits[role]) if limits[role] else pairs
            if not stream:  # a streamed corpus's valid and test splits are small: materialise them
                pairs = _materialise(pairs)
        elif limits[role]:
            pairs = pairs.select(range(min(limits[role], len(pairs))))
        splits[role] = pairs
        if not stream:
            log.info("%s: %d pairs (data.%s_split=%s)", role, len(pairs), role, specs[role])
    return splits


def _materialise(pairs: Iterable[dict], chunk_size: int = 100_000) -> datasets.Dataset:
    """``{"src", "tgt"}`` pairs → an in-memory Dataset, turned into Arrow ``chunk_size`` pairs at a
    time: only one chunk is ever held as Python strings (a whole 1.16M-pair corpus held that way
    peaked at 1 GB more than its 150 MB of Arrow text)."""
    parts, iterator = [], iter(pairs)
    while chunk := list(itertools.islice(iterator, chunk_size)):
        columns = {"src": [pair["src"] for pair in chunk], "tgt": [pair["tgt"] for pair in chunk]}
        parts.append(datasets.Dataset.from_dict(columns, features=PAIR_FEATURES))
    if not parts:
        return datasets.Dataset.from_dict({"src": [], "tgt": []}, features=PAIR_FEATURES)
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def split_label(spec: str) -> str:
    """A file-name-safe label of a split name: ``test_2016_flickr`` stays, ``/data/wmt/newstest2014``
    → ``newstest2014``, ``train[:1000]`` → ``train_1000``."""
    return re.sub(r"[^\w.-]+", "_", spec.rstrip("/").rsplit("/", 1)[-1]).strip("_") or "split"


def text_sample(pairs: Iterable[dict], n: int) -> datasets.Dataset:
    """The first ``n`` pairs of a stream as a Dataset (columns ``src``, ``tgt``), to train
    sentencepiece on (``data.tokenizer_sample``) without reading the whole corpus."""
    return _materialise(itertools.islice(pairs, n))


# ------------------------------------------------------------------------------------- slices
def _parse_split(spec: str) -> tuple[str, str | None, str | None]:
    """``name[start:stop]`` → (name, start, stop); bounds are ``N``, ``-N``, ``N%`` or None."""
    match = _SLICE.match(spec)
    if match is None:
        return spec, None, None
    return match["name"], match["start"], match["stop"]


def _bound(text: str | None, n_rows: int) -> int | None:
    if text is None:
        return None
    if text.endswith("%"):
        return round(int(text[:-1]) * n_rows / 100)
    return int(text)


def _slice_rows(start: str | None, stop: str | None, n_rows: int) -> range:
    """Rows of a split of ``n_rows`` rows that ``[start:stop]`` selects (Python slice semantics)."""
    return range(*slice(_bound(start, n_rows), _bound(stop, n_rows)).indices(n_rows))


def _slice_stream(pairs: datasets.IterableDataset, start: str | None, stop: str | None, key: str, spec: str):
    if start is None and stop is None:
        return pairs
    for bound in (start, stop):
        if bound is not None and (bound.endswith("%") or bound.startswith("-")):
            raise ConfigError(
                f"config key '{key}' = {spec!r}: a streamed split has no known length; "
                "use non-negative row bounds such as [:1000] or [1000:]"
            )
    first = int(start or 0)
    pairs = pairs.skip(first) if first else pairs
    return pairs if stop is None else pairs.take(max(int(stop) - first, 0))


# ---------------------------------------------------------------------------------- Multi30k
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
MULTI30K_LINES = {"train": 29000, "val": 1014, "test_2016_flickr": 1000, "test_2017_flickr": 1000}
MULTI30K_MISSING = {("test_2017_flickr", "cs")}  # no Czech for the 2017 test set


def load_split(
    split: str,
    src_lang: str,
    tgt_lang: str,
    data_dir: str | Path = "data",
    mirror: str | Path | None = None,
    max_sentences: int = 0,
) -> datasets.Dataset:
    """One Multi30k split as a Dataset with string columns ``src`` and ``tgt``.

    Args:
        max_sentences: keep only the first N pairs (0 = all).

    Raises:
        DataError: a file is missing, or the two sides (or the expected count) differ in lines.
    """
    src_path = multi30k_file(split, src_lang, data_dir, mirror)
    tgt_path = multi30k_file(split, tgt_lang, data_dir, mirror)
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    expected = MULTI30K_LINES[split]
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        if len(lines) != expected:
            raise DataError(f"{path} has {len(lines)} lines, Multi30k {split} has {expected}; delete it to fetch again")
    if max_sentences:
        src, tgt = src[:max_sentences], tgt[:max_sentences]
    return datasets.Dataset.from_dict({"src": src, "tgt": tgt})


def multi30k_file(split: str, lang: str, data_dir: str | Path, mirror: str | Path | None) -> Path:
    """Path of ``{split}.{lang}.gz`` under ``data_dir/multi30k``, fetched there on first use.

    Tries the mirror folder first, then the upstream repository.

    Raises:
        DataError: unknown split or language pair, or the file is neither in the mirror nor
            downloadable (the message says what to set).
    """
    if split not in MULTI30K_LINES:
        raise DataError(f"Multi30k has no split {split!r}; splits: {', '.join(MULTI30K_LINES)}")
    if (split, lang) in MULTI30K_MISSING:
        raise DataError(f"Multi30k split {split!r} has no {lang!r} side; choose another split or language")
    name = f"{split}.{lang}.gz"
    target = Path(data_dir) / "multi30k" / name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if mirror:
        source = Path(mirror) / name
        if not source.exists():
            raise DataError(f"{source} not found in the Multi30k mirror (MT_DATA_MIRROR / data.mirror = {mirror})")
        _atomic_copy(source, target)
        return target
    url = f"{MULTI30K_URL}/{name}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            _atomic_write(target, response.read())
    except (urllib.error.URLError, OSError) as error:
        raise DataError(
            f"cannot download {url} ({error}); with no network, set MT_DATA_MIRROR to a folder "
            f"holding the Multi30k raw files {{train,val,test_2016_flickr,test_2017_flickr}}.{{de,en,fr,cs}}.gz"
        ) from None
    log.info("downloaded %s", url)
    return target


def _atomic_write(target: Path, payload: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(payload)
    os.replace(tmp.name, target)


def _atomic_copy(source: Path, target: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp, open(source, "rb") as src:
        shutil.copyfileobj(src, tmp)
    os.replace(tmp.name, target)


# ------------------------------------------------------------------------------ Hugging Face
def _describe(cfg: DataConfig) -> str:
    return f"dataset {cfg.path!r}" + (f" (name {cfg.name!r})" if cfg.name else "")


def _open_hf(cfg: DataConfig) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """All splits of the configured Hugging Face dataset, lazily where streaming."""
    path = Path(cfg.path).expanduser()
    if (path / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk
        return datasets.load_from_disk(str(path))
    if (path / "state.json").is_file():
        raise DataError(
            f"{path} holds one saved Dataset (state.json), not a DatasetDict: "
            "save a DatasetDict with one entry per split"
        )
    if cfg.path.startswith(("/", "./", "../", "~")) and not path.exists():
        raise DataError(f"no folder {path} (data.path)")
    kwargs = {"trust_remote_code": True} if cfg.trust_remote_code else {}  # only datasets < 4 run scripts
    try:
        return datasets.load_dataset(
            str(path) if path.is_dir() else cfg.path,
            cfg.name,
            revision=cfg.revision,
            data_files=dict(cfg.data_files) if cfg.data_files else None,
            cache_dir=cfg.cache_dir,
            streaming=cfg.streaming,
            **kwargs,
        )
    except (FileNotFoundError, ConnectionError, ValueError) as error:  # not found, offline, unknown config
        offline = getattr(datasets.config, "HF_HUB_OFFLINE", getattr(datasets.config, "HF_DATASETS_OFFLINE", False))
        hint = " (offline mode: only cached datasets and local folders load)" if offline else ""
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"cannot load {_describe(cfg)}: {message}{hint}") from None
    except RuntimeError as error:
        if "scripts are no longer supported" not in str(error):
            raise
        raise DataError(
            f"cannot load {_describe(cfg)}: it is built by a loading script, which datasets {datasets.__version__} "
            "does not run; try its parquet export, data.revision=refs/convert/parquet"
        ) from None


def _hf_split(splits, cfg: DataConfig, role: str, spec: str, stream: bool):
    """One split's pairs: a Dataset, or an IterableDataset where the corpus or this split streams."""
    name, start, stop = _parse_split(spec)
    if name not in splits:
        raise DataError(f"{_describe(cfg)} has no split {name!r} (data.{role}_split); splits: {', '.join(splits)}")
    split = splits[name]
    where = f"{_describe(cfg)} split {name!r}"
    if isinstance(split, datasets.IterableDataset):  # a streamed corpus
        return _slice_stream(_pairs_stream(split, cfg, where), start, stop, f"data.{role}_split", spec)
    if start or stop:
        split = split.select(_slice_rows(start, stop, len(split)))
    if stream:  # a save_to_disk folder: streamed from its memory-mapped Arrow files
        return _pairs_stream(split.to_iterable_dataset(), cfg, where)
    return _pairs_table(split, cfg, where)


def _column_names(cfg: DataConfig) -> tuple[str, str] | None:
    return (cfg.src_column, cfg.tgt_column) if cfg.src_column else None


def _check_columns(needed: Iterable[str], available: list[str], where: str) -> None:
    for column in needed:
        if column not in available:
            raise DataError(f"{where} has no column {column!r}; columns: {', '.join(available)}")


def _languages(feature, column: str, where: str) -> list[str]:
    """Language codes of a translation column, from its feature type or (streams without
    features) from its first value."""
    if isinstance(feature, datasets.Translation):
        return list(feature.languages)
    if isinstance(feature, dict):  # a struct column, or the first example's dict
        return list(feature)
    raise DataError(f"{where}: column {column!r} is not a {{language: text}} mapping but {feature!r}")


def _check_languages(languages: list[str], cfg: DataConfig, where: str) -> None:
    for key, lang in (("data.src_lang", cfg.src_lang), ("data.tgt_lang", cfg.tgt_lang)):
        if lang not in languages:
            raise DataError(
                f"{where}: column {cfg.translation_column!r} has no {lang!r} entries ({key}); "
                f"languages: {', '.join(languages)}"
            )


def _pairs_table(split: datasets.Dataset, cfg: DataConfig, where: str) -> datasets.Dataset:
    """Columns ``src``/``tgt`` of an Arrow-backed split by table operations (no copy, no cache)."""
    columns = _column_names(cfg)
    if columns:
        _check_columns(columns, split.column_names, where)
        split = split.select_columns(list(columns))
    else:
        column = cfg.translation_column
        _check_columns([column], split.column_names, where)
        _check_languages(_languages(split.features[column], column, where), cfg, where)
        split = split.select_columns([column]).flatten()
        columns = (f"{column}.{cfg.src_lang}", f"{column}.{cfg.tgt_lang}")
    for column in columns:
        feature = split.features[column]
        if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
            raise DataError(f"{where}: column {column!r} holds {feature}, not text")
    split = split.select_columns(list(columns))
    split = split.rename_columns({columns[0]: "_mt_src", columns[1]: "_mt_tgt"})  # via temporaries: the
    split = split.rename_columns({"_mt_src": "src", "_mt_tgt": "tgt"})  # names may be swapped
    nulls = sum(split.data.column(name).null_count for name in ("src", "tgt"))
    if nulls:  # a pair without one of its sides: an empty string, which training drops
        log.warning("%s: %d missing sentences read as empty", where, nulls)
        split = split.map(
            lambda batch: {key: [text or "" for text in batch[key]] for key in ("src", "tgt")}, batched=True
        )
    return split


def _pairs_stream(split: datasets.IterableDataset, cfg: DataConfig, where: str) -> datasets.IterableDataset:
    """Lazy ``{"src", "tgt"}`` view of a streamed split; checks columns on the features or the
    first example."""
    first = None
    if split.features is None:
        first = next(iter(split), None)
        if first is None:
            raise DataError(f"{where} is empty")
    available = list(split.features) if split.features is not None else list(first)
    columns = _column_names(cfg)
    if columns:
        _check_columns(columns, available, where)
    else:
        column = cfg.translation_column
        _check_columns([column], available, where)
        feature = split.features[column] if split.features is not None else first[column]
        _check_languages(_languages(feature, column, where), cfg, where)

    def to_pair(example: dict) -> dict:
        if columns:
            src, tgt = example[columns[0]], example[columns[1]]
        else:
            translation = example[cfg.translation_column] or {}
            src, tgt = translation.get(cfg.src_lang), translation.get(cfg.tgt_lang)
        return {"src": src or "", "tgt": tgt or ""}

    return split.map(to_pair, remove_columns=available, features=PAIR_FEATURES)


# ------------------------------------------------------------------------------ local files
def _find(stem: Path, key: str) -> Path:
    """``stem`` or ``stem.gz``, whichever exists."""
    found = [p for p in (stem, stem.with_name(stem.name + ".gz")) if p.is_file()]
    if not found:
        raise DataError(f"{stem} not found (nor {stem.name}.gz) for {key}")
    if len(found) == 2:
        raise DataError(f"both {found[0]} and {found[1]} exist; remove one")
    return found[0]


def _file_pairs(cfg: DataConfig, role: str, name: str) -> Iterator[tuple[str, str]]:
    """(source, target) pairs of one split in ``cfg.path``, in file order.

    Raises:
        DataError: missing file, different line counts, a TSV line without exactly one tab, a
            JSONL line that is not an object with the two texts (naming ``file:line``).
    """
    base = Path(cfg.path).expanduser() / name
    key = f"data.{role}_split={name!r}"
    if cfg.format == "text":
        src_path = _find(base.with_name(f"{base.name}.{cfg.src_lang}"), key)
        tgt_path = _find(base.with_name(f"{base.name}.{cfg.tgt_lang}"), key)
        n = 0
        for src, tgt in itertools.zip_longest(iter_lines(src_path), iter_lines(tgt_path)):
            if src is None or tgt is None:
                longer, shorter = (src_path, tgt_path) if tgt is None else (tgt_path, src_path)
                raise DataError(f"{longer} has more lines than {shorter} ({shorter} ends after line {n})")
            n += 1
            yield src, tgt
        return
    path = _find(base.with_name(f"{base.name}.{cfg.format}"), key)
    for number, line in enumerate(iter_lines(path), start=1):
        if cfg.format == "tsv":
            fields = line.split("\t")
            if len(fields) != 2:
                raise DataError(f"{path}:{number}: expected source<TAB>target, found {len(fields) - 1} tabs")
            yield fields[0], fields[1]
        elif line.strip():  # jsonl; blank lines are skipped
            yield _json_pair(line, cfg, f"{path}:{number}")


def _json_pair(line: str, cfg: DataConfig, where: str) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(f"{where}: not JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(record).__name__}")
    if cfg.src_column:
        container, keys = record, (cfg.src_column, cfg.tgt_column)
    elif isinstance(record.get(cfg.translation_column), dict):
        container, keys = record[cfg.translation_column], (cfg.src_lang, cfg.tgt_lang)
    else:
        container, keys = record, (cfg.src_lang, cfg.tgt_lang)
    texts = []
    for key in keys:
        if key not in container:
            raise DataError(f"{where}: no key {key!r}; keys: {', '.join(container)}")
        if not isinstance(container[key], str):
            raise DataError(f"{where}: {key!r} is {type(container[key]).__name__}, not text")
        texts.append(container[key])
    return texts[0], texts[1]


def _stream_file_pairs(cfg: DataConfig, role: str, name: str) -> Iterator[dict]:
    for src, tgt in _file_pairs(cfg, role, name):
        yield {"src": src, "tgt": tgt}


def _files_split(cfg: DataConfig, role: str, spec: str, stream: bool):
    name, start, stop = _parse_split(spec)
    if stream:
        pairs = datasets.IterableDataset.from_generator(
            _stream_file_pairs, features=PAIR_FEATURES, gen_kwargs={"cfg": cfg, "role": role, "name": name}
        )
        return _slice_stream(pairs, start, stop, f"data.{role}_split", spec)
    pairs = _materialise(_stream_file_pairs(cfg, role, name))
    return pairs.select(_slice_rows(start, stop, len(pairs))) if start or stop else pairs
