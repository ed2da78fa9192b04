"""How a run that starts from a checkpoint gets its config: ``train.init_from`` (a new run from
another run's weights, e.g. the aligner stage) and resuming such a run."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mt.config import Config, DataConfig, DecodingConfig, model_config_from_dict, to_dict, validate
from mt.errors import ConfigError

# model keys a run started from a checkpoint may change: they leave the weights' meaning alone
_INIT_CHANGEABLE = ("dropout", "ffn_dropout")
# data keys that describe this run, not the data the checkpoint learnt from: never inherited
_RUN_DATA_KEYS = ("data_dir", "mirror", "alignments", "alignments_path", "alignments_symmetrize", "alignments_unit")


def init_config(checkpoint: dict, cfg: Config, given: Sequence[str], source: str) -> Config:
    """The config of a run that starts from a checkpoint (``train.init_from``, or resuming such
    a run): ``cfg`` with the checkpoint's ``model``, ``data`` and ``decoding``.

    - ``model``: the checkpoint's, with ``cfg.model.aligner`` when enabled and the dropout
      rates the command line set; any other model key the command line set must agree.
    - ``data``: the checkpoint's (language pair, corpus, gold set, …), except the keys the
      command line set and those that describe this run (:data:`_RUN_DATA_KEYS`: paths and
      alignment targets), so that ``experiment=align train.init_from=RUN`` trains on the data
      the model learnt from;
    - ``decoding``: the checkpoint's, except the keys the command line set.

    Args:
        checkpoint: the checkpoint's dict (``model_config``, and ``config`` where saved).
        cfg: the composed root config.
        given: the keys the command line set (:func:`mt.config.command_line_keys`).
        source: the checkpoint's name, for messages.

    Raises:
        ConfigError: a model key the command line set disagrees with the checkpoint's; the
            result is invalid (:func:`mt.config.validate`).
    """
    def is_given(key: str) -> bool:
        return any(key == g or key.startswith(g + ".") for g in given)

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
    if cfg.model.aligner.enabled:
        model["aligner"] = to_dict(cfg.model.aligner)
    data, decoding = to_dict(cfg.data), to_dict(cfg.decoding)
    for node, values, saved, own in (
        ("data", data, checkpoint.get("config", {}).get("data", {}), _RUN_DATA_KEYS),
        ("decoding", decoding, checkpoint.get("decoding", {}), ()),
    ):
        for name in values:
            touched = any(g.startswith(f"{node}.{name}.") for g in given) or is_given(f"{node}.{name}")
            if name in saved and name not in own and not touched:
                values[name] = saved[name]
    from omegaconf import OmegaConf

    result = dataclasses.replace(
        cfg,
        model=model_config_from_dict(model),
        data=OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), data)),
        decoding=DecodingConfig(**decoding),
    )
    validate(result)
    return result


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
