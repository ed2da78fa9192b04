"""Piece-level word-alignment targets for guided alignment training (Garg et al. 2019).

Garg et al. (2019, *Jointly Learning to Align and Translate with Transformer Models*) supervise
one cross-attention head with alignments from a statistical aligner. This module produces them:
for every kept training pair, links ``(src_piece, tgt_piece)`` between positions of the token-id
lists :func:`mt.training.training_data.prepare_data` trains on (no BOS/EOS).

Where the links come from (``data.alignments``):

- ``eflomal``: eflomal (Östling & Tiedemann 2016) aligns the training split both ways, on
  sentencepiece pieces or on whitespace words (``data.alignments_unit``), and the two directions
  are symmetrized (``data.alignments_symmetrize``, e.g. grow-diag-final-and, Koehn et al. 2003).
  The result is cached in ``data.data_dir/cache`` under a hash of text, tokenizer and settings,
  with eflomal's priors learnt from those links (:func:`eflomal_priors`), which the aligner's
  checkpoints carry so that it can adapt to new text (:mod:`mt.alignment.adapt`).
- ``file``: 0-based Pharaoh ``src_word-tgt_word`` links over whitespace words, one line per
  training pair (``data.alignments_path``).

Word links become piece links the standard way (as fairseq's and OpenNMT's guided-alignment
preprocessing on subwords): every piece of the source word is linked to every piece of the
target word. Pieces belong to words as in :mod:`mt.data.words` (character-span overlap), so split
words and glued punctuation land on the right word and a word with no pieces loses its links.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mt.alignment.aer import GoldAlignment, read_pharaoh
from mt.config import ALIGNMENT_UNITS as UNITS, DataConfig
from mt.errors import ConfigError, DataError
from mt.alignment.symmetrize import symmetrize
from mt.data.tokenizer import Tokenizer
from mt.data.words import NO_WORD, Segmentation, piece_words, words_of

log = logging.getLogger(__name__)

Link = tuple[int, int]
_CACHE_FORMAT = 2  # bump when the stored links change meaning (2: eflomal's priors stored beside them)


def word_to_piece_links(
    word_links: Iterable[Link], src_owner: Sequence[int], tgt_owner: Sequence[int]
) -> np.ndarray:
    """Every piece of source word i linked to every piece of target word j, for each link (i, j).

    Args:
        word_links: 0-based ``(src_word, tgt_word)`` links.
        src_owner, tgt_owner: (src_len,), (tgt_len,) the word of each piece, or ``NO_WORD``
            (see :func:`mt.data.words.piece_words`).

    Returns: (n_links, 2) int32, columns src_piece, tgt_piece, sorted, no duplicates; links of a
        word that owns no piece vanish.
    """
    src_pieces_of, tgt_pieces_of = _pieces_of(src_owner), _pieces_of(tgt_owner)
    links = {
        (s, t)
        for i, j in word_links
        for s in src_pieces_of.get(i, ())
        for t in tgt_pieces_of.get(j, ())
    }
    return _as_array(links)


def piece_to_word_links(piece_links: np.ndarray, src_owner: Sequence[int], tgt_owner: Sequence[int]) -> set[Link]:
    """Word pair (i, j) is linked when any piece of i is linked to any piece of j.

    Args:
        piece_links: (n_links, 2) int, columns src_piece, tgt_piece.
        src_owner, tgt_owner: the word of each piece, as in :func:`word_to_piece_links`.

    Returns: 0-based ``(src_word, tgt_word)`` links; pieces of no word are skipped.
    """
    words = {(src_owner[s], tgt_owner[t]) for s, t in piece_links.tolist()}
    return {(i, j) for i, j in words if i != NO_WORD and j != NO_WORD}


def piece_owners(tokenizer: Tokenizer, src_text: str, tgt_text: str) -> tuple[list[int], list[int]]:
    """The word of each piece of a pair as training encodes it (source, target; no specials).

    Returns: src_owner (src_len,), tgt_owner (tgt_len,): whitespace-word index of each piece
        (:func:`mt.data.words.piece_words`), ``NO_WORD`` only when a side has no words.
    """
    return (
        piece_words(tokenizer.src_pieces(src_text), words_of(src_text)[1]),
        piece_words(tokenizer.tgt_pieces(tgt_text), words_of(tgt_text)[1]),
    )


def teacher_links(
    src_texts: Sequence[str], tgt_texts: Sequence[str], piece_links: Sequence[np.ndarray], tokenizer: Tokenizer,
    src_lang: str, tgt_lang: str,
) -> GoldAlignment:
    """The training links of some pairs back as word links, a gold set to score imitation against
    (every link Sure; a word pair is linked when any of their pieces are,
    :func:`piece_to_word_links`).

    Args:
        src_texts, tgt_texts: the pairs' texts.
        piece_links: their (n_links, 2) piece links, as :func:`training_links` returns them.
    """
    sure = [
        piece_to_word_links(links, *piece_owners(tokenizer, src, tgt))
        for src, tgt, links in zip(src_texts, tgt_texts, piece_links)
    ]
    return GoldAlignment(src_lang, tgt_lang, list(src_texts), list(tgt_texts), sure, [set(s) for s in sure])


def segmentation_piece_links(segmentation: Segmentation, word_links: Iterable[Link]) -> np.ndarray:
    """:func:`word_to_piece_links` for a pair segmented by :func:`mt.data.words.segment` (e.g. the
    gold set's ``TrainingData.gold_segmentations``); pieces cut off by its truncation get no link.

    Returns: (n_links, 2) int32, columns src_piece, tgt_piece.
    """
    src_pool = segmentation.src_pool[:-1]  # (src_len, n_src_words); the last row is EOS
    if not (segmentation.src_words and segmentation.tgt_words):
        return _as_array([])
    src_owner = np.where(src_pool.any(axis=1), src_pool.argmax(axis=1), NO_WORD)
    tgt_pool = segmentation.tgt_pool  # (n_tgt_words, tgt_len)
    tgt_owner = np.where(tgt_pool.any(axis=0), tgt_pool.argmax(axis=0), NO_WORD)
    return word_to_piece_links(word_links, src_owner.tolist(), tgt_owner.tolist())


def read_word_links(
    path: str | Path, src_texts: Sequence[str], tgt_texts: Sequence[str], n_first: int | None = None
) -> list[list[Link]]:
    """0-based Pharaoh word links (``i-j`` = source word i, target word j) of each pair.

    Args:
        path: one line per pair of the texts; a blank line = no links for that pair.
        n_first: the pairs of the training split before the gold copies
            (``data.alignment_gold_train_copies``): the file may hold lines for just these,
            the copies then get no links; a line for a copy must be blank, since gold links
            are never trained on.

    Returns: one link list per pair of the texts.

    Raises:
        DataError: the file is missing, a line does not parse, a link points past the words of
            its pair, a line for a gold copy holds links, or the line count matches neither
            count of pairs; named ``FILE:LINE``.
    """
    links = read_pharaoh(path)
    n_pairs = len(src_texts)
    if len(links) not in (n_pairs, n_first):
        expected = f"{n_first} (or {n_pairs} with the gold copies)" if n_first else str(n_pairs)
        line = n_pairs + 1 if len(links) > n_pairs else len(links)  # the first extra line, or the last one
        where = f"{path}:{line}" if line else str(path)
        raise DataError(
            f"{where}: the file has {len(links)} lines, but the training split has {expected} pairs "
            "(one line per pair, blank = no links)"
        )
    for number, (pair_links, src, tgt) in enumerate(zip(links, src_texts, tgt_texts), 1):
        if n_first is not None and number > n_first and pair_links:
            raise DataError(
                f"{path}:{number}: links on a line of the gold copies (data.alignment_gold_train_copies), but gold "
                f"links are never trained on: leave lines {n_first + 1}-{n_pairs} blank, or give only the first {n_first}"
            )
        n_src, n_tgt = len(src.split()), len(tgt.split())
        bad = [(i, j) for i, j in pair_links if i >= n_src or j >= n_tgt]
        if bad:
            i, j = bad[0]
            raise DataError(f"{path}:{number}: link {i}-{j} is outside a {n_src}×{n_tgt}-word pair (0-based)")
    if len(links) < n_pairs:
        log.info("%s covers the first %d training pairs; the other %d get no links", path, len(links), n_pairs - len(links))
    return links + [[] for _ in range(n_pairs - len(links))]


def unit_tokens(
    tokenizer: Tokenizer, src_texts: Sequence[str], tgt_texts: Sequence[str], unit: str
) -> tuple[list[list[str]], list[list[str]]]:
    """The tokens eflomal aligns: whitespace words (``word``) or the pieces training sees (``piece``).

    Returns: src_tokens, tgt_tokens: one list per text, no token containing whitespace; piece
        tokens are piece strings (``▁dog``; an unknown piece's surface), one per training id.

    Raises:
        ValueError: an unknown unit (the message lists the valid ones).
    """
    if unit == "word":
        return [text.split() for text in src_texts], [text.split() for text in tgt_texts]
    if unit == "piece":
        return _piece_tokens(tokenizer.src, src_texts), _piece_tokens(tokenizer.tgt, tgt_texts)
    raise ValueError(f"unknown alignment unit {unit!r}; choose one of {', '.join(UNITS)}")


def run_eflomal(
    src_tokens: Sequence[Sequence[str]], tgt_tokens: Sequence[Sequence[str]], priors: Sequence[str] | None = None
) -> tuple[list[list[Link]], list[list[Link]]]:
    """Align token sequences both ways with eflomal (Östling & Tiedemann 2016).

    eflomal lowercases tokens, is stochastic (no seed), runs its samplers in parallel threads,
    and leaves sentences of more than about 1,000 tokens unaligned.

    Args:
        src_tokens, tgt_tokens: one token list per pair (:func:`unit_tokens`); tokens must not
            contain whitespace.
        priors: lines of an eflomal priors file (``eflomal.calculate_priors`` and
            ``write_priors``) learnt from other text, so that these pairs are aligned without
            being part of the text eflomal learns from (eflomal's ``makepriors`` route); None =
            learn from these pairs alone.

    Returns: forward (src→tgt model) and reverse (tgt→src model) links of each pair, both as
        0-based ``(src_token, tgt_token)``; combine them with :func:`mt.alignment.symmetrize.symmetrize`.

    Raises:
        ConfigError: eflomal is not installed (named as ``data.alignments``).
    """
    eflomal = _import_eflomal()
    with tempfile.TemporaryDirectory(prefix="mt-eflomal-") as tmp:
        forward_path, reverse_path = Path(tmp) / "forward", Path(tmp) / "reverse"
        eflomal.Aligner().align(
            [" ".join(tokens) + "\n" for tokens in src_tokens],
            [" ".join(tokens) + "\n" for tokens in tgt_tokens],
            links_filename_fwd=str(forward_path),
            links_filename_rev=str(reverse_path),
            priors_input=priors,
        )
        # both files are source-first Pharaoh lines, one per pair
        forward, reverse = read_pharaoh(forward_path), read_pharaoh(reverse_path)
    if not len(forward) == len(reverse) == len(src_tokens):
        raise RuntimeError(f"eflomal wrote {len(forward)}/{len(reverse)} lines for {len(src_tokens)} pairs")
    return forward, reverse


def eflomal_priors(
    src_tokens: Sequence[Sequence[str]],
    tgt_tokens: Sequence[Sequence[str]],
    forward: Sequence[Sequence[Link]],
    reverse: Sequence[Sequence[Link]],
) -> str:
    """eflomal's priors file learnt from aligned text (``eflomal.calculate_priors``, ``write_priors``:
    the ``makepriors`` route of Östling & Tiedemann 2016): lexical counts of the forward links,
    fertilities and jump lengths of both directions. Given to :func:`run_eflomal`, it aligns new
    pairs as if that text were part of what eflomal learns from, without the text.

    Args:
        src_tokens, tgt_tokens: the tokens of each pair as :func:`run_eflomal` aligned them; a
            pair that occurs several times counts once, as in the aligner's lexicon.
        forward, reverse: :func:`run_eflomal`'s links of those pairs.

    Returns: the priors file's text (tab-separated ``LEX``/``FERF``/``FERR``/``HMMF``/``HMMR``
        lines), tokens lowercased as eflomal reads them.

    Raises:
        ConfigError: eflomal is not installed.
    """
    eflomal = _import_eflomal()
    seen: set[tuple[str, str]] = set()
    src_lines, tgt_lines, forward_lines, reverse_lines = [], [], [], []
    for src, tgt, fwd, rev in zip(src_tokens, tgt_tokens, forward, reverse):
        pair = " ".join(src).lower(), " ".join(tgt).lower()
        if pair in seen:
            continue
        seen.add(pair)
        src_lines.append(pair[0])
        tgt_lines.append(pair[1])
        forward_lines.append(" ".join(f"{i}-{j}" for i, j in fwd))
        reverse_lines.append(" ".join(f"{i}-{j}" for i, j in rev))
    text = io.StringIO()
    eflomal.write_priors(text, *eflomal.calculate_priors(src_lines, tgt_lines, forward_lines, reverse_lines))
    return text.getvalue()


def compute_links(
    cfg: DataConfig, src_texts: Sequence[str], tgt_texts: Sequence[str], tokenizer: Tokenizer, n_file_pairs: int | None = None
) -> list[np.ndarray]:
    """Piece links of every pair of the texts (no caching; see :func:`training_links`).

    Args:
        cfg: ``alignments`` (``eflomal`` or ``file``), ``alignments_unit``,
            ``alignments_symmetrize``, ``alignments_path``.
        n_file_pairs: ``file`` only: see :func:`read_word_links` (``n_first``).

    Returns: one (n_links, 2) int32 array per pair, columns src_piece, tgt_piece, indexes into
        ``tokenizer.encode_src`` / ``encode_tgt`` of the pair's texts.

    Raises:
        DataError: ``file``: see :func:`read_word_links`.  ConfigError: eflomal missing.
    """
    return _compute_links(cfg, src_texts, tgt_texts, tokenizer, n_file_pairs)[0]


def _compute_links(
    cfg: DataConfig, src_texts: Sequence[str], tgt_texts: Sequence[str], tokenizer: Tokenizer, n_file_pairs: int | None
) -> tuple[list[np.ndarray], str | None]:
    """:func:`compute_links`, and with ``eflomal`` the priors of its links (:func:`eflomal_priors`)."""
    priors = None
    if cfg.alignments == "eflomal":
        log.info(
            "aligning %d training pairs with eflomal on %ss, both directions (1-2 minutes per 30k short pairs on 2 cores)",
            len(src_texts), cfg.alignments_unit,
        )
        start = time.perf_counter()
        tokens = unit_tokens(tokenizer, src_texts, tgt_texts, cfg.alignments_unit)
        forward, reverse = run_eflomal(*tokens)
        links = [symmetrize(f, r, cfg.alignments_symmetrize) for f, r in zip(forward, reverse)]
        priors = eflomal_priors(*tokens, forward, reverse)
        log.info("eflomal aligned %d pairs in %.0f s", len(src_texts), time.perf_counter() - start)
        if cfg.alignments_unit == "piece":
            return [_as_array(pair) for pair in links], priors
    elif cfg.alignments == "file":
        links = read_word_links(cfg.alignments_path, src_texts, tgt_texts, n_file_pairs)
    else:
        raise ValueError(f"no links to compute for data.alignments={cfg.alignments!r}")
    owners: dict[tuple[str, str], tuple[list[int], list[int]]] = {}  # gold copies repeat their texts
    piece_links = []
    for src, tgt, word_links in zip(src_texts, tgt_texts, links):
        if (src, tgt) not in owners:
            owners[src, tgt] = piece_owners(tokenizer, src, tgt)
        piece_links.append(word_to_piece_links(word_links, *owners[src, tgt]))
    return piece_links, priors


def training_links(
    cfg: DataConfig,
    src_texts: Sequence[str],
    tgt_texts: Sequence[str],
    tokenizer: Tokenizer,
    kept: Sequence[int],
    cache_dir: str | Path,
    n_file_pairs: int | None = None,
) -> list[np.ndarray] | None:
    """Alignment targets of the kept training pairs, computed once and cached (the prepare_data hook).

    Links are computed for every pair of the training split (so a new ``data.max_len`` reuses
    the cache) and stored in ``cache_dir/alignments-HASH.npz``, the hash covering the texts,
    the tokenizer's model bytes and the settings (and the links file's bytes for ``file``).

    Args:
        cfg: the ``data`` config node; ``alignments=none`` returns None.
        src_texts, tgt_texts: the training split as the tokenizer sees it (gold copies included).
        kept: indexes into the texts of the pairs training keeps (:func:`mt.training.training_data.kept_pairs`), ascending.
        n_file_pairs: ``file`` only: pairs of ``data.train_split`` before any gold copies.

    Returns: one (n_links, 2) int64 array per kept pair (views of one array), columns src_piece,
        tgt_piece: positions in that pair's ``train_src`` / ``train_tgt`` ids (no BOS/EOS), sorted;
        an empty (0, 2) array = no links. None when ``cfg.alignments == "none"``.

    Raises:
        DataError: a bad links file (``FILE:LINE``).  ConfigError: eflomal missing.
    """
    if cfg.alignments == "none":
        return None
    if cfg.alignments == "eflomal":
        _import_eflomal()  # fail before hashing the corpus
    path = _cache_path(cfg, src_texts, tgt_texts, tokenizer, cache_dir)
    if path.exists():
        log.info("alignment targets from the cache %s", path)
    else:
        links, priors = _compute_links(cfg, src_texts, tgt_texts, tokenizer, n_file_pairs)
        if priors is not None:  # first, so that the links' file means both are there
            _write_atomically(_priors_path(path), gzip.compress(priors.encode(), mtime=0))
        save_links(links, path)
    links = load_links(path)  # the same arrays whether computed now or cached
    kept_links = [links[i] for i in kept]
    n_links = sum(len(pair) for pair in kept_links)
    n_with = sum(len(pair) > 0 for pair in kept_links)
    log.info("alignment targets: %d of %d kept pairs have links (%d links)", n_with, len(kept_links), n_links)
    return kept_links


def save_links(links: Sequence[np.ndarray], path: str | Path) -> None:
    """Store per-pair link arrays compactly (flattened links + offsets, ``.npz``), atomically."""
    flat = np.concatenate([np.asarray(pair).reshape(-1, 2) for pair in links]) if links else np.zeros((0, 2))
    dtype = np.int16 if flat.size == 0 or flat.max() < np.iinfo(np.int16).max else np.int32
    offsets = np.cumsum([0, *(len(pair) for pair in links)], dtype=np.int64)  # (n_pairs + 1,)
    buffer = io.BytesIO()
    np.savez(buffer, links=flat.astype(dtype), offsets=offsets)
    _write_atomically(Path(path), buffer.getvalue())


def training_priors(
    cfg: DataConfig, src_texts: Sequence[str], tgt_texts: Sequence[str], tokenizer: Tokenizer, cache_dir: str | Path
) -> bytes | None:
    """The eflomal priors (:func:`eflomal_priors`) of the links :func:`training_links` cached for
    these texts, gzip-compressed; None unless ``data.alignments=eflomal`` and they are cached."""
    if cfg.alignments != "eflomal":
        return None
    path = _priors_path(_cache_path(cfg, src_texts, tgt_texts, tokenizer, cache_dir))
    return path.read_bytes() if path.exists() else None


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_links(path: str | Path) -> list[np.ndarray]:
    """Inverse of :func:`save_links`: one (n_links, 2) int64 array per pair, views of one array."""
    with np.load(path, allow_pickle=False) as stored:
        flat, offsets = stored["links"].astype(np.int64), stored["offsets"]  # int64: torch indexes with it
    return [flat[begin:end] for begin, end in zip(offsets[:-1], offsets[1:])]


def _cache_path(
    cfg: DataConfig, src_texts: Sequence[str], tgt_texts: Sequence[str], tokenizer: Tokenizer, cache_dir: str | Path
) -> Path:
    return Path(cache_dir) / f"alignments-{_cache_key(cfg, src_texts, tgt_texts, tokenizer)}.npz"


def _priors_path(links_path: Path) -> Path:
    return links_path.with_suffix(".priors.gz")


def _cache_key(cfg: DataConfig, src_texts: Sequence[str], tgt_texts: Sequence[str], tokenizer: Tokenizer) -> str:
    settings = {"format": _CACHE_FORMAT, "alignments": cfg.alignments}
    if cfg.alignments == "eflomal":
        settings |= {"unit": cfg.alignments_unit, "symmetrize": cfg.alignments_symmetrize}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    if cfg.alignments == "file" and Path(cfg.alignments_path).is_file():
        digest.update(Path(cfg.alignments_path).read_bytes())
    state = tokenizer.state()
    digest.update(state["src_model"] + state["tgt_model"])
    for line in (*src_texts, *tgt_texts):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()[:16]


def _piece_tokens(processor, texts: Sequence[str]) -> list[list[str]]:
    """Pieces of each text as eflomal tokens: the piece string (an unknown piece's own surface,
    not ``<unk>``), or ``<ID>`` for one that is empty or holds whitespace (eflomal splits on it)."""
    texts = list(texts)
    return [
        [piece if piece.split() == [piece] else f"<{piece_id}>" for piece, piece_id in zip(pieces, ids)]
        for pieces, ids in zip(processor.encode(texts, out_type=str), processor.encode(texts))
    ]


def _pieces_of(owner: Sequence[int]) -> dict[int, list[int]]:
    pieces: dict[int, list[int]] = {}
    for position, word in enumerate(owner):
        if word != NO_WORD:
            pieces.setdefault(word, []).append(position)
    return pieces


def _as_array(links: Iterable[Link]) -> np.ndarray:
    return np.array(sorted(links), dtype=np.int32).reshape(-1, 2)


def _import_eflomal():
    try:
        import eflomal
    except ImportError:
        raise ConfigError(
            "config key 'data.alignments' = 'eflomal': the eflomal package is not installed; "
            "pip install -e \".[baselines]\""
        ) from None
    return eflomal
