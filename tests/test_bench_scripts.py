"""scripts/bench_train.py and scripts/bench_decode.py: the FLOP formula, the Marian reference's
dimensions (CI installs the [bench] extra for it), the forced output length and the tokens/s
against a count of the timed tokens; scripts/bench_data_scale.py: the corpus it builds."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mt.data.batching import Batch, collate
from mt.inference.decoding import beam_search, greedy_search
from mt.model.transformer import Transformer
from mt.training.objective import sequence_loss
from conftest import REPO, VOCAB, tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_data_scale  # noqa: E402
import bench_decode  # noqa: E402
import bench_train  # noqa: E402


def _batch(lengths_src: list[int], lengths_tgt: list[int]) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    src = [torch.randint(4, VOCAB, (n,), generator=generator).tolist() for n in lengths_src]
    tgt = [torch.randint(4, VOCAB, (n,), generator=generator).tolist() for n in lengths_tgt]
    batch = collate(src, tgt, list(range(len(src))))
    return batch.src_ids, batch.tgt_in, batch.tgt_out


def test_model_flops_match_counted_matmuls():
    """The docstring formula = every matmul FLOP of one training step, counted by torch
    (math attention backend, so that the attention products are counted too)."""
    cfg = tiny_config()
    cfg.decoder.cross_attention.n_heads = 4  # heads do not change FLOPs; keep the config plain
    model = Transformer(cfg, VOCAB, VOCAB, pad_id=0)
    src_ids, tgt_in, tgt_out = _batch([5, 5, 5], [7, 7, 7])  # no padding: torch counts every position
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss, _ = sequence_loss(model, Batch(src_ids, tgt_in, tgt_out, []), 0.1)
        loss.backward()
    assert bench_train.model_flops(cfg, VOCAB, [(src_ids, tgt_in, tgt_out)], 0) == counter.get_total_flops()


def test_model_flops_ignore_padding():
    cfg = tiny_config()
    src_ids, tgt_in, tgt_out = _batch([3, 6], [4, 2])
    padded = [torch.nn.functional.pad(t, (0, 5)) for t in (src_ids, tgt_in, tgt_out)]  # 5 more pad columns
    assert bench_train.model_flops(cfg, VOCAB, [padded], 0) == bench_train.model_flops(cfg, VOCAB, [(src_ids, tgt_in, tgt_out)], 0)


def test_layers_option_sets_both_depths_and_rejects_a_bad_spec():
    cfg = bench_train.model_config("default", layers=bench_train.layer_depths("6+1"))
    assert (cfg.encoder.n_layers, cfg.decoder.n_layers) == (6, 1)
    assert bench_train.model_config("default").decoder.n_layers == 3  # the preset itself is not changed
    for bad in ("6x1", "6+", "6+0"):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(bad))):
            bench_train.layer_depths(bad)


def test_width_options_reach_the_model_and_a_bad_width_is_rejected():
    cfg = bench_train.model_config("default", d_model=384, ffn_dim=2048)
    assert (cfg.d_model, cfg.ffn_dim) == (384, 2048)
    assert (bench_train.model_config("default").d_model, bench_train.model_config("default").ffn_dim) == (256, 1024)
    model = Transformer(cfg, VOCAB, VOCAB, pad_id=0)
    shapes = {tuple(p.shape) for p in model.parameters()}
    assert (2048, 384) in shapes and (384, 2048) in shapes  # each FFN's two projections
    # --d-model that the heads do not divide: the trainer's own one-line config error, before any data work
    command = [sys.executable, str(Path(bench_train.__file__)), "--d-model", "250", "--steps", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "model.encoder.self_attention.n_heads" in result.stderr and "must divide model.d_model = 250" in result.stderr
    assert "Traceback" not in result.stderr


def test_marian_reference_has_our_dimensions():
    # skips only where transformers is missing (pip install -e '.[bench]'); under CI it fails (conftest.py)
    pytest.importorskip("transformers", exc_type=ModuleNotFoundError)  # a broken install fails, not skips
    cfg = tiny_config()
    cfg.decoder.cross_attention.n_heads = 4
    assert bench_train.marian_mismatches(cfg) == []
    ours = Transformer(cfg, VOCAB, VOCAB, pad_id=0)
    reference = bench_train.marian_model(cfg, VOCAB)
    # Marian is post-norm: no final LayerNorm per stack (2 × 2 × d_model parameters)
    ours_count = bench_train.parameter_counts(ours)["trainable"] - 4 * cfg.d_model
    assert bench_train.parameter_counts(reference)["trainable"] == ours_count
    shared = reference.model.shared.weight
    assert reference.lm_head.weight is shared and reference.model.encoder.embed_tokens.weight is shared
    assert reference.config.pad_token_id == 0 and reference.config.decoder_start_token_id == 2
    assert reference.config.eos_token_id == 3


def test_marian_mismatches_name_what_differs():
    cfg = tiny_config()  # cross-attention has 2 heads, self-attention 4
    assert any("head counts" in problem for problem in bench_train.marian_mismatches(cfg))


@pytest.mark.parametrize("beam", [1, 3])
def test_forced_length_decodes_exactly_length_steps(beam):
    torch.manual_seed(0)
    model = Transformer(tiny_config(), VOCAB, VOCAB, pad_id=0).eval()
    logits = model.logits
    model.logits = lambda hidden: logits(hidden) + 50.0 * (torch.arange(VOCAB) == 3)  # EOS (id 3) always wins
    recorder = bench_decode.DecodeRecorder(model)
    src_ids, _, _ = _batch([4, 2, 6], [1, 1, 1])

    def search() -> list:
        if beam == 1:
            return greedy_search(model, src_ids, max_len_a=0.0, max_len_b=9)
        return [hyps[0] for hyps in beam_search(model, src_ids, beam, 1.0, max_len_a=0.0, max_len_b=9)]

    assert [len(h.tokens) for h in search()] == [0, 0, 0] and recorder.batches[-1][1] < 9  # unforced
    recorder.forced_length = 9
    assert [len(h.tokens) for h in search()] == [8, 8, 8]  # + EOS = 9 tokens each
    assert len(recorder.batches) == 2 and recorder.batches[-1][1] == 9
    assert torch.equal(recorder.batches[-1][0], src_ids)


def test_ci_runs_the_readme_test_command_with_every_extra_the_tests_import():
    """.ci/run runs the README's set-up-and-test command, which installs [bench] and
    [baselines] (the Marian, CTranslate2 and eflomal tests run in CI instead of skipping), then
    the import-layering contracts and the strict docs build."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("Set up and run the tests") :]
    command = section[section.index("```bash\n") + len("```bash\n") :].split("\n", 1)[0]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command.endswith("&& pytest") and '".[dev,tensorboard,bench,baselines]"' in command
    steps = [ci.index(command), ci.index("lint-imports"), ci.index('pip install -e ".[docs]" && mkdocs build --strict')]
    assert steps == sorted(steps)


