"""How a run that starts from a checkpoint gets its config: ``train.init_from`` (a new run from
another run's weights, e.g. the aligner stage) and resuming such a run.

Every key the command line gives is applied or refused with one line naming it, never ignored:
the checkpoint fixes the model's shape and its tokenizer, so a ``model.*`` or ``tokenizer.*``
override that contradicts them is a :class:`~mt.errors.ConfigError`, as is a
``model.aligner.*`` override on a model without an aligner.

An aligner stage with ``train.agreement_weight`` also reads a second checkpoint, the other
direction's stage (:func:`agreement_partner`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from mt.config import (
    Config,
    DataConfig,
    DecodingConfig,
    TokenizerConfig,
    model_config_from_dict,
    to_dict,
    validate,
)
from mt.errors import CheckpointError, ConfigError
from mt.data.tokenizer import Tokenizer
from mt.model.checkpoint import load_for_inference
from mt.model.transformer import Transformer
from mt.training.training_data import SAMPLING_KEYS

# model keys a run started from a checkpoint may change: they leave the weights' meaning alone
_INIT_CHANGEABLE = ("dropout", "ffn_dropout", "dropout_masks")
# data keys that describe this run, not the data the checkpoint learnt from: never inherited
_RUN_DATA_KEYS = ("data_dir", "mirror", "alignments", "alignments_path", "alignments_symmetrize", "alignments_unit")


def init_config(checkpoint: dict, cfg: Config, given: Sequence[str], source: str) -> Config:
    """The config of a run that starts from a checkpoint (``train.init_from``, or resuming such
    a run): ``cfg`` with the checkpoint's ``model``, ``tokenizer``, ``data`` and ``decoding``.

    - ``model``: the checkpoint's, with the dropout rates and masks the command line set; any other model
      key the command line set must agree with the checkpoint's;
    - ``model.aligner``: ``cfg``'s when ``cfg.model.aligner.enabled`` (e.g. ``experiment=align``:
      every key applied), else the checkpoint's; then a ``model.aligner.*`` key the command line
      set must hold in the result, and on a result without an aligner only
      ``model.aligner.enabled=false`` may be given;
    - ``tokenizer``: the checkpoint's settings (its sentencepiece models travel in it, and the
      run uses them), with ``cfg``'s subword-sampling keys (``sampling``, ``alpha``,
      ``nbest_size``: they change training, not the models); any other tokenizer key the
      command line set must agree with the checkpoint's;
    - ``data``: the checkpoint's (language pair, corpus, gold set, …), except the keys the
      command line set and those that describe this run (:data:`_RUN_DATA_KEYS`: paths and
      alignment targets), so that ``experiment=align train.init_from=RUN`` trains on the data
      the model learnt from;
    - ``decoding``: the checkpoint's, except the keys the command line set.

    Args:
        checkpoint: the checkpoint's dict (``model_config``, and ``config`` where saved).
        cfg: the composed root config.
        given: the keys the command line set (:func:`mt.config.command_line_keys`); a group
            stands for every key under it.
        source: the checkpoint's name, for messages.

    Raises:
        ConfigError: one line naming the key: a model, aligner or tokenizer key the command
            line set disagrees with the checkpoint's, or an aligner key given for a model
            without an aligner; the result is invalid (:func:`mt.config.validate`).
    """

    def is_given(key: str) -> bool:
        return any(key == g or key.startswith(g + ".") for g in given)

    model = _model_node(checkpoint, cfg, given, is_given, source)
    saved = checkpoint.get("config", {})
    data, decoding = to_dict(cfg.data), to_dict(cfg.decoding)
    for node, values, saved_node, own in (
        ("data", data, saved.get("data", {}), _RUN_DATA_KEYS),
        ("decoding", decoding, checkpoint.get("decoding", {}), ()),
    ):
        for name in values:
            touched = any(g.startswith(f"{node}.{name}.") for g in given) or is_given(f"{node}.{name}")
            if name in saved_node and name not in own and not touched:
                values[name] = saved_node[name]
    from omegaconf import OmegaConf

    result = dataclasses.replace(
        cfg,
        model=model_config_from_dict(model),
        tokenizer=checkpoint_tokenizer(saved.get("tokenizer"), cfg.tokenizer, is_given, f"train.init_from={source}"),
        data=OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), data)),
        decoding=DecodingConfig(**decoding),
    )
    validate(result)
    return result


def _model_node(
    checkpoint: dict, cfg: Config, given: Sequence[str], is_given: Callable[[str], bool], source: str
) -> dict:
    """The ``model`` node as nested dicts: the checkpoint's, with the overrides
    :func:`init_config` applies, the others checked."""
    model = to_dict(model_config_from_dict(checkpoint["model_config"]))
    for key, value in _leaves(to_dict(cfg.model), "model"):
        if key.startswith("model.aligner.") or not is_given(key):
            continue
        holder, leaf = _parent(model, key)
        if leaf in _INIT_CHANGEABLE:
            holder[leaf] = value
        elif holder[leaf] != value:
            raise ConfigError(
                f"config key '{key}' = {value!r} contradicts train.init_from={source}, whose model has {holder[leaf]!r} "
                "(a model started from a checkpoint keeps its shape: drop the override)"
            )
    aligner = to_dict(cfg.model.aligner) if cfg.model.aligner.enabled else model["aligner"]
    # a whole ``model`` group given does not name the aligner: only keys under model.aligner do
    aligner_given = [g for g in given if g == "model.aligner" or g.startswith("model.aligner.")]
    for key, value in _leaves(to_dict(cfg.model.aligner), "model.aligner"):
        if not any(key == g or key.startswith(g + ".") for g in aligner_given):
            continue
        leaf = key.rsplit(".", 1)[1]
        if not aligner["enabled"] and not (leaf == "enabled" and value is False):
            raise ConfigError(
                f"config key '{key}' = {value!r} has no effect: the model of train.init_from={source} has no aligner "
                "(add one with model.aligner.enabled=true, as experiment=align does)"
            )
        if aligner[leaf] != value:
            hint = "it keeps its aligner" if leaf == "enabled" else "to train a new aligner on it, also set model.aligner.enabled=true, as experiment=align does"
            raise ConfigError(
                f"config key '{key}' = {value!r} contradicts train.init_from={source}, whose aligner has {aligner[leaf]!r} ({hint})"
            )
    model["aligner"] = aligner
    return model


def checkpoint_tokenizer(
    saved: dict | None, tokenizer: TokenizerConfig, is_given: Callable[[str], bool], source: str
) -> TokenizerConfig:
    """The tokenizer settings of a run whose sentencepiece models come from a checkpoint
    (``train.init_from``, or resuming): the checkpoint's (``saved``; None in a checkpoint that
    saved no config: ``tokenizer`` kept), with ``tokenizer``'s sampling keys, which change
    training, not the models.

    Args:
        is_given: whether the command line set a key.
        source: the setting that names the checkpoint, for messages (``train.init_from=RUN``).

    Raises:
        ConfigError: a key the command line set, other than a sampling key, differs from the
            checkpoint's (or cannot be checked: the checkpoint saved no tokenizer settings).
    """
    own = to_dict(tokenizer)
    for name, value in own.items():
        key = f"tokenizer.{name}"
        if name in SAMPLING_KEYS or not is_given(key):
            continue
        if saved is None or name not in saved:
            raise ConfigError(
                f"config key '{key}' = {value!r}: {source} brings its own tokenizer, whose settings it "
                "did not save; drop the override"
            )
        if saved[name] != value:
            raise ConfigError(
                f"config key '{key}' = {value!r} contradicts {source}, whose tokenizer has "
                f"{saved[name]!r} (a run started from a checkpoint keeps its sentencepiece models: drop the override)"
            )
    if saved is None:
        return tokenizer
    settings = {name: saved.get(name, value) for name, value in own.items()}
    return TokenizerConfig(**{**settings, **{name: own[name] for name in SAMPLING_KEYS}})


def _parent(tree: dict, key: str) -> tuple[dict, str]:
    """The dict holding dotted ``key`` (its first part, the node name, skipped) and the leaf name."""
    _, *path, leaf = key.split(".")
    for part in path:
        tree = tree[part]
    return tree, leaf


def _leaves(node: dict, prefix: str):
    for name, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}.{name}")
        else:
            yield f"{prefix}.{name}", value


def agreement_partner(cfg: Config, tokenizer: Tokenizer, device) -> Transformer:
    """``train.agreement_with``: the other direction's aligner stage, frozen, in eval mode.

    Raises:
        ConfigError: it cannot be read, has no aligner, translates another language pair, or
            its sentencepiece models are not this run's the other way round (the agreement
            term compares the two aligners piece by piece).
    """
    path = cfg.train.agreement_with
    try:
        partner, partner_tokenizer, info = load_for_inference(path, device)
    except CheckpointError as error:
        raise ConfigError(f"train.agreement_with={path}: {error}") from None
    if not info["aligner"]:
        raise ConfigError(f"train.agreement_with={path}: has no aligner (an experiment=align stage of the other direction)")
    if (info["src_lang"], info["tgt_lang"]) != (cfg.data.tgt_lang, cfg.data.src_lang):
        raise ConfigError(
            f"train.agreement_with={path}: translates {info['src_lang']}→{info['tgt_lang']}, "
            f"not {cfg.data.tgt_lang}→{cfg.data.src_lang}"
        )
    own, theirs = tokenizer.state(), partner_tokenizer.state()
    if (own["src_model"], own["tgt_model"]) != (theirs["tgt_model"], theirs["src_model"]):
        raise ConfigError(f"train.agreement_with={path}: its sentencepiece models differ from this run's, so its pieces do")
    partner.requires_grad_(False)
    return partner
