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


def test_readme_transformers_section_has_an_encoder_and_a_decoder_example():
    snippets = _snippets()
    assert len(snippets) == 2
    assert "BertForSequenceClassification" in snippets[0]
    assert "LlamaForCausalLM" in snippets[1] and "generate" in snippets[1]


@pytest.mark.parametrize("index", [0, 1], ids=["encoder", "decoder"])
def test_readme_transformers_example_runs(index, capsys):
    namespace: dict = {}
    exec(compile(_snippets()[index], f"README.md:Transformers[{index}]", "exec"), namespace)
    if index == 0:
        heads = int(capsys.readouterr().out.strip())
        assert 1 <= heads < 4  # some heads of the first layer were removed, never all
