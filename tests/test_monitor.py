"""Training monitoring: learning_curves.png, TensorBoard scalars and heatmaps, resume."""

import sys

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.image import imread

from mt.alignment.align import align, default_layer
from mt.config import AttentionConfig
from mt.errors import ConfigError
from mt.model.transformer import Transformer
from mt.training.monitor import TrainingMonitor, read_metrics, validation_heatmaps
from mt.plot import learning_curves_figure

from conftest import random_model, tiny_config

SRC = ["Ein Hund rennt im Park.", "Zwei Männer spielen Fußball."]
TGT = ["A dog runs in the park.", "Two men play soccer."]
SCALAR_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "val_bleu": "bleu/val",
    "val_chrf": "chrf/val",
    "lr": "lr",
    "tokens_per_s": "speed/tokens_per_s",
    "aer": "aer/val",
}


def record(step: int, with_aer: bool = True, **overrides) -> dict:
    """A metrics.jsonl record as mt.training.train writes it, numbers varying with the step."""
    r = {
        "step": step,
        "epoch": 1 + step // 250,
        "train_loss": 5.0 - step / 200,
        "val_loss": 5.5 - step / 250,
        "val_bleu": step / 30,
        "val_chrf": 10 + step / 20,
        "lr": 1e-4 * step / 100,
        "tokens_per_s": 1000.0 + step,
        "elapsed_s": step / 10,
        "nonfinite_steps": 0,
    }
    if with_aer:
        r["aer"] = 0.9 - step / 1000
        r["aer_by_layer"] = {"attention": [0.95 - step / 2000, 0.9 - step / 1000], "shift": [0.8, 0.85 - step / 4000]}
    return {**r, **overrides}


@pytest.fixture(scope="module")
def tokenizer(bilingual_tokenizer):
    return bilingual_tokenizer


@pytest.fixture
def model(tokenizer):
    return random_model(tokenizer)


def lines_by_label(fig: Figure) -> dict:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for ax in fig.axes for line in ax.lines}


def events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


# learning_curves.png: always, no TensorBoard needed


def test_learning_curves_png_is_written_at_each_validation(tmp_path):
    monitor = TrainingMonitor(tmp_path)
    sizes = []
    for step in (100, 200, 300):
        monitor.log_validation(record(step, with_aer=step > 100))  # AER appears: a fifth panel
        image = imread(tmp_path / "learning_curves.png")
        sizes.append(image.shape)
        assert image.ndim == 3 and image.shape[2] in (3, 4) and image.std() > 0  # a picture, not a blank
    monitor.close()
    assert sizes[0] == (640, 1000, 4)  # 2 × 2 panels of 5 × 3.2 inches at 100 dpi
    assert sizes[1] == sizes[2] == (960, 1000, 4)  # 3 × 2 with the AER panel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learning_curves.png"]  # no temporary files left
    assert not (tmp_path / "tensorboard").exists()


def test_curves_plot_every_series_against_its_steps():
    records = [record(100), record(200), record(300, with_aer=False)]
    del records[0]["val_chrf"]  # a record written before chrF was logged
    lines = lines_by_label(learning_curves_figure(records))
    for key, label in [("train_loss", "train loss"), ("val_loss", "val loss"), ("val_bleu", "val BLEU"),
                       ("lr", "lr"), ("tokens_per_s", "tokens/s")]:
        assert lines[label] == ([100, 200, 300], [r[key] for r in records])
    assert lines["val chrF"] == ([200, 300], [records[1]["val_chrf"], records[2]["val_chrf"]])
    assert lines["AER"] == ([100, 200], [records[0]["aer"], records[1]["aer"]])
    assert lines["AER layer 1 (shift)"] == ([100, 200], [r["aer_by_layer"]["shift"][1] for r in records[:2]])
    assert len([label for label in lines if label.startswith("AER layer")]) == 4


