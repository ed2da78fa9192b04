"""Shared fixtures: tiny models on random weights, and where to find the Multi30k files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from mt.config import (
    AttentionConfig,
    DecoderConfig,
    EncoderConfig,
    ModelConfig,
    TokenizerConfig,
    register_with_hydra,
)
from mt.model.transformer import Transformer
from mt.data.tokenizer import Tokenizer

# no per-example deadline: a loaded machine must not fail a test on timing (speed lives in scripts/)
settings.register_profile("mt", deadline=None)
settings.load_profile("mt")

register_with_hydra()  # the tests compose configs/train.yaml, which starts from the schema's defaults

_importorskip = pytest.importorskip


def _import_or_fail(modname: str, *args, **kwargs):
    """``pytest.importorskip`` under CI (``CI`` set, as ``.ci/run`` does): CI installs every
    extra the tests import, so a missing module is a broken set-up that fails the test (or the
    module's collection) instead of hiding behind a skip."""
    try:
        return _importorskip(modname, *args, **kwargs)
    except pytest.skip.Exception as skipped:
        message = f"CI installs every test dependency (.ci/run), but {skipped.msg}"
        raise pytest.fail.Exception(message, pytrace=False) from None


if os.environ.get("CI", "").lower() not in ("", "0", "false"):
    pytest.importorskip = _import_or_fail

REPO = Path(__file__).resolve().parent.parent
SHARED_MIRROR = REPO.parent / "shared" / "corpora" / "multi30k"
VOCAB = 40
# a joint German/English text for tiny sentencepiece models
BILINGUAL_TEXTS = ["Ein Hund rennt im Park.", "Zwei Männer spielen Fußball.", "A dog runs in the park.", "Two men play soccer."]


def tiny_config(**overrides) -> ModelConfig:
    """A 2+2-layer model of width 32 with dropout off, so two passes can be compared exactly."""

    def site(n_heads: int = 4) -> AttentionConfig:
        return AttentionConfig(n_heads=n_heads, dropout=0.0)

    cfg = ModelConfig(
        d_model=32,
        ffn_dim=64,
        dropout=0.0,
        max_positions=64,
        encoder=EncoderConfig(n_layers=2, self_attention=site()),
        decoder=DecoderConfig(n_layers=2, self_attention=site(), cross_attention=site(2)),
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="session")
def bilingual_tokenizer() -> Tokenizer:
    """A joint 60-piece sentencepiece model of :data:`BILINGUAL_TEXTS`."""
    return Tokenizer.train(BILINGUAL_TEXTS * 20, BILINGUAL_TEXTS * 20, TokenizerConfig(vocab_size=60))


def random_model(tokenizer: Tokenizer, **overrides) -> Transformer:
    """A :func:`tiny_config` model (seed 0, random weights, eval mode) for ``tokenizer``'s vocabulary."""
    torch.manual_seed(0)
    cfg = tiny_config(**overrides)
    return Transformer(cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).eval()


def save_inference_checkpoint(model: Transformer, tokenizer: Tokenizer, path: Path, **decoding) -> str:
    """Write ``model`` and ``tokenizer`` to ``path`` as a de→en inference checkpoint with the
    given decoding defaults; returns the path as a string (as the console scripts take it)."""
    from mt.config import to_dict
    from mt.model.checkpoint import save_checkpoint

    state = {
        "model_config": to_dict(model.cfg),
        "model": model.state_dict(),
        "tokenizer": tokenizer.state(),
        "data": {"src_lang": "de", "tgt_lang": "en"},
        "decoding": decoding,
    }
    save_checkpoint(state, path)
    return str(path)


@pytest.fixture
def tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_config(), VOCAB, VOCAB, pad_id=0).eval()


def _network_reachable() -> bool:
    try:
        socket.create_connection(("raw.githubusercontent.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def multi30k_mirror() -> str | None:
    """The Multi30k mirror folder (MT_DATA_MIRROR, else ../shared/corpora/multi30k), or None to
    download; skips when there is neither a mirror nor a network."""
    mirror = os.environ.get("MT_DATA_MIRROR")
    if mirror and Path(mirror).is_dir():
        return mirror
    if SHARED_MIRROR.is_dir():
        return str(SHARED_MIRROR)
    if _network_reachable():
        return None
    pytest.skip("no Multi30k mirror (set MT_DATA_MIRROR) and no network to download it")
