"""Request and response bodies of `spa serve`: JSON or safetensors tensors, checked against the
server's input shape and dtype before anything reaches a model.

JSON: `{"inputs": <nested list, batch first>}` (optionally `"dtype"`, which must be the
server's); the answer is `{"task": ..., "shape": [...], "outputs": <nested list>}`.
safetensors (`Content-Type: application/x-safetensors` or `application/octet-stream`): one
tensor named `inputs`; the answer is a safetensors file with one tensor `outputs`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from spa.errors import SpaError

JSON = "application/json"
SAFETENSORS = "application/x-safetensors"
_BINARY = (SAFETENSORS, "application/octet-stream")


class RequestError(SpaError):
    """A request the server refuses; `status` is the HTTP status, the message one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InputSpec:
    """What one request's inputs must look like.

    Attributes:
        sample_shape: shape of one sample (None: any).
        dtype: the model's input dtype.
    """

    sample_shape: tuple[int, ...] | None
    dtype: torch.dtype

    def check(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs` if it is a non-empty batch of the expected sample shape and dtype.

        Raises:
            RequestError: 422 naming the shape or dtype received and the one expected.
        """
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


def decode_inputs(body: bytes, kind: str, spec: InputSpec) -> torch.Tensor:
    """The input batch of a request body, checked against `spec`.

    Raises:
        RequestError: 400 for a malformed body, 422 for a wrong shape or dtype.
    """
    inputs = _from_json(body, spec) if kind == JSON else _from_safetensors(body)
    return spec.check(inputs)


def _from_json(body: bytes, spec: InputSpec) -> torch.Tensor:
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
    if not isinstance(values, list):
        raise RequestError(400, '"inputs" must be a nested list of numbers, batch first')
    try:
        return torch.tensor(values, dtype=spec.dtype)
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RequestError(
            400, f'"inputs" is not a rectangular array of numbers ({reason})'
        ) from None


def _from_safetensors(body: bytes) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(body)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as error:
        raise RequestError(400, f"the body is not a safetensors file ({error})") from None
    if set(tensors) != {"inputs"}:
        raise RequestError(
            400, f"the safetensors body must hold one tensor 'inputs', got {sorted(tensors)[:5]}"
        )
    return tensors["inputs"]


def encode_outputs(task: str, outputs: torch.Tensor, kind: str) -> tuple[bytes, str]:
    """The response body for `outputs` in the request's format, and its media type."""
    if kind == SAFETENSORS:
        from safetensors.torch import save

        return save({"outputs": outputs.detach().contiguous()}), SAFETENSORS
    document = {"task": task, "shape": list(outputs.shape), "outputs": outputs.tolist()}
    return json.dumps(document).encode(), JSON
