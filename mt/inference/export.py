"""Export a checkpoint to a CTranslate2 model directory (``mt-export --format ctranslate2``).

The model is described through CTranslate2's own Python specification API
(``ctranslate2.specs.TransformerSpec``: pre-norm layers, scaled embeddings, position table,
fused query/key/value projections) and written by ``spec.save``, as CTranslate2's own
converters do (e.g. ``ctranslate2.converters.opennmt_py``); no file format is written by hand.

What the exported model does, so that ``ctranslate2.Translator`` decodes as ``mt-translate``:

- vocabularies: the sentencepiece pieces in id order; the source gets EOS appended by
  CTranslate2 (``add_source_eos``), decoding starts from ``<s>`` (BOS) and stops at ``</s>``;
- positions: our own table (sinusoidal or learned) is stored, so no convention has to match;
- the output projection gets a bias of -1e9 on PAD and BOS (ours has none): the search never
  emits them, as :func:`mt.inference.decoding._step_log_probs` forbids them;
- the sentencepiece model(s) are copied beside the model: ``sentencepiece.model`` (joint) or
  ``sentencepiece.src.model`` and ``sentencepiece.tgt.model``.

``ctranslate2`` is imported only here (extra ``[bench]``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from mt.errors import ConfigError, MtError
from mt.model.transformer import Transformer
from mt.data.tokenizer import Tokenizer

QUANTIZATIONS = ("float32", "int8", "int8_float32", "bfloat16")
FORBIDDEN_LOGIT = -1e9  # bias of PAD and BOS in the exported output projection


def check_exportable(model: Transformer) -> None:
    """Stop on a model CTranslate2's Transformer spec cannot express.

    Raises:
        ConfigError: one line naming the first offending config key (local or top-k attention,
            rotary positions, no absolute positions, grouped key/value heads, sites of one
            stack with different head counts).
    """
    cfg = model.cfg
    if cfg.positional_embedding not in ("sinusoidal", "learned"):
        raise ConfigError(
            f"config key 'model.positional_embedding' = {cfg.positional_embedding!r}: "
            "CTranslate2 export needs sinusoidal or learned positions"
        )
    sites = {
        "model.encoder.self_attention": cfg.encoder.self_attention,
        "model.decoder.self_attention": cfg.decoder.self_attention,
        "model.decoder.cross_attention": cfg.decoder.cross_attention,
    }
    for key, site in sites.items():
        if site.type != "full":
            raise ConfigError(f"config key '{key}.type' = {site.type!r}: CTranslate2 has full attention only")
        if site.positions != "absolute":
            raise ConfigError(f"config key '{key}.positions' = {site.positions!r}: not exported to CTranslate2 (absolute only)")
        if site.n_kv_heads not in (None, site.n_heads):
            raise ConfigError(f"config key '{key}.n_kv_heads' = {site.n_kv_heads!r}: not exported to CTranslate2")
    if cfg.decoder.cross_attention.n_heads != cfg.decoder.self_attention.n_heads:
        raise ConfigError(
            f"config key 'model.decoder.cross_attention.n_heads' = {cfg.decoder.cross_attention.n_heads}: CTranslate2 "
            f"uses one head count per decoder, here model.decoder.self_attention.n_heads = {cfg.decoder.self_attention.n_heads}"
        )


def transformer_spec(model: Transformer, tokenizer: Tokenizer):
    """CTranslate2's ``TransformerSpec`` holding ``model``'s weights (float32 numpy arrays).

    Raises:
        ConfigError: see :func:`check_exportable`.
    """
    from ctranslate2.specs import common_spec, transformer_spec as ct2

    check_exportable(model)
    cfg = model.cfg
    # copies: spec.optimize() converts the arrays in place, which must not touch the model
    weights = {name: tensor.detach().float().cpu().numpy().copy() for name, tensor in model.state_dict().items()}
    if cfg.positional_embedding == "learned":
        positions = weights["learned_positions.weight"]
    else:
        positions = model.positions.float().cpu().numpy().copy()  # a non-persistent buffer
    activation = {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU}[cfg.activation]
    spec = ct2.TransformerSpec(
        ct2.TransformerEncoderSpec(cfg.encoder.n_layers, cfg.encoder.self_attention.n_heads, activation=activation),
        ct2.TransformerDecoderSpec(cfg.decoder.n_layers, cfg.decoder.self_attention.n_heads, activation=activation),
    )

    def linear(target, prefix: str) -> None:
        target.weight = weights[f"{prefix}.weight"]
        if f"{prefix}.bias" in weights:
            target.bias = weights[f"{prefix}.bias"]

    def fused(target, prefixes: list[str]) -> None:
        target.weight = np.concatenate([weights[f"{p}.weight"] for p in prefixes])
        if f"{prefixes[0]}.bias" in weights:
            target.bias = np.concatenate([weights[f"{p}.bias"] for p in prefixes])

    def norm(target, prefix: str) -> None:
        target.gamma, target.beta = weights[f"{prefix}.weight"], weights[f"{prefix}.bias"]

    def attention(target, prefix: str, self_attention: bool) -> None:
        q, k, v = (f"{prefix}.{name}_proj" for name in "qkv")
        if self_attention:
            fused(target.linear[0], [q, k, v])
        else:
            linear(target.linear[0], q)
            fused(target.linear[1], [k, v])
        linear(target.linear[-1], f"{prefix}.out_proj")

    def ffn(target, prefix: str) -> None:
        norm(target.layer_norm, f"{prefix}.ffn_norm")
        linear(target.linear_0, f"{prefix}.ffn.in_proj")
        linear(target.linear_1, f"{prefix}.ffn.out_proj")

    encoder, decoder = spec.encoder, spec.decoder
    encoder.embeddings[0].weight = weights["src_embedding.weight"]
    encoder.position_encodings.encodings = positions
    norm(encoder.layer_norm, "encoder_norm")
    for i, layer in enumerate(encoder.layer):
        prefix = f"encoder_layers.{i}"
        attention(layer.self_attention, f"{prefix}.self_attention", self_attention=True)
        norm(layer.self_attention.layer_norm, f"{prefix}.self_attention_norm")
        ffn(layer.ffn, prefix)
    decoder.embeddings.weight = weights["tgt_embedding.weight"]
    decoder.position_encodings.encodings = positions
    norm(decoder.layer_norm, "decoder_norm")
    for i, layer in enumerate(decoder.layer):
        prefix = f"decoder_layers.{i}"
        attention(layer.self_attention, f"{prefix}.self_attention", self_attention=True)
        norm(layer.self_attention.layer_norm, f"{prefix}.self_attention_norm")
        attention(layer.attention, f"{prefix}.cross_attention", self_attention=False)
        norm(layer.attention.layer_norm, f"{prefix}.cross_attention_norm")
        ffn(layer.ffn, prefix)
    decoder.projection.weight = weights["output_proj.weight"]
    bias = np.zeros(decoder.projection.weight.shape[0], dtype=np.float32)
    bias[[tokenizer.pad_id, tokenizer.bos_id]] = FORBIDDEN_LOGIT
    decoder.projection.bias = bias

    spec.config.layer_norm_epsilon = model.decoder_norm.eps
    spec.config.add_source_eos = True  # ours: source ids end in EOS
    spec.config.bos_token, spec.config.eos_token, spec.config.decoder_start_token = "<s>", "</s>", "<s>"
    spec.config.unk_token = tokenizer.src.id_to_piece(tokenizer.unk_id)
    spec.register_source_vocabulary(_pieces(tokenizer.src))
    spec.register_target_vocabulary(_pieces(tokenizer.tgt))
    return spec


def _pieces(processor) -> list[str]:
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def export_ctranslate2(
    checkpoint: str | Path, out_dir: str | Path, quantization: str = "float32", force: bool = False
) -> Path:
    """Write ``checkpoint`` (a file, or a run dir: its ``checkpoints/best.pt``) as a CTranslate2
    model directory at ``out_dir``; see :func:`write_ctranslate2`.

    Raises: as :func:`write_ctranslate2`, and CheckpointError for an unreadable checkpoint.
    """
    from mt.model.checkpoint import load_for_inference

    _check_target(out_dir, quantization, force)  # before the checkpoint is read
    model, tokenizer, _ = load_for_inference(checkpoint, "cpu")
    return write_ctranslate2(model, tokenizer, out_dir, quantization, force)


def write_ctranslate2(
    model: Transformer, tokenizer: Tokenizer, out_dir: str | Path, quantization: str = "float32", force: bool = False
) -> Path:
    """Write ``model`` and its sentencepiece model(s) as a CTranslate2 model directory.

    The directory appears whole or not at all: it is written beside ``out_dir`` and renamed.

    Args:
        quantization: weight type stored, one of :data:`QUANTIZATIONS` (CTranslate2 converts
            again at load time with ``compute_type``).
        force: replace an existing ``out_dir``.

    Returns: ``out_dir`` as a Path.

    Raises:
        MtError: ``out_dir`` exists without ``force``; an unknown quantization; ctranslate2 not
            installed.
        ConfigError: a model CTranslate2 cannot express (:func:`check_exportable`).
    """
    out_dir = _check_target(out_dir, quantization, force)
    with torch.no_grad():
        spec = transformer_spec(model, tokenizer)
    spec.validate()
    spec.optimize(quantization=quantization)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        spec.save(str(tmp))
        state = tokenizer.state()
        if tokenizer.joint:
            (tmp / "sentencepiece.model").write_bytes(state["src_model"])
        else:
            (tmp / "sentencepiece.src.model").write_bytes(state["src_model"])
            (tmp / "sentencepiece.tgt.model").write_bytes(state["tgt_model"])
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _check_target(out_dir: str | Path, quantization: str, force: bool) -> Path:
    if quantization not in QUANTIZATIONS:
        raise MtError(f"--quantization {quantization!r}: allowed: {', '.join(QUANTIZATIONS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise MtError(f"{out_dir} already exists (--force replaces it)")
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        raise MtError("ctranslate2 is not installed: pip install ctranslate2 (or the extra: pip install -e '.[bench]')") from None
    return out_dir
