"""Every config file composes and fits the schema; bad values stop at start-up with one line."""

import copy
import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mt.data.batching import collate
from mt.config import (
    Config,
    ModelConfig,
    from_hydra,
    model_config_from_dict,
    model_preset,
    subword_sampling,
    to_dict,
    without_removed_options,
)
from mt.errors import ConfigError
from mt.model.transformer import Transformer
from mt.training.objective import sequence_loss

from conftest import REPO

CONFIGS = REPO / "configs"
CONFIG_DIR = str(CONFIGS)
GROUP_FILES = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent != CONFIGS)
REQUIRED = {"data/hf": ["data.path=corpus"], "data/files": ["data.path=corpus"], "experiment/align": ["train.init_from=run"]}  # their ??? values


def compose_config(overrides=()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_file_composes_into_the_schema_builds_a_model_and_trains(path):
    group = str(path.parent.relative_to(CONFIGS))
    overrides = [f"{group}={path.stem}"] + ([] if group == "experiment" else ["experiment=smoke"])
    overrides += REQUIRED.get(f"{group}/{path.stem}", [])
    config = from_hydra(compose_config(overrides))
    assert isinstance(config, Config)
    torch.manual_seed(0)
    model = Transformer(config.model, 100, 100, pad_id=0)
    assert len(model.encoder_layers) == config.model.encoder.n_layers
    # a few steps at smoke size on a fixed random batch: the loss must come down
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    src = [[int(t) for t in torch.randint(4, 100, (n,))] for n in (20, 7, 12)]
    tgt = [[int(t) for t in torch.randint(4, 100, (n,))] for n in (15, 9, 4)]
    batch = collate(src, tgt, [0, 1, 2])
    losses = []
    for _ in range(5):
        loss, n_tokens = sequence_loss(model, batch, config.train.label_smoothing)
        optimizer.zero_grad()
        (loss / n_tokens).backward()
        optimizer.step()
        losses.append(float(loss.detach()) / n_tokens)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]


