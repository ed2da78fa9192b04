"""Text dataset → token ids, cached (corpora: :mod:`mt.corpora`; batches: :mod:`mt.batching`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import datasets

from mt.tokenizer import Tokenizer


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
