"""Declared named inputs (`--input NAME=SHAPE:DTYPE`): parsing and the check of a request."""

from __future__ import annotations

import pytest
import torch

from spa.errors import ConfigError
from spa.serve.codec import JSON, InputSpec, decode_inputs
from spa.serve.inputs import NamedInput, check_declared, parse_named_input
from spa.serve.refusals import RequestError
from spa.serve.settings import ServeSettings

IDS = NamedInput("input_ids", ("seq",), "int64")
MASK = NamedInput("attention_mask", ("seq",), "int64")
PIXELS = NamedInput("pixel_values", (3, "*"), "float32")
DECLARED = {item.name: item for item in (IDS, MASK, PIXELS)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("input_ids=seq:int64", IDS),
        ("pixel_values=3,*:float32", PIXELS),
        ("x=3,224,224:bfloat16", NamedInput("x", (3, 224, 224), "bfloat16")),
        ("label=:int64", NamedInput("label", (), "int64")),
    ],
)
def test_parse_named_input_reads_sizes_size_names_and_dtype(text, expected):
    assert parse_named_input(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("input_ids", "NAME=SHAPE:DTYPE"),
        ("input_ids=seq", "NAME=SHAPE:DTYPE"),
        ("input_ids=0:int64", "size 0"),
        ("input_ids=-2:int64", "size -2"),
        ("input_ids=a-b:int64", "size 'a-b'"),
        ("input_ids=seq:int8", "'int8'"),
        ("input ids=seq:int64", "'input ids'"),
    ],
)
def test_parse_named_input_refuses_bad_declarations(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_named_input(text)


def test_settings_refuse_a_name_declared_twice():
    with pytest.raises(ConfigError, match="'input_ids' is declared twice"):
        ServeSettings(named_inputs=(IDS, NamedInput("input_ids", (), "int32")))


def _request(seq=5, mask_seq=5, batch=2, ids_dtype=torch.int64, channels=3, width=7):
    return {
        "input_ids": torch.zeros(batch, seq, dtype=ids_dtype),
        "attention_mask": torch.ones(batch, mask_seq, dtype=torch.int64),
        "pixel_values": torch.zeros(batch, channels, width),
    }


@pytest.mark.parametrize("width", [1, 9])
def test_check_declared_accepts_matching_inputs_any_size_for_star(width):
    check_declared(DECLARED, _request(width=width))  # raises on a refusal


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({k: v for k, v in _request().items() if k != "attention_mask"}, "'attention_mask' is"),
        ({**_request(), "token_type_ids": torch.zeros(2, 5)}, "'token_type_ids' is not declared"),
        (_request(ids_dtype=torch.int32), "'input_ids' has dtype int32, expected int64"),
        (_request(mask_seq=4), "'attention_mask' has seq=4, but input 'input_ids' has seq=5"),
        (_request(channels=4), "'pixel_values' has shape \\[2, 4, 7\\], expected \\[batch, 3"),
        ({**_request(), "input_ids": torch.zeros(2, 5, 1, dtype=torch.int64)}, "'input_ids'"),
    ],
)
def test_check_declared_refuses_with_422_naming_the_input(inputs, words):
    with pytest.raises(RequestError, match=words) as refused:
        check_declared(DECLARED, inputs)
    assert refused.value.status == 422


def _json(inputs: dict) -> bytes:
    import json

    return json.dumps({"inputs": inputs}).encode()


def test_json_named_inputs_take_their_declared_dtypes():
    declared = {"ids": NamedInput("ids", ("seq",), "int32"), "x": NamedInput("x", (), "float64")}
    spec = InputSpec(None, torch.float32, declared)
    inputs = decode_inputs(_json({"ids": [[1, 2, 3]], "x": [2]}), JSON, spec)
    assert inputs["ids"].dtype == torch.int32 and inputs["x"].dtype == torch.float64
    assert inputs["ids"].tolist() == [[1, 2, 3]] and inputs["x"].tolist() == [2.0]


@pytest.mark.parametrize(
    ("values", "dtype", "words"),
    [
        ([[1.5, 2.0]], "int64", "non-integer values, expected int64"),
        ([[0, 300]], "uint8", "values in \\[0, 300\\], outside uint8's range \\[0, 255\\]"),
        ([[-1, 2]], "uint8", "outside uint8's range"),
        ([[True, False]], "int64", "booleans, expected int64"),
        ([[1, 0]], "bool", "numbers, expected bool"),
    ],
)
def test_json_values_that_do_not_fit_the_declared_dtype_are_422(values, dtype, words):
    spec = InputSpec(None, torch.float32, {"ids": NamedInput("ids", ("*",), dtype)})
    with pytest.raises(RequestError, match=words) as refused:
        decode_inputs(_json({"ids": values}), JSON, spec)
    assert refused.value.status == 422


def test_a_single_tensor_is_refused_when_only_named_inputs_are_declared():
    spec = InputSpec(None, torch.float32, {"input_ids": IDS})
    with pytest.raises(RequestError, match="takes named inputs \\(input_ids\\)"):
        decode_inputs(b'{"inputs": [[1.0, 2.0]]}', JSON, spec)
    with_shape = InputSpec((2,), torch.float32, {"input_ids": IDS})
    assert decode_inputs(b'{"inputs": [[1.0, 2.0]]}', JSON, with_shape).shape == (1, 2)
