"""The one model loader: registry networks, state-dict files and `transformers` directories,
with one-line errors naming the path and what was wrong (files made by the tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification

from spa.errors import ConfigError, SpaError
from spa.models import create_model
from spa.models.loading import (
    build_transformers,
    load_model,
    load_tokenizer,
    load_transformers,
    read_state_dict,
)

OPTIONS = {"num_classes": 3, "in_channels": 1, "width": 4}


def _source() -> torch.nn.Module:
    return create_model("tiny_convnet", **OPTIONS)


def _assert_same_state(model: torch.nn.Module, state: dict) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, tensor in state.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_state_dict_file_loads_into_the_named_network(tmp_path: Path, suffix: str) -> None:
    state = _source().state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    loaded = load_model(path, name="tiny_convnet", options=OPTIONS)
    assert (loaded.source, loaded.name, loaded.options) == ("spa.models", "tiny_convnet", OPTIONS)
    _assert_same_state(loaded.model, state)


def test_training_checkpoint_wrapper_is_unwrapped(tmp_path: Path) -> None:
    state = _source().state_dict()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "checkpoint.pt")
    assert set(read_state_dict(tmp_path / "checkpoint.pt")) == set(state)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([torch.zeros(2)], "expected a state dict"),
        ({"weight": "not a tensor"}, "expected a state dict"),
    ],
)
def test_file_that_is_not_a_state_dict_is_refused(tmp_path: Path, content, message) -> None:
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(ConfigError, match=f"^{path}: {message}"):
        load_model(path, name="tiny_convnet", options=OPTIONS)


def test_unreadable_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(ConfigError, match=f"^{path}: cannot read weights") as error:
        read_state_dict(path)
    assert "\n" not in str(error.value)


def test_missing_path_unknown_suffix_and_missing_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="absent.pt: no such model file or directory"):
        load_model(tmp_path / "absent.pt", name="tiny_convnet")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"weights\.bin: expected a state-dict file \(\.pt"):
        load_model(tmp_path / "weights.bin", name="tiny_convnet")
    torch.save(_source().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match="weights.pt: a state-dict file needs a spa.models"):
        load_model(tmp_path / "weights.pt")


def test_unknown_model_name_lists_known_ones(tmp_path: Path) -> None:
    torch.save(_source().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match="unknown model 'resnet9'; known: .*resnet18.*tiny"):
        load_model(tmp_path / "weights.pt", name="resnet9")


def test_state_dict_of_another_network_names_file_and_key(tmp_path: Path) -> None:
    torch.save(_source().state_dict(), tmp_path / "weights.pt")
    wider = {**OPTIONS, "width": 8}
    with pytest.raises(ConfigError, match=r"weights\.pt: key '.*' has shape"):
        load_model(tmp_path / "weights.pt", name="tiny_convnet", options=wider)


def _bert_config() -> BertConfig:
    return BertConfig(
        vocab_size=20,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )


def test_transformers_directory_loads_with_the_task_class(tmp_path: Path) -> None:
    source = BertForQuestionAnswering(_bert_config()).eval()
    source.save_pretrained(tmp_path / "bert")
    loaded = load_model(tmp_path / "bert", auto_class="AutoModelForQuestionAnswering")
    assert loaded.source == "transformers" and loaded.name == "BertForQuestionAnswering"
    _assert_same_state(loaded.model, source.state_dict())


def test_transformers_directory_defaults_to_its_recorded_architecture(tmp_path: Path) -> None:
    BertForSequenceClassification(_bert_config()).save_pretrained(tmp_path / "bert")
    model = load_transformers(tmp_path / "bert")
    assert type(model) is BertForSequenceClassification


def test_directory_without_config_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpaError, match="empty: a transformers model directory needs config.json"):
        load_model(tmp_path / "empty")


def test_config_json_without_architecture_or_with_unknown_class(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="bert: config.json names no architecture"):
        load_transformers(folder)
    (folder / "config.json").write_text(json.dumps({"architectures": ["NoSuchModel"]}))
    with pytest.raises(ConfigError, match="'NoSuchModel' is not a transformers model class"):
        load_transformers(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: cannot read it as JSON"):
        load_transformers(folder)


def test_directory_without_weights_is_refused_naming_it(tmp_path: Path) -> None:
    _bert_config().save_pretrained(tmp_path / "bert")  # config.json only
    with pytest.raises(ConfigError, match="bert: cannot load the model with"):
        load_transformers(tmp_path / "bert", "AutoModelForQuestionAnswering")


def test_directory_without_tokenizer_is_refused(tmp_path: Path) -> None:
    BertForQuestionAnswering(_bert_config()).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="bert: no tokenizer vocabulary"):
        load_tokenizer(tmp_path / "bert")


def test_saved_tokenizer_loads(tmp_path: Path) -> None:
    from transformers import BertTokenizerFast

    vocabulary = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "the": 4, "cat": 5}
    BertForQuestionAnswering(_bert_config()).save_pretrained(tmp_path / "bert")
    BertTokenizerFast(vocab=vocabulary).save_pretrained(tmp_path / "bert")
    tokenizer = load_tokenizer(tmp_path / "bert")
    assert tokenizer("the cat")["input_ids"] == [2, 4, 5, 3]


def test_build_transformers_from_a_config_dict() -> None:
    config = _bert_config().to_dict()
    model = build_transformers("BertForQuestionAnswering", config)
    assert type(model) is BertForQuestionAnswering
    assert model.config.hidden_size == 16
    with pytest.raises(ConfigError, match="unknown transformers model class 'Nope'"):
        build_transformers("Nope", config)


def test_tied_weights_stored_once_load_into_every_name(tmp_path: Path) -> None:
    from spa.models import create_model

    options = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_key_value_heads": 1}
    source = create_model("tiny_llama", intermediate_size=32, **options)
    state = source.state_dict()
    tied = state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    assert tied
    path = tmp_path / "lm.safetensors"
    stored = {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}
    safetensors.torch.save_file(stored, str(path))
    loaded = load_model(path, name="tiny_llama", options={**options, "intermediate_size": 32})
    _assert_same_state(loaded.model, state)
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight
    del stored["model.norm.weight"]  # an untied tensor is still required
    safetensors.torch.save_file(stored, str(path))
    with pytest.raises(ConfigError, match="'model.norm.weight' is missing"):
        load_model(path, name="tiny_llama", options={**options, "intermediate_size": 32})
