"""Starting a run from a checkpoint (``train.init_from``), freezing all but the aligner
(``train.trainable=alignment``), and the inference commands reading the aligner by default.

Tiny runs through ``mt.training.train.train`` on a local corpus with a links file (no eflomal)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mt.alignment.align import align, default_method
from mt.model.aligner import LEXICON_PREFIX
from mt.model.checkpoint import load_checkpoint, load_for_inference
from mt.config import AlignerConfig, Config, DataConfig, TokenizerConfig, to_dict, validate
from mt.training.init_from import init_config
from mt.errors import ConfigError
from mt.training.train import train

from conftest import tiny_config

BIN = Path(sys.executable).parent
WORDS_DE = "Hund Katze Mann Frau Kind Ball Park Haus Auto Baum".split()
WORDS_EN = "dog cat man woman child ball park house car tree".split()


def write_corpus(folder: Path) -> None:
    """80 pairs of 'ein X sieht ein Y .' / 'a X sees a Y .' with their word links."""
    lines = {"de": [], "en": [], "links": []}
    for k in range(80):
        x, y = k % 10, (k * 3 + 1) % 10
        lines["de"].append(f"ein {WORDS_DE[x]} sieht ein {WORDS_DE[y]} .")
        lines["en"].append(f"a {WORDS_EN[x]} sees a {WORDS_EN[y]} .")
        lines["links"].append("0-0 1-1 2-2 3-3 4-4 5-5")
    for split, rows in (("train", slice(0, 80)), ("valid", slice(0, 8)), ("test", slice(8, 16))):
        for lang in ("de", "en"):
            (folder / f"{split}.{lang}").write_text("".join(line + "\n" for line in lines[lang][rows]))
    (folder / "links.txt").write_text("".join(line + "\n" for line in lines["links"]))


def base_config(folder: Path, out: str, **train) -> Config:
    cfg = Config()
    cfg.data = DataConfig(
        source="files", name=None, path=str(folder), src_lang="de", tgt_lang="en", train_split="train",
        valid_split="valid", test_split="test", data_dir=str(folder / "data"), max_len=30,
    )
    cfg.tokenizer = TokenizerConfig(vocab_size=60)
    cfg.model = tiny_config()
    cfg.decoding.beam_size = 2
    settings = dict(
        max_steps=6, max_minutes=0, valid_every=3, batch_tokens=256, num_threads=1, precision="fp32",
        average_last=0, average_best=0, patience=0, warmup_steps=2,
    )  # fmt: skip
    for key, value in {**settings, **train}.items():
        setattr(cfg.train, key, value)
    return cfg


def stage_config(folder: Path, init_from: Path, **train) -> Config:
    """What ``experiment=align`` sets, on a config whose model and data are the schema's defaults
    (init_from brings the checkpoint's)."""
    cfg = base_config(folder, "", init_from=str(init_from), trainable="alignment", alignment_weight=1.0, **train)
    cfg.model = tiny_config(d_model=512)  # a different model: must not matter, nothing given on the command line
    cfg.model.aligner = AlignerConfig(enabled=True, n_layers=1, n_heads=2, ffn_dim=64, dropout=0.0, lexicon=True)
    cfg.data = DataConfig(alignments="file", alignments_path=str(folder / "links.txt"), data_dir=str(folder / "data"))
    cfg.decoding.beam_size = 5
    return cfg


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("init")
    write_corpus(folder)
    train(base_config(folder, ""), folder / "base")
    return folder


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_init_from_starts_optimizer_warm_up_and_step_count_afresh_with_the_checkpoints_tokenizer(base_run):
    """One update at lr > 0 from the base run's last.pt (step 6, past its warm-up of 2). With a
    fresh AdamW and a fresh warm-up, every parameter without weight decay (biases, LayerNorm
    gains) moves from the checkpoint's value by the warm-up's first rate, lr / warmup_steps
    (Adam's first step is lr·g/(|g| + eps)); the checkpoint's moments or schedule would move
    them otherwise. The tokenizer is the checkpoint's although the config asks for another
    vocabulary size (not on the command line), and the saved config records the one used."""
    source = base_run / "base" / "checkpoints" / "last.pt"
    lr, warmup = 1e-3, 4
    cfg = base_config(base_run, "", init_from=str(source), lr=lr, warmup_steps=warmup, max_steps=1, valid_every=1)
    cfg.model = tiny_config(d_model=512)  # replaced by the checkpoint's model
    cfg.tokenizer = TokenizerConfig(vocab_size=70)  # replaced by the checkpoint's tokenizer
    train(cfg, base_run / "again")
    before, after = load_checkpoint(source), load_checkpoint(base_run / "again" / "checkpoints" / "last.pt")
    assert {float(s["step"]) for s in before["optimizer"]["state"].values()} == {6.0}
    assert after["step"] == 1 and {float(s["step"]) for s in after["optimizer"]["state"].values()} == {1.0}
    # a fresh Adam after one update: m = (1 − β1)·g and v = (1 − β2)·g², so m² = v·(1 − β1)²/(1 − β2)
    for state in after["optimizer"]["state"].values():
        torch.testing.assert_close(state["exp_avg"] ** 2, state["exp_avg_sq"] * 0.1**2 / 0.02, rtol=1e-4, atol=1e-30)
    moved = torch.cat([
        (after["model"][name] - tensor).abs().flatten()
        for name, tensor in before["model"].items() if tensor.dim() == 1 and tensor.is_floating_point()
    ])  # fmt: skip
    moved = moved[moved > 0]
    first_lr = lr / warmup  # inverse_sqrt's factor at the first update: min(1/warmup, sqrt(warmup))
    assert len(moved) > 100
    assert float(moved.max()) == pytest.approx(first_lr, rel=1e-3)
    assert float(moved.median()) == pytest.approx(first_lr, rel=1e-2)
    assert after["model_config"]["d_model"] == 32
    assert (base_run / "again" / "sentencepiece.model").read_bytes() == (base_run / "base" / "sentencepiece.model").read_bytes()
    assert after["tokenizer"] == before["tokenizer"]
    assert after["config"]["tokenizer"] == before["config"]["tokenizer"] and after["config"]["tokenizer"]["vocab_size"] == 60
    # given on the command line, another vocabulary size is refused before any data work
    with pytest.raises(ConfigError, match=r"config key 'tokenizer\.vocab_size' = 70 contradicts train\.init_from=") as error:
        train(cfg, base_run / "refused", ["tokenizer.vocab_size"])
    assert "\n" not in str(error.value)


def test_the_aligner_stage_changes_nothing_but_the_aligner(base_run):
    train(stage_config(base_run, base_run / "base", max_steps=12, lr=3e-3), base_run / "stage")  # the run dir: its best.pt
    before = load_checkpoint(base_run / "base" / "checkpoints" / "best.pt")["model"]
    after = load_checkpoint(base_run / "stage" / "checkpoints" / "last.pt")
    aligner_keys = {k for k in after["model"] if k.startswith("aligner.")}
    assert aligner_keys and set(after["model"]) - aligner_keys == set(before)
    for name, tensor in before.items():
        assert torch.equal(after["model"][name], tensor), name
    counts = {k for k in aligner_keys if k.startswith(LEXICON_PREFIX) and not k.endswith(".weights")}  # buffers
    assert after["model"]["aligner.lexicon.counts"].sum() > 0  # the teacher's links were counted
    n_aligner = sum(after["model"][k].numel() for k in aligner_keys - counts)
    n_optimized = sum(state["exp_avg"].numel() for state in after["optimizer"]["state"].values())
    assert n_optimized == n_aligner  # optimizer state for the aligner only
    records = metrics(base_run / "stage")
    assert all("align_loss" in r and "imitation_aer" in r and "xent_loss" not in r for r in records)
    assert records[-1]["align_loss"] < records[0]["align_loss"]
    assert len({r["val_bleu"] for r in records}) == 1  # the translation cannot change
    # the test translations are the base model's, with the base run's decoding settings
    base_scores = json.loads((base_run / "base" / "test_scores.json").read_text())
    stage_scores = json.loads((base_run / "stage" / "test_scores.json").read_text())
    assert stage_scores["bleu"] == base_scores["bleu"] and stage_scores["beam_size"] == 2
    assert (base_run / "stage" / "test.hyp.en").read_text() == (base_run / "base" / "test.hyp.en").read_text()


def test_mt_align_and_translate_read_the_aligner_by_default(base_run):
    checkpoint = base_run / "stage" / "checkpoints" / "last.pt"
    model, tokenizer, info = load_for_inference(checkpoint)
    assert default_method(info) == "aligner"
    pair = ("ein Hund sieht ein Ball .", "a dog sees a ball .")
    expected = align(model, tokenizer, [pair[0]], [pair[1]], method="aligner")[0]
    attention = align(model, tokenizer, [pair[0]], [pair[1]], method="attention")[0]
    assert expected.aligner is not None and not (expected.word_matrix == attention.word_matrix).all()
    result = subprocess.run([str(BIN / "mt-align"), str(checkpoint), *pair], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    pharaoh = result.stdout.strip().splitlines()[-1]
    assert pharaoh == " ".join(f"{i}-{j}" for i, j in expected.links)
    result = subprocess.run(
        [str(BIN / "mt-translate"), str(checkpoint), pair[0], "--output-format", "jsonl", "--align"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    hypothesis = record["hypotheses"][0]["text"]
    own = align(model, tokenizer, [pair[0]], [hypothesis], method="aligner")[0]
    assert record["hypotheses"][0]["alignment"]["links"] == [list(link) for link in own.links]


def test_model_keys_given_on_the_command_line_must_agree_with_the_checkpoint():
    checkpoint = {
        "model_config": to_dict(tiny_config()),
        "decoding": {"beam_size": 3},
        "config": {"data": {"src_lang": "fr", "tgt_lang": "en", "max_len": 40, "data_dir": "elsewhere"}},
    }
    cfg = Config()
    cfg.model.d_model, cfg.model.dropout, cfg.model.dropout_masks, cfg.data.max_len = 64, 0.3, "bernoulli", 50
    result = init_config(checkpoint, cfg, ["model.dropout", "model.dropout_masks", "data.max_len"], "ckpt.pt")
    assert result.model.d_model == 32 and result.model.dropout == 0.3  # dropout may change, the shape comes along
    assert result.model.dropout_masks == "bernoulli"
    assert (result.data.src_lang, result.data.max_len, result.data.data_dir) == ("fr", 50, "data")
    assert result.decoding.beam_size == 3
    with pytest.raises(ConfigError, match="config key 'model.d_model' = 64 contradicts train.init_from=ckpt.pt"):
        init_config(checkpoint, cfg, ["model.d_model"], "ckpt.pt")
    with pytest.raises(ConfigError, match="'model.encoder.n_layers'"):
        init_config(checkpoint, cfg, ["model.encoder"], "ckpt.pt")  # a group stands for its keys
    validate(result)


def test_tokenizer_keys_given_on_the_command_line_must_agree_with_the_checkpoint():
    """The checkpoint's tokenizer settings replace the config's; the sampling keys are the run's."""
    checkpoint = {"model_config": to_dict(tiny_config()), "config": {"tokenizer": to_dict(TokenizerConfig(vocab_size=60))}}
    cfg = Config()
    cfg.model = tiny_config()
    cfg.tokenizer = TokenizerConfig(vocab_size=70, model_type="bpe", alpha=0.3, nbest_size=-1)
    cfg.data.max_len = 50  # below tiny_config's max_positions
    result = init_config(checkpoint, cfg, ["tokenizer.alpha", "tokenizer.nbest_size"], "ckpt.pt")
    assert result.tokenizer == TokenizerConfig(vocab_size=60, alpha=0.3, nbest_size=-1)
    for key, value in (("vocab_size", "70"), ("model_type", "'bpe'")):
        with pytest.raises(ConfigError, match=rf"^config key 'tokenizer\.{key}' = {value} contradicts train\.init_from=ckpt\.pt") as error:
            init_config(checkpoint, cfg, [f"tokenizer.{key}"], "ckpt.pt")
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"'tokenizer\.vocab_size' = 70: .* did not save"):  # nothing to check against
        init_config({"model_config": checkpoint["model_config"]}, cfg, ["tokenizer.vocab_size"], "ckpt.pt")


def test_aligner_keys_are_applied_or_refused_never_ignored():
    plain = {"model_config": to_dict(tiny_config())}
    cfg = Config()
    cfg.model = tiny_config()
    cfg.data.max_len = 50  # below tiny_config's max_positions
    cfg.model.aligner.lexicon = False
    # no aligner in the checkpoint nor in the config: the override would do nothing
    with pytest.raises(ConfigError, match=r"^config key 'model\.aligner\.lexicon' = False has no effect: .* has no aligner"):
        init_config(plain, cfg, ["model.aligner.lexicon"], "ckpt.pt")
    assert not init_config(plain, cfg, ["model.aligner.enabled"], "ckpt.pt").model.aligner.enabled  # says what is so
    assert not init_config(plain, cfg, ["model"], "ckpt.pt").model.aligner.enabled  # a model group names no aligner key
    # the checkpoint's aligner stays as it is unless the config brings one (experiment=align)
    aligned = tiny_config()
    aligned.aligner = AlignerConfig(enabled=True, n_heads=2, ffn_dim=64, dropout=0.1)
    aligned = {"model_config": to_dict(aligned)}
    cfg.model.aligner = AlignerConfig(n_heads=2, ffn_dim=64, dropout=0.3)
    with pytest.raises(ConfigError, match=r"^config key 'model\.aligner\.dropout' = 0\.3 contradicts .* whose aligner has 0\.1"):
        init_config(aligned, cfg, ["model.aligner.dropout"], "ckpt.pt")
    with pytest.raises(ConfigError, match=r"^config key 'model\.aligner\.enabled' = False contradicts"):
        init_config(aligned, cfg, ["model.aligner.enabled"], "ckpt.pt")
    assert init_config(aligned, cfg, [], "ckpt.pt").model.aligner.dropout == 0.1
    cfg.model.aligner.enabled = True
    result = init_config(aligned, cfg, ["model.aligner.dropout"], "ckpt.pt")
    assert result.model.aligner.enabled and result.model.aligner.dropout == 0.3


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["train.trainable=alignment"], "train.trainable"),  # no aligner
        (["train.trainable=alignment", "model.aligner.enabled=true"], "train.trainable"),  # nothing to start from
        (["train.trainable=everything"], "train.trainable"),
        (["model.aligner.inputs=both_ways"], "model.aligner.inputs"),
        (["experiment=align", "train.init_from=x.pt", "train.alignment_weight=0"], "train.alignment_weight"),
        (["model.aligner.enabled=true", "model.aligner.lexicon=true"], "model.aligner.lexicon"),  # no links to count
        (["train.agreement_weight=1"], "train.agreement_weight"),  # an aligner stage's term
        (["experiment=align", "train.init_from=x.pt", "train.agreement_weight=1"], "train.agreement_weight"),  # no partner
        (["experiment=align", "train.init_from=x.pt", "train.agreement_weight=-1", "train.agreement_with=y"], "train.agreement_weight"),
    ],
)
def test_invalid_stage_settings_name_their_key(overrides, key):
    from hydra import compose, initialize_config_dir

    from mt.config import from_hydra

    from conftest import REPO

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        from_hydra(cfg)


