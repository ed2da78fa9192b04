"""mt-align --html: a self-contained page whose data round-trips to mt-align's own files, and
which renders in headless Chromium, switching heads and showing links and gold marks."""

import json
import logging
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mt.alignment.align import method_rows
from mt.model.checkpoint import load_for_inference, save_checkpoint
from mt.cli import align_main
from mt.config import to_dict
from mt.alignment.html_view import read_view_data
from mt.data.words import segment

from conftest import random_model, tiny_config

GOLD = [  # (German, English, 1-based links: i-j sure, ipj possible)
    ("Ein Hund rennt .", "A dog runs .", "1-1 2-2 3-3 4-4"),
    ("Zwei Männer spielen Fußball .", "Two men play soccer .", "1-1 2-2 3-3 4-4 5-5 3p4"),
    ("Ein Hund", "A dog", "1-1 2-2"),
]
SOURCES = ["Ein Hund rennt im Park.", "Zwei Männer </script><b>x</b>", "Fußball"]
TARGETS = ["A dog runs in the park.", "Two men play soccer.", "soccer"]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, bilingual_tokenizer):
    """A tiny de→en model on random weights (2 decoder layers, 2 cross-attention heads)."""
    tokenizer = bilingual_tokenizer
    model = random_model(tokenizer)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    state = {"model_config": to_dict(model.cfg), "model": model.state_dict(), "tokenizer": tokenizer.state()}
    save_checkpoint({**state, "data": {"src_lang": "de", "tgt_lang": "en"}, "decoding": {"beam_size": 1}}, path)
    return path


@pytest.fixture(scope="module")
def gold_run(checkpoint, tmp_path_factory):
    """mt-align --gold … --out DIR --html, with Shift-Att, layer 0 and the average of head 1 only."""
    folder = tmp_path_factory.mktemp("gold")
    (folder / "deen.src-tgt").write_text("".join(f"{s} ||| {t}\n" for s, t, _ in GOLD), encoding="utf-8")
    (folder / "deen.talp").write_text("".join(links + "\n" for _, _, links in GOLD))
    out = folder / "aligned"
    align_main([str(checkpoint), "--gold", str(folder / "deen"), "--out", str(out), "--html",
                "--method", "shift", "--layer", "0", "--heads", "1"])
    return out, out / "alignments.html"


@pytest.fixture(scope="module")
def file_run(checkpoint, tmp_path_factory):
    """mt-align --src --tgt --out DIR --html FILE with the defaults (attention, penultimate layer, all heads)."""
    folder = tmp_path_factory.mktemp("files")
    (folder / "src.de").write_text("".join(s + "\n" for s in SOURCES), encoding="utf-8")
    (folder / "tgt.en").write_text("".join(t + "\n" for t in TARGETS), encoding="utf-8")
    out = folder / "aligned"
    page = folder / "view" / "pairs.html"
    align_main([str(checkpoint), "--src", str(folder / "src.de"), "--tgt", str(folder / "tgt.en"),
                "--out", str(out), "--html", str(page)])
    return out, page


def _talp_links(line: str) -> tuple[list[list[int]], list[list[int]]]:
    sure, possible = [], []
    for token in line.split():
        sep = "-" if "-" in token else "p"
        i, j = (int(x) - 1 for x in token.split(sep))
        possible.append([i, j])
        if sep == "-":
            sure.append([i, j])
    return sorted(sure), sorted(possible)


class _Resources(HTMLParser):
    """Every attribute of the page that could load something."""

    def __init__(self):
        super().__init__()
        self.loads = []

    def handle_starttag(self, tag, attrs):
        self.loads += [(tag, name, value) for name, value in attrs if name in ("src", "href", "action", "srcset", "data")]
        if tag in ("link", "img", "iframe", "object", "embed", "base"):
            self.loads.append((tag, "", ""))


@pytest.mark.parametrize("run", ["gold_run", "file_run"])
def test_page_is_self_contained(run, request):
    page = request.getfixturevalue(run)[1].read_text(encoding="utf-8")
    parser = _Resources()
    parser.feed(page)
    assert parser.loads == []
    assert "http://" not in page and "https://" not in page
    assert page.count("<script") == 3  # the error hook, the data and the view: nothing else can run
    assert "default-src 'none'" in page  # the browser itself refuses any load