@pytest.mark.parametrize("beam", [1, 3])
def test_ctranslate2_reference_runs_exactly_ours_steps(bilingual_tokenizer, tmp_path, beam):
    """The ct2 reference decodes our exported model on our batches for exactly the forced number
    of steps (it raises otherwise), so both systems' tokens/s count the same work."""
    pytest.importorskip("ctranslate2", exc_type=ModuleNotFoundError)  # pip install -e '.[bench]'; CI fails instead
    from argparse import Namespace

    from conftest import BILINGUAL_TEXTS, random_model

    from mt.config import AttentionConfig, DecoderConfig, DecodingConfig

    site = AttentionConfig(n_heads=4, dropout=0.0)
    model = random_model(bilingual_tokenizer, decoder=DecoderConfig(n_layers=2, self_attention=site, cross_attention=site))
    reference = bench_decode.CT2Reference(model, bilingual_tokenizer, "cpu", 1, tmp_path / "ct2")
    assert set(reference.precisions) >= {"fp32", "int8"}
    src = [ids + [3] for ids in bilingual_tokenizer.encode_src(BILINGUAL_TEXTS)]
    padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in src], batch_first=True)
    batches = [(padded[:2], 5), (padded[2:], 9)]
    result = reference.time(batches, DecodingConfig(beam_size=beam), "fp32", Namespace(repeats=1))
    assert result["sentences"] == 4 and result["tokens"] == 2 * 5 + 2 * 9


