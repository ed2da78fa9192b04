"""sentencepiece round trip, checkpoints (and the tokenizer cache) that travel with their tokenizer and refuse code."""

import os
import pickle

import pytest
import torch

from mt.model.checkpoint import load_checkpoint, load_for_inference, save_checkpoint
from mt.config import TokenizerConfig, to_dict
from mt.errors import CheckpointError
from mt.model.transformer import Transformer
from mt.data.tokenizer import Tokenizer
from mt.training.training_data import load_tokenizer

from conftest import tiny_config

TEXTS = ["Ein Hund rennt im Park.", "Zwei Männer spielen Fußball.", "Eine Frau liest ein Buch."] * 30


@pytest.mark.parametrize("joint", [True, False])
def test_tokenizer_round_trip_and_state(joint):
    tokenizer = Tokenizer.train(TEXTS, [t.upper() for t in TEXTS], TokenizerConfig(vocab_size=50, joint=joint))
    ids = tokenizer.encode_tgt(["EIN HUND RENNT."])
    assert tokenizer.decode_tgt(ids) == ["EIN HUND RENNT."]
    assert all(i not in (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) for i in ids[0])
    again = Tokenizer.from_state(tokenizer.state())
    assert again.encode_src(["Ein Hund"]) == tokenizer.encode_src(["Ein Hund"])
    assert again.joint == joint


def _checkpoint_state():
    tokenizer = Tokenizer.train(TEXTS, TEXTS, TokenizerConfig(vocab_size=50))
    cfg = tiny_config()
    torch.manual_seed(0)
    model = Transformer(cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id)
    return model, {
        "model_config": to_dict(cfg),
        "model": model.state_dict(),
        "tokenizer": tokenizer.state(),
        "data": {"src_lang": "de", "tgt_lang": "en"},
        "decoding": {"beam_size": 3},
        "step": 7,
    }


def test_checkpoint_round_trip_restores_the_same_model(tmp_path):
    model, state = _checkpoint_state()
    save_checkpoint(state, tmp_path / "checkpoints" / "best.pt")
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["best.pt"]  # no temporary left
    loaded, tokenizer, info = load_for_inference(tmp_path)  # a run dir resolves to its best.pt
    assert info["decoding"].beam_size == 3 and info["src_lang"] == "de" and info["step"] == 7
    src = torch.tensor([[5, 6, 7, 3]])
    tgt = torch.tensor([[2, 8, 9]])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(src, tgt), loaded(src, tgt))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def recorded_torch_loads(monkeypatch) -> list[dict]:
    """Record the keyword arguments of every ``torch.load`` call (and still load).

    Since torch 2.6 ``weights_only=True`` is torch.load's default, so a refusal test alone passes
    on the pinned torch even without the keyword; pyproject accepts torch >= 2.4, where the
    default is False and the same checkpoint would run its code. The keyword must be passed."""
    calls = []
    real_load = torch.load

    def load(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    return calls


def test_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "mt-checkpoint", "payload": _RunsCode()}, path)
    loads = recorded_torch_loads(monkeypatch)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    _, state = _checkpoint_state()
    save_checkpoint(state, tmp_path / "good.pt")
    assert load_checkpoint(tmp_path / "good.pt")["step"] == 7
    assert len(loads) == 2 and all(kwargs.get("weights_only") is True for kwargs in loads)


def test_tokenizer_cache_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_set = {"src": TEXTS, "tgt": TEXTS}
    load_tokenizer(TokenizerConfig(vocab_size=50), train_set, tmp_path)  # trains and caches
    (cache,) = tmp_path.glob("sentencepiece-*.pt")
    loads = recorded_torch_loads(monkeypatch)
    assert load_tokenizer(TokenizerConfig(vocab_size=50), train_set, tmp_path).encode_src(["Ein Hund"])
    torch.save({"payload": _RunsCode()}, cache)
    with pytest.raises(pickle.UnpicklingError):
        load_tokenizer(TokenizerConfig(vocab_size=50), train_set, tmp_path)
    assert not (tmp_path / "PWNED").exists()
    assert len(loads) == 2 and all(kwargs.get("weights_only") is True for kwargs in loads)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", pickle.dumps({"a": 1})])
def test_corrupt_or_foreign_checkpoints_give_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_a_save_that_dies_midway_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "model": {"w": torch.ones(3)}}, path)

    def dies_midway(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2, "model": {"w": torch.zeros(3)}}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_hydra_full_error_shows_the_traceback(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "mt-translate"), str(tmp_path / "missing.pt"), "x"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode != 0 and "Traceback" in result.stderr and "CheckpointError" in result.stderr


def test_two_runs_saving_the_same_tokenized_cache_at_once_both_succeed(tmp_path, bilingual_tokenizer, monkeypatch):
    import pathlib

    import datasets

    from mt.training.training_data import tokenize

    pairs = datasets.Dataset.from_dict({"src": ["ein Hund", "eine Katze"], "tgt": ["a dog", "a cat"]})
    first = tokenize(pairs, bilingual_tokenizer, tmp_path)  # the other run, done a moment earlier
    (cache,) = tmp_path.iterdir()
    real_exists = pathlib.Path.exists
    monkeypatch.setattr(pathlib.Path, "exists", lambda self: False if self == cache else real_exists(self))
    second = tokenize(pairs, bilingual_tokenizer, tmp_path)  # looked before the other run had saved
    assert second["src_ids"] == first["src_ids"] and second["tgt_ids"] == first["tgt_ids"]
    assert [p.name for p in tmp_path.iterdir()] == [cache.name]  # its own copy removed
