"""Any corpus → train/valid/test pairs: Hugging Face datasets (saved, parquet, json, streamed) and
local files (text, .gz, TSV, JSONL), all built here in tmp_path and read offline."""

import dataclasses
import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mt.config import DataConfig, TokenizerConfig, from_hydra
from mt.data.corpora import load_splits, split_label, text_sample
from mt.errors import ConfigError, DataError
from mt.data.tokenizer import Tokenizer
from mt.training.training_data import encode_stream

from conftest import REPO

datasets.disable_progress_bars()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may reach the Hub: the environment for subprocesses, the flags ``datasets`` and
    ``huggingface_hub`` read once at import for this process."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for module, flag in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE")):
        monkeypatch.setattr(module, flag, True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

WORDS = {
    "de": ["Haus", "Hund", "läuft", "schnell", "Straße", "groß", "Frau", "über", "die", "der"],
    "en": ["house", "dog", "runs", "fast", "street", "big", "woman", "over", "the", "a"],
    "fr": ["maison", "chien", "court", "vite", "rue", "grand", "femme", "sur", "la", "le"],
}


def make_pairs(n: int, seed: int) -> list[dict]:
    """Sentence triples {de, en, fr} of 1-20 words; a few carry separators that str.splitlines would
    split on (U+2028, form feed, U+0085), two have an empty side."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        length = rng.randint(1, 20)
        picks = [rng.randrange(10) for _ in range(length)]
        pair = {lang: " ".join(words[p] for p in picks) + f" {i}." for lang, words in WORDS.items()}
        pairs.append(pair)
    pairs[1]["de"] += " \u2028 Zeile"
    pairs[2]["en"] += " \x0c page \x85 next"
    pairs[3] = {"de": "", "en": "a dog.", "fr": "un chien."}
    pairs[4] = {"de": "ein Hund.", "en": "", "fr": ""}
    return pairs


SPLITS = {"train": make_pairs(40, 1), "validation": make_pairs(9, 2), "test": make_pairs(7, 3)}
ROLE_OF = {"train": "train", "validation": "valid", "test": "test"}


def expected(split: str, src: str = "de", tgt: str = "en") -> list[tuple[str, str]]:
    return [(pair[src], pair[tgt]) for pair in SPLITS[split]]


def as_pairs(dataset) -> list[tuple[str, str]]:
    return [(row["src"], row["tgt"]) for row in dataset]


def hf_config(path, **overrides) -> DataConfig:
    splits = dict(train_split="train", valid_split="validation", test_split="test")
    return DataConfig(**{"source": "hf", "name": None, "path": str(path), **splits, **overrides})


def files_config(path, **overrides) -> DataConfig:
    splits = dict(train_split="train", valid_split="valid", test_split="test")
    return DataConfig(**{"source": "files", "name": None, "path": str(path), **splits, **overrides})


def check_all_splits(splits, src="de", tgt="en"):
    assert set(splits) == {"train", "valid", "test"}
    for split, role in ROLE_OF.items():
        assert isinstance(splits[role], datasets.Dataset)
        assert splits[role].column_names == ["src", "tgt"]
        assert as_pairs(splits[role]) == expected(split, src, tgt)


# ------------------------------------------------------------------------------ Hugging Face
@pytest.fixture(scope="module")
def saved_dict(tmp_path_factory) -> Path:
    """A DatasetDict.save_to_disk folder with a Translation column (de, en, fr) and an id column."""
    folder = tmp_path_factory.mktemp("saved") / "corpus"
    translation = datasets.Translation(["de", "en", "fr"])
    features = datasets.Features({"id": datasets.Value("int32"), "translation": translation})
    datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict({"id": list(range(len(pairs))), "translation": pairs}, features=features)
            for split, pairs in SPLITS.items()
        }
    ).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory) -> Path:
    """Parquet files named after their splits, a struct column {de, en, fr} and two plain columns."""
    folder = tmp_path_factory.mktemp("parquet")
    for split, pairs in SPLITS.items():
        columns = {"translation": pairs, "german": [p["de"] for p in pairs], "english": [p["en"] for p in pairs]}
        datasets.Dataset.from_dict(columns).to_parquet(str(folder / f"{split}.parquet"))
    return folder


@pytest.fixture(scope="module")
def json_folder(tmp_path_factory) -> Path:
    """JSON lines files named after their splits with two text columns."""
    folder = tmp_path_factory.mktemp("json")
    for split, pairs in SPLITS.items():
        lines = [json.dumps({"german": p["de"], "english": p["en"], "n": i}) for i, p in enumerate(pairs)]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_save_to_disk_translation_column_any_direction(saved_dict, tmp_path):
    check_all_splits(load_splits(hf_config(saved_dict, cache_dir=str(tmp_path))))
    check_all_splits(load_splits(hf_config(saved_dict, src_lang="en", tgt_lang="fr")), "en", "fr")


def test_parquet_folder_and_parquet_builder_with_data_files(parquet_folder, tmp_path):
    check_all_splits(load_splits(hf_config(parquet_folder, cache_dir=str(tmp_path / "a"))))
    data_files = {split: str(parquet_folder / f"{split}.parquet") for split in SPLITS}
    cfg = hf_config("parquet", data_files=data_files, cache_dir=str(tmp_path / "b"), src_lang="fr", tgt_lang="de")
    check_all_splits(load_splits(cfg), "fr", "de")


@pytest.mark.parametrize("fixture", ["parquet_folder", "json_folder"])
def test_two_named_text_columns(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    cfg = hf_config(folder, src_column="german", tgt_column="english", cache_dir=str(tmp_path))
    check_all_splits(load_splits(cfg))
    swapped = dataclasses.replace(cfg, src_lang="en", tgt_lang="de", src_column="english", tgt_column="german")
    check_all_splits(load_splits(swapped), "en", "de")


def test_split_slices_and_sentence_limits(parquet_folder, tmp_path):
    cfg = hf_config(
        parquet_folder,
        cache_dir=str(tmp_path),
        train_split="train[10:]",
        valid_split="train[:10%]",
        test_split="train[-5:]",
        max_train_sentences=20,
    )
    splits = load_splits(cfg)
    train = expected("train")
    assert as_pairs(splits["train"]) == train[10:][:20]
    assert as_pairs(splits["valid"]) == train[:4]
    assert as_pairs(splits["test"]) == train[-5:]
    assert split_label("train[:10%]") == "train_10" and split_label("/data/wmt/newstest2014") == "newstest2014"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"valid_split": "dev"}, "has no split 'dev' (data.valid_split); splits: train, validation, test"),
        ({"tgt_lang": "cs"}, "column 'translation' has no 'cs' entries (data.tgt_lang); languages: de, en, fr"),
        ({"translation_column": "pairs"}, "has no column 'pairs'; columns: id, translation"),
        ({"src_column": "id", "tgt_column": "translation"}, "column 'id' holds Value('int32'), not text"),
    ],
)
def test_hf_mistakes_are_one_line(saved_dict, overrides, message):
    with pytest.raises(DataError) as error:
        load_splits(hf_config(saved_dict, **overrides))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_hf_not_found_offline_is_one_line(tmp_path):
    for path, message in (
        ("no-such-org/no-such-corpus", "cannot load dataset 'no-such-org/no-such-corpus'"),
        (str(tmp_path / "missing"), f"no folder {tmp_path / 'missing'} (data.path)"),
    ):
        with pytest.raises(DataError) as error:
            load_splits(hf_config(path, cache_dir=str(tmp_path / "cache")))
        assert message in str(error.value) and "\n" not in str(error.value)
    if int(datasets.__version__.split(".")[0]) >= 4:  # no more loading scripts
        script = tmp_path / "scripted"
        script.mkdir()
        (script / "scripted.py").write_text("import datasets\n")
        with pytest.raises(DataError, match="built by a loading script.*refs/convert/parquet$"):
            load_splits(hf_config(script, cache_dir=str(tmp_path / "cache")))
    one = tmp_path / "one"
    datasets.Dataset.from_dict({"translation": SPLITS["test"]}).save_to_disk(str(one))
    with pytest.raises(DataError, match="one saved Dataset"):
        load_splits(hf_config(one))


# --------------------------------------------------------------------------------- streaming
@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = [p[lang] for pairs in SPLITS.values() for p in pairs for lang in ("de", "en")]
    return Tokenizer.train(texts, texts, TokenizerConfig(vocab_size=60))


def naive_encode(pairs, tokenizer, max_len):
    """Reference: encode pair by pair, keep pairs with 1..max_len pieces on both sides."""
    src_kept, tgt_kept = [], []
    for src, tgt in pairs:
        s, t = tokenizer.encode_src([src])[0], tokenizer.encode_tgt([tgt])[0]
        if 0 < len(s) <= max_len and 0 < len(t) <= max_len:
            src_kept.append(s)
            tgt_kept.append(t)
    return src_kept, tgt_kept


@pytest.mark.parametrize(
    "fixture, overrides",
    [
        ("parquet_folder", {}),
        ("json_folder", {"src_column": "german", "tgt_column": "english"}),
        ("saved_dict", {}),
    ],
)
def test_streaming_gives_the_same_pairs_and_ids(fixture, overrides, request, tokenizer, tmp_path):
    cfg = hf_config(request.getfixturevalue(fixture), cache_dir=str(tmp_path), **overrides)
    materialised = load_splits(cfg)
    streamed = load_splits(dataclasses.replace(cfg, streaming=True))
    assert isinstance(streamed["train"], datasets.IterableDataset)
    assert as_pairs(streamed["train"]) == as_pairs(materialised["train"]) == expected("train")
    for role in ("valid", "test"):
        assert isinstance(streamed[role], datasets.Dataset)
        assert as_pairs(streamed[role]) == as_pairs(materialised[role])

    max_len = 12  # drops the longer sentences and the pairs with an empty side
    src_ids, tgt_ids = encode_stream(streamed["train"], tokenizer, max_len, chunk_size=7)
    reference_src, reference_tgt = naive_encode(expected("train"), tokenizer, max_len)
    assert 0 < len(reference_src) < len(expected("train"))
    assert len(src_ids) == len(reference_src) and len(tgt_ids) == len(reference_tgt)
    for got, want in zip(src_ids + tgt_ids, reference_src + reference_tgt):
        assert got.dtype == np.int32 and got.tolist() == want
    assert as_pairs(text_sample(streamed["train"], 6)) == expected("train")[:6]


def test_streamed_slices_and_limits(parquet_folder, tmp_path):
    cfg = hf_config(parquet_folder, cache_dir=str(tmp_path), streaming=True, train_split="train[5:30]")
    assert as_pairs(load_splits(cfg)["train"]) == expected("train")[5:30]
    limited = dataclasses.replace(cfg, max_train_sentences=4, valid_split="train[:3]", max_valid_sentences=2)
    splits = load_splits(limited)
    assert as_pairs(splits["train"]) == expected("train")[5:9]
    assert as_pairs(splits["valid"]) == expected("train")[:2]
    with pytest.raises(ConfigError, match=r"config key 'data\.train_split' = 'train\[:50%\]'"):
        load_splits(dataclasses.replace(cfg, train_split="train[:50%]"))


def test_streamed_save_to_disk_split_takes_any_slice(saved_dict):
    cfg = hf_config(saved_dict, streaming=True, train_split="train[-50%:]", valid_split="train[:3]")
    splits = load_splits(cfg)
    assert isinstance(splits["train"], datasets.IterableDataset)
    assert as_pairs(splits["train"]) == expected("train")[20:]
    assert as_pairs(splits["valid"]) == expected("train")[:3]


# ------------------------------------------------------------------------------ local files
def write_text(path: Path, lines: list[str]) -> None:
    payload = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_corpus(folder: Path, fmt: str, jsonl_style: str = "languages") -> None:
    """The three splits in ``fmt``; train and test plain, validation gzipped."""
    for split, pairs in SPLITS.items():
        name, gz = {"train": ("train", ""), "validation": ("valid", ".gz"), "test": ("test", "")}[split]
        if fmt == "text":
            for lang in ("de", "en", "fr"):
                write_text(folder / f"{name}.{lang}{gz}", [p[lang] for p in pairs])
        elif fmt == "tsv":
            write_text(folder / f"{name}.tsv{gz}", [f"{p['de']}\t{p['en']}" for p in pairs])
        else:
            records = {
                "languages": [{"de": p["de"], "en": p["en"], "fr": p["fr"]} for p in pairs],
                "translation": [{"translation": {"de": p["de"], "en": p["en"]}} for p in pairs],
                "keys": [{"source": p["de"], "target": p["en"]} for p in pairs],
            }[jsonl_style]
            write_text(folder / f"{name}.jsonl{gz}", [json.dumps(r, ensure_ascii=False) for r in records])


@pytest.mark.parametrize(
    "fmt, style, overrides",
    [
        ("text", None, {}),
        ("tsv", None, {}),
        ("jsonl", "languages", {}),
        ("jsonl", "translation", {}),
        ("jsonl", "keys", {"src_column": "source", "tgt_column": "target"}),
    ],
)
def test_files_round_trip_plain_and_gz(fmt, style, overrides, tmp_path):
    write_corpus(tmp_path, fmt, style)
    cfg = files_config(tmp_path, format=fmt, **overrides)
    check_all_splits(load_splits(cfg))
    streamed = load_splits(dataclasses.replace(cfg, streaming=True, train_split="train[3:]"))
    assert as_pairs(streamed["train"]) == expected("train")[3:]


def test_files_read_in_chunks_give_the_same_splits(tmp_path, monkeypatch):
    from mt.data import corpora

    materialise = corpora._materialise  # Arrow a chunk at a time: here 2 pairs, so every split has several
    monkeypatch.setattr(corpora, "_materialise", lambda pairs: materialise(pairs, chunk_size=2))
    write_corpus(tmp_path, "text")
    splits = load_splits(files_config(tmp_path))
    check_all_splits(splits)
    assert splits["train"].features == corpora.PAIR_FEATURES
    (tmp_path / "empty.de").write_text("")
    (tmp_path / "empty.en").write_text("")
    empty = load_splits(dataclasses.replace(files_config(tmp_path), test_split="empty"))["test"]
    assert len(empty) == 0 and empty.features == corpora.PAIR_FEATURES


def test_text_files_any_direction_and_absolute_stems(tmp_path):
    write_corpus(tmp_path, "text")
    cfg = files_config("elsewhere", src_lang="fr", tgt_lang="de", train_split=str(tmp_path / "train"))
    cfg = dataclasses.replace(cfg, valid_split=str(tmp_path / "valid"), test_split=str(tmp_path / "test"))
    check_all_splits(load_splits(cfg), "fr", "de")


def test_files_mistakes_name_the_file(tmp_path):
    write_corpus(tmp_path, "text")
    write_text(tmp_path / "test.en", [p["en"] for p in SPLITS["test"]][:-1])
    with pytest.raises(DataError) as error:
        load_splits(files_config(tmp_path))
    de, en = tmp_path / "test.de", tmp_path / "test.en"
    assert str(error.value) == f"{de} has more lines than {en} ({en} ends after line 6)"

    write_text(tmp_path / "valid.tsv", ["ein Haus\ta house", "kein Tab hier", "a\tb\tc"])
    with pytest.raises(DataError, match=f"^{tmp_path / 'valid.tsv'}:2: expected source<TAB>target, found 0 tabs$"):
        load_splits(files_config(tmp_path, format="tsv", train_split="valid"))

    write_text(tmp_path / "bad.jsonl", ['{"de": "a", "en": "b"}', "", '{"de": "c"}'])
    with pytest.raises(DataError, match=f"^{tmp_path / 'bad.jsonl'}:3: no key 'en'; keys: de$"):
        load_splits(files_config(tmp_path, format="jsonl", train_split="bad"))
    write_text(tmp_path / "bad.jsonl", ['{"de": "a", "en": "b"', ""])
    with pytest.raises(DataError, match=f"^{tmp_path / 'bad.jsonl'}:1: not JSON"):
        load_splits(files_config(tmp_path, format="jsonl", train_split="bad"))

    write_text(tmp_path / "train.en.gz", ["x"])
    with pytest.raises(DataError, match="both .*train.en and .*train.en.gz exist"):
        load_splits(files_config(tmp_path))
    with pytest.raises(DataError, match=r"nowhere\.de not found \(nor nowhere\.de\.gz\) for data\.train_split="):
        load_splits(files_config(tmp_path, train_split="nowhere"))


# ------------------------------------------------------------------------------ configuration
def compose_config(overrides=()):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_group_files_set_the_source():
    hf = from_hydra(compose_config(["data=hf", "data.path=iwslt2017", "data.name=iwslt2017-de-en"])).data
    assert (hf.source, hf.path, hf.name, hf.valid_split) == ("hf", "iwslt2017", "iwslt2017-de-en", "validation")
    assert not hf.streaming and not hf.trust_remote_code
    overrides = ["data=files", "data.path=/corpus", "data.src_lang=pt", "data.tgt_lang=zh_Hans"]
    files = from_hydra(compose_config(overrides)).data
    assert (files.source, files.format, files.src_lang, files.tgt_lang) == ("files", "text", "pt", "zh_Hans")
    assert from_hydra(compose_config()).data.source == "multi30k"


def test_hf_local_folder_needs_only_data_path(parquet_folder, tmp_path, monkeypatch):
    """``data=hf data.path=FOLDER`` loads a local folder: no Hub configuration name to unset."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path))  # the Arrow cache goes here
    data = from_hydra(compose_config(["data=hf", f"data.path={parquet_folder}"])).data
    assert data.name is None
    check_all_splits(load_splits(data))


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data=hf"], "data.path"),  # ??? in data/hf.yaml: required
        (["data=files"], "data.path"),
        (["data=hf", "data.path=null"], "data.path"),
        (["data=files", "data.path=null"], "data.path"),
        (["data=files", "data.path=corpus", "data.format=csv"], "data.format"),
        (["data=files", "data.path=corpus", "data.src_column=a", "data.tgt_column=b"], "data.src_column"),
        (["data=hf", "data.path=corpus", "data.src_column=german"], "data.tgt_column"),
        (["data=hf", "data.path=corpus", "data.src_column=x", "data.tgt_column=x"], "data.tgt_column"),
        (["data=hf", "data.path=corpus", "data.src_lang='pt BR'"], "data.src_lang"),
        (["data=hf", "data.path=corpus", "data.tgt_lang=de"], "data.tgt_lang"),
        (["data=hf", "data.path=corpus", "data.source=tfds"], "data.source"),
        (["data=hf", "data.path=corpus", "data.streaming=true", "data.tokenizer_sample=0"], "data.tokenizer_sample"),
        (
            ["data=files", "data.path=corpus", "data.streaming=true"]
            + ["data.alignment_gold=g/deen", "data.alignment_gold_train_copies=2"],
            "data.alignment_gold_train_copies",
        ),
        (["data.name=wmt14"], "data.name"),
        (["data.src_lang=pt"], "data.src_lang"),
        (["data=files", "data.path=corpus", "data.max_valid_sentences=-1"], "data.max_valid_sentences"),
    ],
)
def test_invalid_data_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^config key '{key}'".replace(".", r"\.")) as error:
        from_hydra(compose_config(overrides))
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------ end to end
@pytest.mark.integration
@pytest.mark.parametrize("streaming", [False, True], ids=["in-memory", "streaming"])
def test_mt_train_on_local_files(streaming, tmp_path):
    """``mt-train data=files`` for a few steps on a TSV corpus written here (needs mt/training/train.py
    to read its data through mt.data.corpora.load_splits)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_corpus(corpus, "tsv")
    env = {k: v for k, v in os.environ.items() if k != "MT_DATA_MIRROR"}  # no Multi30k to fall back on
    args = [
        str(Path(sys.executable).parent / "mt-train"),
        "experiment=smoke",
        "data=files",
        f"data.path={corpus}",
        "data.format=tsv",
        f"data.streaming={str(streaming).lower()}",
        "data.tokenizer_sample=30",
        "data.max_test_sentences=0",
        f"data.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "tokenizer.vocab_size=60",
        "train.max_steps=6",
        "train.valid_every=3",
        "train.batch_tokens=256",
        "train.num_threads=1",
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    hypotheses = (run_dir / "test.hyp.en").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(hypotheses) == len(SPLITS["test"])
    scores = json.loads((run_dir / "test_scores.json").read_text())
    assert scores["n_sentences"] == len(SPLITS["test"])