def test_init_from_a_missing_checkpoint_is_one_line(tmp_path):
    mt_train = BIN / "mt-train"
    args = [str(mt_train), "experiment=align", f"train.init_from={tmp_path / 'nothing'}", f"hydra.run.dir={tmp_path / 'run'}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("mt-train: error: train.init_from: checkpoint ")
    assert "Traceback" not in result.stderr


def test_an_agreement_stage_learns_against_the_other_directions_frozen_aligner(base_run):
    reverse = base_config(base_run, "")
    reverse.data.src_lang, reverse.data.tgt_lang = "en", "de"
    train(reverse, base_run / "base-en-de")
    train(stage_config(base_run, base_run / "base-en-de", max_steps=6, lr=3e-3), base_run / "stage-en-de")
    stage = stage_config(base_run, base_run / "base", max_steps=6, lr=3e-3, agreement_weight=4.0,
                         agreement_with=str(base_run / "stage-en-de"))  # fmt: skip
    train(stage, base_run / "agreement")
    records = metrics(base_run / "agreement")
    assert all(r["agree_loss"] > 0 and "align_loss" in r for r in records)
    assert records[-1]["train_loss"] == pytest.approx(records[-1]["align_loss"] + 4.0 * records[-1]["agree_loss"], rel=1e-4)
    # a partner of the same direction, or one without an aligner, is refused in one line before training
    for partner_dir, message in ((base_run / "agreement", "translates de→en, not en→de"), (base_run / "base-en-de", "has no aligner")):
        stage.train.agreement_with = str(partner_dir)
        with pytest.raises(ConfigError, match=f"^train.agreement_with={partner_dir}: {message}"):
            train(stage, base_run / "refused")