def test_named_objective_terms_get_a_panel_of_their_own():
    plain = learning_curves_figure([record(100, xent_loss=4.0, val_xent_loss=4.5)])
    assert not any(ax.get_title().startswith("loss terms") for ax in plain.axes)  # xent is the loss panel's
    records = [
        record(step, xent_loss=4.0, val_xent_loss=4.5, align_loss=1.0 - step / 1000, val_align_loss=0.9)
        for step in (100, 200)
    ]
    fig = learning_curves_figure(records)
    panel = next(ax for ax in fig.axes if ax.get_title().startswith("loss terms"))
    lines = {line.get_label(): list(line.get_ydata()) for line in panel.lines}
    assert lines == {"train align": [0.9, 0.8], "val align": [0.9, 0.9]}


def test_a_crash_while_writing_keeps_the_previous_png(tmp_path, monkeypatch):
    monitor = TrainingMonitor(tmp_path)
    monitor.log_validation(record(100))
    before = (tmp_path / "learning_curves.png").read_bytes()

    def crash(self, fname, **kwargs):
        fname.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", crash)
    with pytest.raises(OSError):
        monitor.log_validation(record(200))
    assert (tmp_path / "learning_curves.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learning_curves.png"]


def test_read_metrics_keeps_records_up_to_the_resume_step_and_skips_a_torn_line(tmp_path):
    import json

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(record(s)) + "\n" for s in (100, 200, 300)) + '{"step": 4')
    assert read_metrics(path) == [record(100), record(200), record(300)]
    assert read_metrics(path, max_step=200) == [record(100), record(200)]
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_missing_tensorboard_is_a_one_line_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as error:
        TrainingMonitor(tmp_path, tensorboard=True)
    message = str(error.value)
    assert "\n" not in message and "train.tensorboard" in message and 'pip install -e ".[tensorboard]"' in message
    TrainingMonitor(tmp_path, tensorboard=False).close()  # without TensorBoard logging nothing is needed


# heatmaps


def test_validation_heatmaps_are_the_default_layer_head_average_in_eval_mode(tokenizer):
    torch.manual_seed(0)
    cfg = tiny_config(dropout=0.3)
    cfg.decoder.cross_attention = AttentionConfig(n_heads=2, dropout=0.3)
    model = Transformer(cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).train()
    first = validation_heatmaps(model, tokenizer, SRC, TGT)
    assert model.training  # training continues in train mode
    second = validation_heatmaps(model, tokenizer, SRC, TGT)  # no dropout: the same pictures
    reference = align(model.eval(), tokenizer, SRC, TGT, method="attention", layer=default_layer(2), heads=[0, 1])
    for a, b, ref, src, tgt in zip(first, second, reference, SRC, TGT):
        assert a.src_words == src.split() and a.tgt_words == tgt.split()
        np.testing.assert_array_equal(a.word_matrix, b.word_matrix)
        np.testing.assert_allclose(a.word_matrix, ref.word_matrix, atol=1e-6)
        np.testing.assert_allclose(a.word_matrix.sum(axis=1), 1.0, atol=1e-5)


# TensorBoard


