"""Corpus → ``datasets.Dataset`` → token ids (batches: :mod:`mt.batching`).

Multi30k task 1 (Elliott et al. 2016) is read from its raw ``{split}.{lang}.gz`` files, which
are fetched once into ``data/multi30k/``: copied from a local mirror folder (``data.mirror`` or
the ``MT_DATA_MIRROR`` environment variable) or downloaded from the upstream repository.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import datasets

from mt.errors import DataError
from mt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw"
MULTI30K_LINES = {"train": 29000, "val": 1014, "test_2016_flickr": 1000, "test_2017_flickr": 1000}
MULTI30K_MISSING = {("test_2017_flickr", "cs")}  # no Czech for the 2017 test set


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


def split_lines(raw: bytes, source: str) -> list[str]:
    """Decode UTF-8 bytes into lines, splitting on ``\n`` only.

    ``str.splitlines`` would also split on form feeds, U+2028 and other separators inside a
    line, breaking the one-line-in, one-line-out contract. A trailing ``\r`` is dropped from
    each line; invalid UTF-8 is replaced by U+FFFD with one warning naming ``source``.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        log.warning("%s: invalid UTF-8 (first at byte %d) replaced by U+FFFD", source, error.start)
        text = raw.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(path: Path) -> list[str]:
    """Lines of a plain or gzipped UTF-8 text file (see :func:`split_lines`).

    Raises:
        DataError: the file is missing or not readable.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return split_lines(f.read(), str(path))
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path}: {error}") from None


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


def tokenize(dataset: datasets.Dataset, tokenizer: Tokenizer, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """Add columns ``src_ids`` and ``tgt_ids`` (piece ids, no specials).

    With ``cache_dir`` the result is saved under a hash of the texts and the tokenizer models
    and loaded from there by the next run with the same inputs.
    """

    def encode(batch: dict) -> dict:
        return {"src_ids": tokenizer.encode_src(batch["src"]), "tgt_ids": tokenizer.encode_tgt(batch["tgt"])}

    if cache_dir is None:
        return dataset.map(encode, batched=True, batch_size=2000)
    digest = hashlib.sha256()
    state = tokenizer.state()
    for part in (state["src_model"], state["tgt_model"], *dataset["src"], *dataset["tgt"]):
        digest.update(part if isinstance(part, bytes) else part.encode() + b"\n")
    path = Path(cache_dir) / f"tokenized-{digest.hexdigest()[:16]}"
    if path.exists():
        return datasets.load_from_disk(str(path))
    tokenized = dataset.map(encode, batched=True, batch_size=2000)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tokenized.save_to_disk(str(tmp))
    os.replace(tmp, path)
    return datasets.load_from_disk(str(path))
