"""Request and response bodies of `spa serve`: JSON or safetensors tensors, checked against the
server's input shape and dtype before anything reaches a model.

JSON: `{"inputs": <nested list, batch first>}` (optionally `"dtype"`, which must be the
server's), or named inputs `{"inputs": {"input_ids": [[...]], "attention_mask": [[...]]}}`,
passed to the model as keyword arguments (in their declared dtypes, see `spa.serve.inputs`;
undeclared: integer lists become int64, float lists the server's float dtype); the answer
is `{"task": ..., "shape": [...], "outputs": <nested list>}`.
safetensors (`Content-Type: application/x-safetensors` or `application/octet-stream`): one
tensor named `inputs`, or several named tensors (keyword arguments, dtypes kept); the answer is
a safetensors file with one tensor `outputs`.

Named inputs must share their batch size; declared ones (`--input NAME=SHAPE:DTYPE`) are
checked against their declarations. A model returning a mapping (a `transformers`
`ModelOutput`) answers with its `logits`, or else its first tensor field (`primary_output`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from spa.serve.batching import Inputs
from spa.serve.inputs import NamedInput, check_declared, json_dtype
from spa.serve.refusals import RequestError

JSON = "application/json"
SAFETENSORS = "application/x-safetensors"
_BINARY = (SAFETENSORS, "application/octet-stream")


@dataclass(frozen=True)
class InputSpec:
    """What one request's inputs must look like.

    Attributes:
        sample_shape: shape of one sample of a single-tensor request (None: any).
        dtype: the model's input dtype (single-tensor requests).
        named: declared named inputs by name; when there are any, a named request must give
            exactly these, and a single-tensor request is refused unless `sample_shape` is set.
    """

    sample_shape: tuple[int, ...] | None
    dtype: torch.dtype
    named: Mapping[str, NamedInput] = field(default_factory=dict)

    def check(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs` if it is a non-empty batch of the expected sample shape and dtype.

        Raises:
            RequestError: 422 naming the shape or dtype received and the one expected.
        """
        if self.named and self.sample_shape is None:
            raise RequestError(
                422,
                f"this server takes named inputs ({', '.join(self.named)}): send a JSON object "
                "of them or one safetensors tensor per name",
            )
        if inputs.dtype != self.dtype:
            raise RequestError(
                422, f"inputs have dtype {_name(inputs.dtype)}, expected {_name(self.dtype)}"
            )
        if inputs.dim() < 1 or inputs.shape[0] < 1:
            raise RequestError(
                422, f"inputs must be a non-empty batch, got shape {list(inputs.shape)}"
            )
        expected = self.sample_shape
        if expected is not None and tuple(inputs.shape[1:]) != expected:
            raise RequestError(
                422,
                f"inputs have shape {list(inputs.shape)}, expected [batch, "
                f"{', '.join(map(str, expected))}]",
            )
        return inputs

    def check_named(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`inputs` if every name is a keyword, every tensor a batch of the same size, and the
        inputs are the declared ones (if any are declared) with their sample shapes and dtypes.

        Undeclared named inputs keep their own dtypes and trailing shapes (the model checks
        them).

        Raises:
            RequestError: 422 naming the input at fault.
        """
        sizes = {}
        for name, tensor in inputs.items():
            if not name.isidentifier():
                raise RequestError(422, f"input name {name!r} is not a keyword argument name")
            if tensor.dim() < 1 or tensor.shape[0] < 1:
                raise RequestError(
                    422, f"input {name!r} must be a non-empty batch, got shape {list(tensor.shape)}"
                )
            sizes[name] = tensor.shape[0]
        if len(set(sizes.values())) > 1:
            raise RequestError(422, f"named inputs have different batch sizes {sizes}")
        if self.named:
            check_declared(self.named, inputs)
        return inputs


def primary_output(outputs: Any) -> Any:
    """A model's answer tensor: `outputs` itself, or a mapping's (`ModelOutput`'s) `logits`,
    or else its first tensor field; anything else is returned unchanged (and refused later)."""
    if not isinstance(outputs, Mapping):
        return outputs
    if isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"]
    return next((v for v in outputs.values() if isinstance(v, torch.Tensor)), outputs)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def media_type(content_type: str | None) -> str:
    """The body format named by a `Content-Type` header (JSON or safetensors).

    Raises:
        RequestError: 415 for any other type.
    """
    kind = (content_type or JSON).split(";")[0].strip().lower()
    if kind == JSON:
        return JSON
    if kind in _BINARY:
        return SAFETENSORS
    raise RequestError(415, f"unsupported Content-Type {kind!r}; use {JSON} or {SAFETENSORS}")


def decode_inputs(body: bytes, kind: str, spec: InputSpec) -> Inputs:
    """The input batch of a request body (a tensor or named tensors), checked against `spec`.

    Raises:
        RequestError: 400 for a malformed body, 422 for a wrong shape or dtype.
    """
    inputs = _from_json(body, spec) if kind == JSON else _from_safetensors(body)
    if isinstance(inputs, dict):
        return spec.check_named(inputs)
    return spec.check(inputs)


def _from_json(body: bytes, spec: InputSpec) -> Inputs:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise RequestError(400, "the body is not valid JSON") from None
    if not isinstance(document, dict) or "inputs" not in document:
        raise RequestError(400, 'the JSON body must be an object with an "inputs" field')
    unknown = sorted(set(document) - {"inputs", "dtype"})
    if unknown:
        raise RequestError(400, f"unknown JSON field(s) {unknown}; expected inputs, dtype")
    dtype = document.get("dtype", _name(spec.dtype))
    if dtype != _name(spec.dtype):
        raise RequestError(422, f"inputs have dtype {dtype!r}, expected {_name(spec.dtype)}")
    values = document["inputs"]
    if isinstance(values, dict) and values:
        return {str(name): _named_tensor(name, value, spec) for name, value in values.items()}
    if not isinstance(values, list):
        raise RequestError(
            400, '"inputs" must be a nested list of numbers, batch first, or an object of them'
        )
    return _tensor('"inputs"', values, spec.dtype)


def _named_tensor(name: str, values: Any, spec: InputSpec) -> torch.Tensor:
    """Named input `name` in its declared dtype; undeclared: int64 for integer lists, the
    server's float dtype for floats."""
    if not isinstance(values, list):
        raise RequestError(400, f"input {name!r} must be a nested list of numbers, batch first")
    tensor = _tensor(f"input {name!r}", values, None)
    declared = spec.named.get(name)
    if declared is not None:
        return json_dtype(declared, tensor)
    if tensor.is_floating_point():
        float_dtype = spec.dtype if spec.dtype.is_floating_point else torch.float32
        tensor = tensor.to(float_dtype)
    return tensor


def _tensor(label: str, values: list, dtype: torch.dtype | None) -> torch.Tensor:
    try:
        return torch.tensor(values, dtype=dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        message = f"{label} is not a rectangular array of numbers ({reason})"
        raise RequestError(400, message) from None


def _from_safetensors(body: bytes) -> Inputs:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(body)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as error:
        raise RequestError(400, f"the body is not a safetensors file ({error})") from None
    if not tensors:
        raise RequestError(400, "the safetensors body holds no tensor")
    if set(tensors) == {"inputs"}:
        return tensors["inputs"]
    return dict(sorted(tensors.items()))


def encode_outputs(task: str, outputs: torch.Tensor, kind: str) -> tuple[bytes, str]:
    """The response body for `outputs` in the request's format, and its media type."""
    if kind == SAFETENSORS:
        from safetensors.torch import save

        return save({"outputs": outputs.detach().contiguous()}), SAFETENSORS
    document = {"task": task, "shape": list(outputs.shape), "outputs": outputs.tolist()}
    return json.dumps(document).encode(), JSON
