"""The generated configuration reference (docs/configuration.md) against the schema it comes from."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from mt import config as schema

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import gen_config_docs  # noqa: E402


def test_committed_page_is_what_the_script_writes():
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == gen_config_docs.render(), (
        "docs/configuration.md is stale: run python scripts/gen_config_docs.py"
    )


def _leaf_keys(cls: type, prefix: str) -> list[tuple[str, dataclasses.Field]]:
    keys = []
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            keys += _leaf_keys(type(default), f"{prefix}{field.name}.")
        else:
            keys.append((f"{prefix}{field.name}", field))
    return keys


def test_every_key_has_a_row_with_its_default():
    page = gen_config_docs.render()
    rows = {line.split("|")[1].strip(" `"): line for line in page.splitlines() if line.startswith("| `")}
    # the three attention sites share one table, keyed by the first site
    site_keys = {"model.decoder.self_attention", "model.decoder.cross_attention"}
    expected = [k for k, _ in _leaf_keys(schema.Config, "") if k.rsplit(".", 1)[0] not in site_keys]
    assert sorted(rows) == sorted(expected)
    assert "| `train.lr` | `float` | `0.001` |" in rows["train.lr"]
    assert "| `train.betas` | `list[float]` | `[0.9, 0.98]` |" in rows["train.betas"]
    assert "| `tokenizer.sampling` | `bool \\| None` | `null` |" in rows["tokenizer.sampling"]


def test_field_descriptions_come_from_either_docstring_form():
    @dataclasses.dataclass
    class Node:
        """A node.

        Attributes:
            first, second: shared text
                over two lines.
            third: from the docstring.
        """

        first: int = 1
        second: int = 2
        third: int = 3
        """from the literal | after the field."""

    docs = gen_config_docs.attribute_docs(Node)
    assert docs == {
        "first": "shared text over two lines.",
        "second": "shared text over two lines.",
        "third": "from the literal \\| after the field.",
    }


def test_check_names_a_stale_page(tmp_path, capsys, monkeypatch):
    page = tmp_path / "configuration.md"
    assert gen_config_docs.main(["--page", str(page)]) == 0
    assert gen_config_docs.main(["--check", "--page", str(page)]) == 0
    # a changed default must make the committed page stale
    monkeypatch.setattr(schema.TrainConfig.__dataclass_fields__["lr"], "default", 0.002)
    assert "`0.002`" in gen_config_docs.render()
    assert gen_config_docs.main(["--check", "--page", str(page)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "out of date" in err and "gen_config_docs.py" in err


@pytest.mark.parametrize("text, expected", [
    (":func:`mt.x.y`", "`mt.x.y`"),
    (":class:`~mt.model.aligner.Lexicon`", "`mt.model.aligner.Lexicon`"),
    ("``a|b``", "`a|b`"),
])
def test_sphinx_roles_become_code(text, expected):
    assert gen_config_docs._strip_roles(text) == expected