def flat(node: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    items = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def test_default_recipe_is_the_schema(monkeypatch):
    """``mt-train`` with no overrides trains ``Config()``: defaults live in mt/config.py only."""
    monkeypatch.delenv("MT_DATA_MIRROR", raising=False)  # the one default read from the environment
    composed = flat(dataclasses.asdict(from_hydra(compose_config())))
    schema = flat(dataclasses.asdict(Config()))
    differences = {key: (composed.get(key), schema.get(key)) for key in composed.keys() | schema.keys()}
    differences = {key: pair for key, pair in differences.items() if pair[0] != pair[1]}
    assert not differences, f"configs/ (composed, mt/config.py): {differences}"


def package_of(path: Path) -> str:
    """The key prefix of a config file's values: its group (``model.encoder.self_attention.``),
    or none for the root config and ``# @package _global_`` files (experiments)."""
    group = path.parent.relative_to(CONFIGS)
    return "" if not group.parts or "@package _global_" in path.read_text() else ".".join(group.parts) + "."


def identity_keys(path: Path) -> set[str]:
    """Keys that name the option, allowed to repeat a schema default: an attention file's
    ``type``, a data file's ``source``."""
    group = str(path.parent.relative_to(CONFIGS))
    return {"type"} if group.endswith("attention") else {"source"} if group == "data" else set()


@pytest.mark.parametrize("path", [CONFIGS / "train.yaml", *GROUP_FILES], ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_files_hold_only_differences_from_the_schema(path):
    """A YAML value equal to the schema's default is a second copy of it, free to drift: each
    file holds only differences (``???``, required, always differs)."""
    package = package_of(path)
    schema = flat(dataclasses.asdict(Config()))
    values = flat(OmegaConf.to_container(OmegaConf.load(path)) or {})
    repeated = [
        f"{package}{key}: {value!r}"
        for key, value in values.items()
        if key != "defaults" and not key.startswith("hydra.") and key not in identity_keys(path)
        and schema.get(f"{package}{key}", object()) == value
    ]
    assert not repeated, f"{path.relative_to(REPO)} repeats defaults of mt/config.py (drop them): {repeated}"


def test_overrides_reach_each_attention_site():
    config = from_hydra(
        compose_config(
            [
                "model.d_model=64",
                "model.encoder.n_layers=1",
                "model.decoder.cross_attention.n_heads=2",
                "model.encoder.self_attention.n_heads=8",
                "data.src_lang=en",
                "data.tgt_lang=de",
            ]
        )
    )
    assert config.model.decoder.cross_attention.n_heads == 2
    assert config.model.encoder.self_attention.n_heads == 8
    assert config.model.decoder.self_attention.n_heads == 4
    model = Transformer(config.model, 100, 100, pad_id=0)
    assert model.decoder_layers[0].cross_attention.n_heads == 2
    assert model.encoder_layers[0].self_attention.head_dim == 8


# name → d_model, ffn_dim, layers per side, heads at every site, dropout (Vaswani et al. 2017, Table 3)
PRESETS = {
    "transformer": (256, 1024, 3, 4, 0.1),
    "base": (512, 2048, 6, 8, 0.1),
    "big": (1024, 4096, 6, 16, 0.3),
}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(
    "variants",
    [
        [],
        ["model/decoder/cross_attention=topk"],
        ["model/encoder/self_attention=local", "model/decoder/self_attention=topk"],
    ],
    ids=["full", "topk-cross", "local-topk-self"],
)
def test_model_presets_set_heads_at_every_site_whatever_the_variant(preset, variants):
    model = from_hydra(compose_config([f"model={preset}", *variants])).model
    d_model, ffn_dim, n_layers, n_heads, dropout = PRESETS[preset]
    assert (model.d_model, model.ffn_dim, model.dropout) == (d_model, ffn_dim, dropout)
    assert (model.encoder.n_layers, model.decoder.n_layers) == (n_layers, n_layers)
    sites = {
        "model/encoder/self_attention": model.encoder.self_attention,
        "model/decoder/self_attention": model.decoder.self_attention,
        "model/decoder/cross_attention": model.decoder.cross_attention,
    }
    assert [site.n_heads for site in sites.values()] == [n_heads] * 3
    chosen = dict(variant.split("=") for variant in variants)
    assert [site.type for site in sites.values()] == [chosen.get(group, "full") for group in sites]


def test_model_preset_base_builds_transformer_base():
    cfg = model_preset("base")
    assert cfg == from_hydra(compose_config(["model=base"])).model
    model = Transformer(cfg, 8000, 8000, pad_id=0)
    assert len(model.encoder_layers) == len(model.decoder_layers) == 6
    for layer in model.decoder_layers:
        for attention in (layer.self_attention, layer.cross_attention):
            assert (attention.n_heads, attention.head_dim) == (8, 64)
        assert layer.ffn.in_proj.weight.shape == (2048, 512)
    # 65M parameters with a shared 37k vocabulary (Vaswani et al. 2017, Table 3); 8k: 29k rows of 512 fewer
    n_parameters = sum(p.numel() for p in model.parameters())
    assert abs(n_parameters - (65e6 - 29_000 * 512)) < 0.1 * 65e6


def test_unknown_model_preset_lists_the_presets():
    with pytest.raises(ValueError, match="valid: base, big, transformer"):
        model_preset("huge")


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.decoder.cross_attention.n_heads=3"], "model.decoder.cross_attention.n_heads"),
        (["model.encoder.self_attention.type=sparse"], "model.encoder.self_attention.type"),
        (["data.src_lang=xx"], "data.src_lang"),
        (["data.tgt_lang=de"], "data.tgt_lang"),
        (["train.precision=fp8"], "train.precision"),
        (["model.dropout=1.5"], "model.dropout"),
        (["train.lr=abc"], "train.lr"),
        (["tokenizer.input_sentence_size=50"], "tokenizer.input_sentence_size"),  # sentencepiece refuses 1..100
        (["tokenizer.sampling=true", "tokenizer.alpha=0"], "tokenizer.alpha"),
        (["tokenizer.alpha=0"], "tokenizer.alpha"),  # the default samples subwords on a loaded corpus
        (["tokenizer.nbest_size=0"], "tokenizer.nbest_size"),
        (["tokenizer.sampling=true", "data.alignments=eflomal"], "tokenizer.sampling"),  # links are per piece
        (["tokenizer.sampling=true", "data=files", "data.path=x", "data.streaming=true"], "tokenizer.sampling"),
        (["train.lr_schedule=exp"], "train.lr_schedule"),
        (["train.lr_schedule=cosine", "train.max_minutes=0", "train.patience=5"], "train.lr_schedule"),  # no end to anneal to
        (["train.lr_schedule=cosine", "train.min_lr=0.01"], "train.min_lr"),  # above train.lr
    ],
)
def test_invalid_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        from_hydra(compose_config(overrides))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], True),  # the default recipe: a loaded corpus without links
        (["tokenizer.sampling=false"], False),
        (["data.alignments=eflomal"], False),  # the links are per piece: the best segmentation
        (["data=files", "data.path=x", "data.streaming=true"], False),  # no texts to segment anew
        (["experiment=align", "train.init_from=run"], False),
        (["experiment=recipe_v1"], False),
    ],
)
def test_tokenizer_sampling_null_samples_wherever_it_can(overrides, expected):
    assert subword_sampling(from_hydra(compose_config(overrides))) is expected