@pytest.mark.parametrize("run", ["gold_run", "file_run"])
def test_embedded_matrices_are_the_ones_mt_align_writes(run, request, checkpoint):
    out, page = request.getfixturevalue(run)
    data = read_view_data(page.read_text(encoding="utf-8"))
    records = [json.loads(line) for line in (out / "alignments.jsonl").read_text(encoding="utf-8").splitlines()]
    attention = np.load(out / "attention.npz")
    _, tokenizer, _ = load_for_inference(checkpoint)
    model_cfg = tiny_config()
    n_heads = data["n_heads"]
    assert (data["n_layers"], n_heads) == attention["0"].shape[:2] == (2, 2)
    assert len(data["pairs"]) == data["n_pairs_total"] == len(records)
    for k, (pair, record) in enumerate(zip(data["pairs"], records)):
        assert (pair["src_words"], pair["tgt_words"], pair["links"]) == (
            record["src_words"], record["tgt_words"], record["links"]
        )
        matrices = np.array(pair["matrices"]) / data["scale"]  # (n_layers, n_heads + 1, n_tgt_words, n_src_words)
        # the view opens on what mt-align wrote: its layer, its head average
        np.testing.assert_allclose(matrices[data["layer"], n_heads], record["word_matrix"], atol=5e-4 + 1e-6)
        # every layer and head: the npz's piece-level attention pooled into the words
        (seg,) = segment(tokenizer, [" ".join(record["src_words"])], [" ".join(record["tgt_words"])], model_cfg.max_positions - 1)
        for layer in range(data["n_layers"]):
            for head in range(n_heads):
                words = seg.word_matrix(method_rows(attention[str(k)][layer, head], data["method"]))
                np.testing.assert_allclose(matrices[layer, head], words, atol=5e-4 + 1e-6)
    if run == "gold_run":
        assert (data["method"], data["layer"], data["heads"], data["has_gold"]) == ("shift", 0, [1], True)
        for pair, (_, _, line) in zip(data["pairs"], GOLD):
            assert (pair["sure"], pair["possible"]) == _talp_links(line)
            np.testing.assert_array_equal(np.array(pair["matrices"])[:, n_heads], np.array(pair["matrices"])[:, 1])
    else:
        assert (data["method"], data["layer"], data["heads"], data["has_gold"]) == ("attention", 0, [0, 1], False)
        assert all("sure" not in pair for pair in data["pairs"])
        assert data["pairs"][1]["src_words"][2] == "</script><b>x</b>"  # carried as data, escaped in the page


