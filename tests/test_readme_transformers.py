"""The README's "Transformers" examples, extracted and run literally."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets() -> list[str]:
    text = README.read_text()
    section = text.split("## Transformers\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_readme_transformers_section_has_an_encoder_a_decoder_and_an_export_example():
    snippets = _snippets()
    assert len(snippets) == 5  # the fifth, the Trainer example, runs in test_readme_examples
    assert "BertForSequenceClassification" in snippets[0]
    assert "LlamaForCausalLM" in snippets[1] and "generate" in snippets[1]
    assert "save_pretrained" in snippets[2] and "from_pretrained" in snippets[2]
    assert "pretrained_round_to" in snippets[3] and "from_pretrained" in snippets[3]
    assert "SpaPruningCallback" in snippets[4] and "Trainer(" in snippets[4]


@pytest.mark.parametrize(
    "index", [0, 1, 2, 3], ids=["encoder", "decoder", "save_pretrained", "derived_head_size"]
)
def test_readme_transformers_example_runs(index, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the export example writes a directory where it runs
    namespace: dict = {}
    exec(compile(_snippets()[index], f"README.md:Transformers[{index}]", "exec"), namespace)
    if index == 0:
        heads = int(capsys.readouterr().out.strip())
        assert 1 <= heads < 4  # some heads of the first layer were removed, never all
    if index == 2:
        # density 0.5 of 2 key/value heads x 1536 + 64 neurons x 96 weights per layer: local
        # ranking keeps 1 key/value head (2 query heads) and 32 neurons in each layer.
        assert capsys.readouterr().out.split() == ["2", "32"]
    if index == 3:
        # hidden 32 / 4 heads: the exported config keeps the head size 8 with fewer heads.
        *_, heads, hidden = capsys.readouterr().out.split()
        assert 1 <= int(heads) < 4 and int(hidden) == 8 * int(heads)