def test_data_scale_corpus_is_multi30k_train_repeated(tmp_path, multi30k_mirror):
    from mt.data.lines import read_lines

    if multi30k_mirror is None:
        pytest.skip("bench_data_scale reads the Multi30k files from a mirror folder")
    mirror = Path(multi30k_mirror)
    assert bench_data_scale.build_corpus(mirror, tmp_path, copies=3) == 3 * 29000
    for lang in ("de", "en"):
        assert read_lines(tmp_path / f"train.{lang}") == read_lines(mirror / f"train.{lang}.gz") * 3
        assert read_lines(tmp_path / f"val.{lang}") == read_lines(mirror / f"val.{lang}.gz")
        assert read_lines(tmp_path / f"test.{lang}") == read_lines(mirror / f"test_2016_flickr.{lang}.gz")


MINUTES = 0.03  # bench_train.py --minutes of the run below: 1.8 s of timed steps


@pytest.fixture(scope="module")
def minutes_run(tmp_path_factory, multi30k_mirror):
    """One ``bench_train.py --minutes --repeat-first-batch`` run (on Linux: glibc, ``--peak-in-use``):
    its result, the wall seconds the test measured around it, and its data folder."""
    if multi30k_mirror is None:
        pytest.skip("bench_train trains on Multi30k")
    data_dir = tmp_path_factory.mktemp("bench_data")
    command = [sys.executable, str(Path(bench_train.__file__)), "--minutes", str(MINUTES), "--warmup", "1",
               "--threads", "1", "--precision", "fp32", "--repeat-first-batch", "--batch-tokens", "512",
               "--data-dir", str(data_dir)]  # fmt: skip
    if sys.platform == "linux":  # glibc's heap figures
        command += ["--allocator", "glibc", "--peak-in-use"]
    env = dict(os.environ, MT_DATA_MIRROR=multi30k_mirror)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    wall_seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-2000:]
    return result, wall_seconds, data_dir


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's heap figures")
def test_bench_train_minutes_reports_glibc_heap_and_its_peak_in_use(minutes_run):
    """``--minutes`` on glibc with ``--peak-in-use --repeat-first-batch``: the JSON line says which
    allocator ran and the peak memory in use, below the peak RSS that holds it."""
    result, _, _ = minutes_run
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["allocator"] == "glibc"
    assert 0 < report["peak_in_use_mb"] < report["peak_rss_mb"]
    assert "glibc heap" in result.stderr


def test_bench_train_tokens_per_s_is_the_timed_target_tokens_over_the_timed_time(minutes_run, multi30k_mirror):
    """tokens/s × the timed seconds = the target tokens of the timed steps, counted here from the
    trainer's own data and batch order (``--repeat-first-batch``: epoch 1's first batch each
    step; its sentences' pieces + EOS, no padding, no source, no warm-up step), with the timed
    seconds between ``--minutes`` (the loop runs at least that long) and the wall time of the run."""
    from mt.config import Config
    from mt.training import distributed
    from mt.training.step import epoch_updates
    from mt.training.training_data import prepare_data

    result, wall_seconds, data_dir = minutes_run
    cfg = Config()  # as bench_train loads Multi30k: the default config, this budget (cached by the run)
    cfg.data.data_dir, cfg.data.mirror, cfg.train.batch_tokens = str(data_dir), multi30k_mirror, 512
    data = prepare_data(cfg, distributed.Context(), resume_state=None)
    (first_batch,) = epoch_updates(data.src_lens, data.tgt_lens, cfg.train, 1, group_size=1)[0]
    step_tokens = sum(data.tgt_lens[i] + 1 for i in first_batch)
    steps = int(re.search(r"batches: 1 warm-up \+ (\d+) timed", result.stdout).group(1))
    tokens = int(re.search(r"; (\d+) target tokens timed", result.stdout).group(1))
    assert steps >= 1 and tokens == steps * step_tokens
    seconds = tokens / json.loads(result.stdout.strip().splitlines()[-1])["tokens_per_s"]
    assert 60 * MINUTES <= seconds < wall_seconds