@pytest.mark.parametrize(
    "flags, message",
    [
        (["Ein Hund.", "A dog.", "--html"], "give --out DIR"),
        (["--html", "Ein Hund."], "must end in .html"),  # the sentence is not taken for a file name
        (["--gold", "x", "--html", "view.txt"], "must end in .html"),
    ],
)
def test_html_flag_mistakes_are_one_line_errors(checkpoint, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        align_main([str(checkpoint), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_inline_pair_writes_the_named_file(checkpoint, tmp_path):
    align_main([str(checkpoint), "Ein Hund.", "A dog.", "--html", str(tmp_path / "one.html")])
    data = read_view_data((tmp_path / "one.html").read_text(encoding="utf-8"))
    assert [(p["src_words"], p["tgt_words"]) for p in data["pairs"]] == [(["Ein", "Hund."], ["A", "dog."])]


# ------------------------------------------------------------------------ in headless Chromium
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through the Debian chromedriver (never downloads one). Skips when
    Chromium, chromedriver or selenium are missing, unless MT_REQUIRE_BROWSER=1 (CI): then fails."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        selenium = False
    else:
        selenium = True
    if not (selenium and CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        why = "needs selenium, /usr/bin/chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("MT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MT_REQUIRE_BROWSER=1 but the browser test {why}")
        pytest.skip(f"the browser test {why}")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def _open(driver, page: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(page.resolve().as_uri())
    # drawn, or stopped by an error (which the caller's _errors check then names)
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.pairs || window.viewErrors.length"))


def _errors(driver) -> list:
    script_errors = driver.execute_script("return window.viewErrors")
    console = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    return script_errors + console


_PIXELS = """
const [index, rgb] = arguments;
const canvas = document.querySelectorAll('canvas')[index];
const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let count = 0;
for (let p = 0; p < pixels.length; p += 4)
  if (Math.abs(pixels[p] - rgb[0]) < 12 && Math.abs(pixels[p + 1] - rgb[1]) < 12 && Math.abs(pixels[p + 2] - rgb[2]) < 12) count++;
return count;
"""
ORANGE, CRIMSON = (255, 140, 0), (220, 20, 60)


def _picture(driver, index: int = 0) -> str:
    return driver.execute_script("return document.querySelectorAll('canvas')[arguments[0]].toDataURL()", index)


def _choose(driver, control: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", control)).select_by_value(value)


def test_view_renders_and_switching_heads_changes_the_picture(browser, gold_run):
    _, page = gold_run
    data = read_view_data(page.read_text(encoding="utf-8"))
    _open(browser, page)
    assert _errors(browser) == []
    assert browser.execute_script("return document.body.dataset.pairs") == str(len(GOLD))
    assert len(browser.find_elements("css selector", "section.pair canvas")) == len(GOLD)
    layer_options = [o.get_attribute("value") for o in browser.find_elements("css selector", "#layer option")]
    head_options = [o.get_attribute("value") for o in browser.find_elements("css selector", "#head option")]
    assert layer_options == ["0", "1"] and head_options == ["0", "1", "2"]  # heads 0, 1 and their average

    matrices = np.array(data["pairs"][0]["matrices"])
    assert not np.array_equal(matrices[1, 0], matrices[1, 1])  # the two heads do differ at layer 1
    _choose(browser, "layer", "1")
    _choose(browser, "head", "0")
    head0 = _picture(browser)
    _choose(browser, "head", "1")
    head1 = _picture(browser)
    assert head0 != head1
    _choose(browser, "head", "0")
    assert _picture(browser) == head0  # the picture is a function of the choice

    # gold marks (orange) and links (crimson) are drawn, and toggled off by their checkboxes
    assert browser.find_element("id", "gold-control").is_displayed()
    assert browser.execute_script(_PIXELS, 0, ORANGE) > 0
    assert browser.execute_script(_PIXELS, 0, CRIMSON) > 0
    browser.find_element("id", "gold").click()
    assert browser.execute_script(_PIXELS, 0, ORANGE) == 0
    assert browser.execute_script(_PIXELS, 0, CRIMSON) > 0
    browser.find_element("id", "links").click()
    assert browser.execute_script(_PIXELS, 0, CRIMSON) == 0
    assert _errors(browser) == []


def test_view_without_gold_has_no_gold_marks_and_keeps_markup_as_text(browser, file_run):
    _, page = file_run
    _open(browser, page)
    assert _errors(browser) == []
    assert browser.execute_script("return document.body.dataset.pairs") == str(len(SOURCES))
    assert not browser.find_element("id", "gold-control").is_displayed()
    for index in range(len(SOURCES)):
        assert browser.execute_script(_PIXELS, index, ORANGE) == 0
        assert browser.execute_script(_PIXELS, index, CRIMSON) > 0
    assert browser.find_elements("css selector", "main b") == []  # the sentence's <b> stayed text
    assert "</script><b>x</b>" in browser.find_element("id", "pair-1").text


def test_view_data_stops_at_the_size_budget(checkpoint, tmp_path, caplog):
    from mt.alignment.align import align
    from mt.alignment.html_view import view_data, write_html

    model, tokenizer, _ = load_for_inference(checkpoint)
    alignments = align(model, tokenizer, SOURCES, TARGETS)
    sizes = [2 * 3 * len(a.tgt_words) * len(a.src_words) for a in alignments]  # n_layers * (n_heads + 1) * words
    for budget, shown in [(0, 1), (sizes[0], 1), (sizes[0] + sizes[1], 2), (sum(sizes), 3)]:
        data = view_data(alignments, "attention", 0, max_values=budget)
        assert (len(data["pairs"]), data["n_pairs_total"]) == (shown, 3)
    with caplog.at_level(logging.WARNING, logger="mt.alignment.html_view"):
        write_html(tmp_path / "view.html", view_data(alignments, "attention", 0, max_values=sizes[0]))
    assert "first 1 of 3 pairs" in caplog.text