def test_the_recipe_before_issue_25_differs_from_the_default_only_in_sampling_and_length_penalty():
    default, old = (to_dict(from_hydra(compose_config(o))) for o in ([], ["experiment=recipe_v1"]))
    assert old["tokenizer"].pop("sampling") is False and default["tokenizer"].pop("sampling") is None
    assert old["decoding"].pop("length_penalty") == 1.0 and default["decoding"].pop("length_penalty") == 1.4
    assert old == default


def test_mt_train_reports_bad_config_in_one_line_before_data_work(tmp_path):
    mt_train = Path(sys.executable).parent / "mt-train"
    result = subprocess.run(
        [str(mt_train), "model.d_model=250", f"hydra.run.dir={tmp_path / 'run'}", f"data.data_dir={tmp_path / 'data'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mt-train: error: config key 'model.")
    assert "must divide model.d_model = 250" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # stopped before fetching any data


@pytest.mark.parametrize("overrides, folder", [([], "default"), (["experiment=smoke"], "smoke")])
def test_run_dir_is_named_after_the_experiment(overrides, folder, tmp_path):
    mt_train = Path(sys.executable).parent / "mt-train"
    # a bad value stops the run right after Hydra made its run dir
    args = [str(mt_train), *overrides, "train.lr=-1", f"data.data_dir={tmp_path / 'data'}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    run_dirs = [path.parent for path in (tmp_path / "outputs").glob("*/*/*/.hydra")]
    assert [run_dir.relative_to(tmp_path).parts[:2] for run_dir in run_dirs] == [("outputs", folder)]


OLD_CHECKPOINT = REPO / "tests" / "fixtures" / "checkpoint-2dea679.pt"  # written before three options were removed
REMOVED_MODEL_KEYS = ("word_lexicon", "lexicon_leave_one_out")  # under model.aligner


def old_checkpoint() -> dict:
    return torch.load(OLD_CHECKPOINT, map_location="cpu", weights_only=True)


def test_a_checkpoint_saved_before_options_were_removed_still_gives_its_model_config():
    saved = old_checkpoint()["model_config"]
    assert all(saved["aligner"][key] is False for key in REMOVED_MODEL_KEYS)  # what the fixture holds
    expected = copy.deepcopy(saved)
    for key in REMOVED_MODEL_KEYS:
        del expected["aligner"][key]
    assert "dropout_masks" not in saved  # a key added since: its default
    expected["dropout_masks"] = ModelConfig().dropout_masks
    assert to_dict(model_config_from_dict(saved)) == expected
    assert all(key in saved["aligner"] for key in REMOVED_MODEL_KEYS)  # the checkpoint's dict is left as it was


@pytest.mark.parametrize("key", REMOVED_MODEL_KEYS)
def test_a_checkpoint_with_a_removed_option_on_is_refused_in_one_line(key):
    saved = old_checkpoint()["model_config"]
    saved["aligner"][key] = True
    with pytest.raises(ConfigError, match=rf"^config key 'model\.aligner\.{key}' = True: .*option was removed") as error:
        model_config_from_dict(saved)
    assert "\n" not in str(error.value)


def test_a_saved_root_config_drops_rdrop_alpha_when_off_and_refuses_it_on():
    saved = old_checkpoint()["config"]
    assert saved["train"]["rdrop_alpha"] == 0.0
    kept = without_removed_options(saved)
    assert "rdrop_alpha" not in kept["train"] and not set(kept["model"]["aligner"]) & set(REMOVED_MODEL_KEYS)
    assert {k: v for k, v in saved["train"].items() if k != "rdrop_alpha"} == kept["train"]
    saved["train"]["rdrop_alpha"] = 5.0
    with pytest.raises(ConfigError, match=r"^config key 'train\.rdrop_alpha' = 5\.0: .*option was removed"):
        without_removed_options(saved)


def test_resuming_a_run_trained_with_a_removed_option_on_is_refused(tmp_path):
    from mt.training.train import load_resume

    state = load_resume(str(OLD_CHECKPOINT), tmp_path)  # off: resumes, the key dropped
    assert "rdrop_alpha" not in state["config"]["train"] and state["step"] == old_checkpoint()["step"]
    state = old_checkpoint()
    state["config"]["train"]["rdrop_alpha"] = 5.0
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ConfigError, match=r"^config key 'train\.rdrop_alpha' = 5\.0: .*option was removed"):
        load_resume("auto", tmp_path)