def test_bench_levers_times_every_batch_with_both_settings_in_alternating_order(monkeypatch):
    """Each timed batch is trained once per setting, today's first on even batches; the
    warm-up is not timed; the dropout switch reaches every dropout and attention site."""
    import bench_levers

    from mt.config import ModelConfig, TrainConfig
    from mt.model.attention import MultiHeadAttention
    from mt.model.dropout import Dropout
    from mt.training.step import build_optimization

    cfg = ModelConfig(d_model=16, ffn_dim=32)
    model = Transformer(cfg, VOCAB, VOCAB, 0).train()
    bench_levers.set_dropout_masks(model, "bernoulli")
    assert {m.masks for m in model.modules() if isinstance(m, Dropout)} == {"bernoulli"}
    assert {m.dropout_masks for m in model.modules() if isinstance(m, MultiHeadAttention)} == {"bernoulli"}

    calls = []
    monkeypatch.setitem(bench_levers.LEVERS, "dropout_masks", ("bernoulli", "bits", lambda m, value: calls.append(value)))
    torch.manual_seed(0)
    batches = []
    for length in (5, 7, 6, 4):
        src_ids = torch.randint(3, VOCAB, (2, length))
        tgt_out = torch.randint(3, VOCAB, (2, length))
        tgt_out[1, -2:] = 0  # padding
        batches.append((src_ids, tgt_out, tgt_out, None))
    opt = build_optimization(model, TrainConfig(), torch.device("cpu"), "fp32")
    run = bench_levers.paired_steps(model, opt, batches, 1, "dropout_masks", 0)
    assert calls == ["bernoulli", "bits", "bits", "bernoulli", "bernoulli", "bits", "bits", "bernoulli"]
    assert [len(run["times"][v]) for v in ("bernoulli", "bits")] == [3, 3]
    assert run["tokens"] == [int((b[1] != 0).sum()) for b in batches[1:]]


def test_bench_levers_code_lever_swaps_in_a_revisions_version_and_back():
    """``code``: today's side runs the function as ``--against`` has it (compiled from that
    revision's file), the new side this checkout's; a dotted name reaches a class's method."""
    import bench_levers

    from mt.model import attention
    from mt.training import objective

    checkout_loss, checkout_forward = objective._chunked_loss, attention.MultiHeadAttention.forward
    today, new, switch = bench_levers.code_lever(
        "HEAD", ["mt.training.objective:_chunked_loss", "mt.model.attention:MultiHeadAttention.forward"]
    )
    try:
        switch(None, today)
        assert objective._chunked_loss is not checkout_loss
        assert objective._chunked_loss.__code__.co_filename == "HEAD:mt/training/objective.py"
        assert attention.MultiHeadAttention.forward.__code__.co_filename == "HEAD:mt/model/attention.py"
        hidden, weight, target = torch.randn(5, 4), torch.randn(9, 4), torch.randint(0, 9, (5,))
        loss_at_head = objective._chunked_loss(hidden, weight, target, 0.1, 2, torch.float32, False)[0]
        switch(None, new)
        assert objective._chunked_loss is checkout_loss and attention.MultiHeadAttention.forward is checkout_forward
        torch.testing.assert_close(loss_at_head, checkout_loss(hidden, weight, target, 0.1, 2, torch.float32, False)[0])
    finally:
        objective._chunked_loss, attention.MultiHeadAttention.forward = checkout_loss, checkout_forward


@pytest.mark.parametrize(
    "swap, message",
    [
        ("mt.training.objective", "expected MODULE:NAME"),
        ("mt.training.objective:no_such_function", "no_such_function"),
        ("mt.no_such_module:f", "not a module of this checkout"),
        ("json:dumps", "not a module of this checkout"),
    ],
)
def test_bench_levers_code_lever_names_a_bad_swap(swap, message):
    import bench_levers

    with pytest.raises(SystemExit, match=message):
        bench_levers.code_lever("HEAD", [swap])


def test_bench_levers_init_from_loads_a_checkpoints_model_and_names_a_vocabulary_mismatch():
    import bench_levers

    from mt.model.checkpoint import load_for_inference

    checkpoint = Path(__file__).parent / "fixtures" / "checkpoint-2dea679.pt"
    expected = load_for_inference(checkpoint)[0]
    vocab = expected.output_proj.weight.size(0)
    model = bench_levers.trained_model(str(checkpoint), vocab)
    assert model.training
    for (name, got), want in zip(model.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(got, want), name
    with pytest.raises(SystemExit, match=f"checkpoint-2dea679.pt: vocabulary of {vocab} pieces, the data's {vocab + 1}"):
        bench_levers.trained_model(str(checkpoint), vocab + 1)
    with pytest.raises(SystemExit, match="not found"):
        bench_levers.trained_model(str(checkpoint.with_name("missing.pt")), vocab)