def test_tensorboard_logs_every_scalar_and_the_heatmaps(tmp_path, model, tokenizer):
    pytest.importorskip("tensorboard")
    records = [record(100), record(200), record(300)]
    monitor = TrainingMonitor(tmp_path, tensorboard=True)
    assert monitor.tensorboard
    for r in records:
        monitor.log_validation(r, validation_heatmaps(model, tokenizer, SRC, TGT))
    monitor.close()
    logged = events(tmp_path / "tensorboard")
    tags = logged.Tags()
    for key, tag in SCALAR_TAGS.items():
        values = logged.Scalars(tag)
        assert [e.step for e in values] == [100, 200, 300], tag
        np.testing.assert_allclose([e.value for e in values], [r[key] for r in records], rtol=1e-6)
    for method in ("attention", "shift"):
        for layer in (0, 1):
            values = [e.value for e in logged.Scalars(f"aer/layer{layer}_{method}")]
            np.testing.assert_allclose(values, [r["aer_by_layer"][method][layer] for r in records], rtol=1e-6)
    assert {"progress/epoch", "progress/elapsed_s", "progress/nonfinite_steps"} <= set(tags["scalars"])
    assert sorted(tags["images"]) == ["attention/sentence0", "attention/sentence1"]
    for k in range(2):
        images = logged.Images(f"attention/sentence{k}")
        assert [e.step for e in images] == [100, 200, 300]
        assert images[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and images[0].width > 100


def test_resume_continues_the_curves_and_replaces_later_events(tmp_path):
    pytest.importorskip("tensorboard")
    import json

    metrics = tmp_path / "metrics.jsonl"
    first = TrainingMonitor(tmp_path, tensorboard=True)
    for step in (100, 200, 300):
        first.log_validation(record(step))
        with metrics.open("a") as f:
            f.write(json.dumps(record(step)) + "\n")
    first.close()

    # resumed from the checkpoint of step 200: the validation at 300 is redone, with other numbers
    resumed = TrainingMonitor(tmp_path, tensorboard=True, records=read_metrics(metrics, max_step=200), start_step=200)
    redone = [record(300, val_loss=9.0), record(400, val_loss=8.0)]
    for r in redone:
        resumed.log_validation(r)
    resumed.close()

    expected = [record(100)["val_loss"], record(200)["val_loss"], 9.0, 8.0]
    val_loss = events(tmp_path / "tensorboard").Scalars("loss/val")
    assert [e.step for e in val_loss] == [100, 200, 300, 400]
    np.testing.assert_allclose([e.value for e in val_loss], expected, rtol=1e-6)
    assert lines_by_label(learning_curves_figure(resumed.records))["val loss"] == ([100, 200, 300, 400], expected)


def test_tensorboard_switched_on_at_resume_gets_the_earlier_validations(tmp_path):
    pytest.importorskip("tensorboard")
    before = TrainingMonitor(tmp_path, tensorboard=False)
    for step in (100, 200):
        before.log_validation(record(step))
    resumed = TrainingMonitor(tmp_path, tensorboard=True, records=before.records, start_step=200)
    resumed.log_validation(record(300))
    resumed.close()
    bleu = events(tmp_path / "tensorboard").Scalars("bleu/val")
    assert [(e.step, e.value) for e in bleu] == [(s, pytest.approx(record(s)["val_bleu"])) for s in (100, 200, 300)]


def test_a_fresh_run_in_a_used_run_dir_hides_the_old_events(tmp_path):
    pytest.importorskip("tensorboard")
    old = TrainingMonitor(tmp_path, tensorboard=True)
    for step in (100, 200):
        old.log_validation(record(step))
    old.close()
    new = TrainingMonitor(tmp_path, tensorboard=True)  # start_step=0, no records: a new run
    new.log_validation(record(100, val_bleu=42.0))
    new.close()
    assert [(e.step, e.value) for e in events(tmp_path / "tensorboard").Scalars("bleu/val")] == [(100, 42.0)]
    assert lines_by_label(learning_curves_figure(new.records))["val BLEU"] == ([100], [42.0])


def test_resident_memory_is_read_and_drawn():
    import numpy as np

    from mt.training.memory import process_memory_mb

    before = process_memory_mb()
    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, every page touched
    during = process_memory_mb()
    assert 60 < during["rss_mb"] - before["rss_mb"] < 80
    assert during["peak_rss_mb"] >= during["rss_mb"]
    del block
    records = [record(step, rss_mb=500.0 + step, peak_rss_mb=900.0) for step in (100, 200)]
    lines = lines_by_label(learning_curves_figure(records))
    assert lines["resident (RSS)"] == ([100, 200], [600.0, 700.0]) and lines["peak RSS"] == ([100, 200], [900.0, 900.0])
