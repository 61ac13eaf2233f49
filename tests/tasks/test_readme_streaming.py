"""The README's "Streaming from sharded checkpoints" example, extracted and run literally."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    return text.split("## Streaming from sharded checkpoints\n", 1)[1].split("\n## ", 1)[0]


def test_readme_streaming_example_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (snippet,) = re.findall(r"```python\n(.*?)```", _section(), flags=re.DOTALL)
    exec(compile(snippet, "README.md:Streaming", "exec"), {})
    assert capsys.readouterr().out.split() == ["1", "64"]
    assert (tmp_path / "llama-pruned" / "model.safetensors.index.json").is_file()


def test_readme_streaming_command_runs_as_written(tmp_path, monkeypatch):
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    from spa.cli import main

    monkeypatch.chdir(tmp_path)
    (snippet,) = re.findall(r"```python\n(.*?)```", _section(), flags=re.DOTALL)
    exec(compile(snippet.split("calibration =")[0], "README.md:Streaming", "exec"), {})
    words = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2, "c": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()  # the directory's own tokenizer
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]")
    tokenizer.save_pretrained("llama-shards")
    (tmp_path / "calibration.txt").write_text("a b c " * 100)  # 300 tokens >= 2 x 128
    (command,) = re.findall(r"```bash\n(.*?)```", _section(), flags=re.DOTALL)
    assert command.startswith("spa prune-shards")
    assert main(command.split()[1:]) == 0
    assert transformers.AutoConfig.from_pretrained("llama-pruned-cli").num_key_value_heads == 1
    assert (tmp_path / "llama-pruned-cli" / "tokenizer.json").is_file()  # copied over
