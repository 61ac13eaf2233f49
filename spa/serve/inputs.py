"""Declared named inputs of `spa serve` (`--input NAME=SHAPE:DTYPE`) and the check of a request
against them.

A declaration gives one keyword input's sample shape (no batch axis) and dtype. Each size is
a positive integer, `*` (any size) or a name such as `seq`: sizes with the same name must be
equal across a request's inputs (`input_ids` and `attention_mask` of one length). An empty
shape is one value per sample. When inputs are declared, a named request must give exactly the
declared names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from spa.errors import ConfigError
from spa.serve.refusals import RequestError

INPUT_DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")
ANY = "*"  # a size that may be anything


@dataclass(frozen=True)
class NamedInput:
    """One declared keyword input of the served model.

    Attributes:
        name: the keyword argument name, e.g. `input_ids`.
        shape: one sample's sizes: an int, `*` (any) or a size name shared between inputs.
        dtype: the tensor dtype's name, one of `INPUT_DTYPES`.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"input {self.name!r}: the name must be a keyword argument name")
        for size in self.shape:
            fixed = isinstance(size, int) and not isinstance(size, bool) and size >= 1
            if not fixed and not (isinstance(size, str) and (size == ANY or size.isidentifier())):
                raise ConfigError(
                    f"input {self.name!r}: size {size!r} must be a positive integer, "
                    f"{ANY!r} or a size name such as 'seq'"
                )
        if self.dtype not in INPUT_DTYPES:
            raise ConfigError(
                f"input {self.name!r}: dtype must be one of {', '.join(INPUT_DTYPES)}, "
                f"got {self.dtype!r}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        """The declared dtype as a `torch.dtype`."""
        return getattr(torch, self.dtype)

    def describe(self) -> str:
        """`[batch, sizes...] dtype`, as messages show it."""
        return f"[{', '.join(['batch', *map(str, self.shape)])}] {self.dtype}"


def parse_named_input(text: str) -> NamedInput:
    """The declaration `NAME=SHAPE:DTYPE` (e.g. `input_ids=seq:int64`, `pixel_values=3,224,224:
    float32`, `label=:int64` for one value per sample).

    Raises:
        ConfigError: naming the text and what is wrong with it.
    """
    name, separator, rest = text.partition("=")
    sizes, colon, dtype = rest.rpartition(":")
    if not separator or not name or not colon:
        raise ConfigError(f"--input {text!r}: expected NAME=SHAPE:DTYPE, e.g. input_ids=seq:int64")
    shape = tuple(_size(part.strip()) for part in sizes.split(",")) if sizes.strip() else ()
    return NamedInput(name.strip(), shape, dtype.strip())


def _size(part: str) -> int | str:
    return int(part) if part.lstrip("-").isdigit() else part


def check_distinct(declared: Iterable[NamedInput]) -> None:
    """Refuse two declarations of one name.

    Raises:
        ConfigError: naming the repeated input.
    """
    seen: set[str] = set()
    for item in declared:
        if item.name in seen:
            raise ConfigError(f"input {item.name!r} is declared twice")
        seen.add(item.name)


def json_dtype(declared: NamedInput, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor parsed from JSON lists (int64, float32 or bool) in the declared dtype.

    Raises:
        RequestError: 422 for floats given for an integer input, booleans for a numeric one
            (or the reverse), or integers out of the declared integer dtype's range.
    """
    target = declared.torch_dtype
    if tensor.dtype == target:
        return tensor
    if (tensor.dtype == torch.bool) != (target == torch.bool):
        raise _dtype_error(declared, "booleans" if tensor.dtype == torch.bool else "numbers")
    if tensor.is_floating_point() and not target.is_floating_point:
        raise _dtype_error(declared, "non-integer values")
    if not target.is_floating_point and tensor.numel():
        limits = torch.iinfo(target)
        low, high = int(tensor.min()), int(tensor.max())
        if low < limits.min or high > limits.max:
            raise RequestError(
                422,
                f"input {declared.name!r} has values in [{low}, {high}], outside "
                f"{declared.dtype}'s range [{limits.min}, {limits.max}]",
            )
    return tensor.to(target)


def _dtype_error(declared: NamedInput, what: str) -> RequestError:
    return RequestError(422, f"input {declared.name!r} has {what}, expected {declared.dtype}")


def check_declared(declared: Mapping[str, NamedInput], inputs: Mapping[str, torch.Tensor]) -> None:
    """Refuse a named request that does not give exactly the declared inputs, or an input whose
    dtype or sample shape differs from its declaration (named sizes must agree).

    Raises:
        RequestError: 422 naming the input at fault and its declaration.
    """
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise RequestError(
            422, f"input {unknown[0]!r} is not declared; the inputs are {', '.join(declared)}"
        )
    missing = [name for name in declared if name not in inputs]
    if missing:
        raise RequestError(422, f"input {missing[0]!r} is missing; it is {_wanted(declared)}")
    bound: dict[str, tuple[int, str]] = {}  # size name -> (size, the input that fixed it)
    for name, item in declared.items():
        tensor = inputs[name]
        if tensor.dtype != item.torch_dtype:
            dtype = str(tensor.dtype).removeprefix("torch.")
            raise RequestError(422, f"input {name!r} has dtype {dtype}, expected {item.dtype}")
        sample = tuple(tensor.shape[1:])
        if len(sample) != len(item.shape):
            raise _shape_error(name, tensor, item)
        for size, want in zip(sample, item.shape, strict=True):
            if isinstance(want, int) and size != want:
                raise _shape_error(name, tensor, item)
            if isinstance(want, str) and want != ANY:
                first = bound.setdefault(want, (size, name))
                if first[0] != size:
                    raise RequestError(
                        422,
                        f"input {name!r} has {want}={size}, but input {first[1]!r} has "
                        f"{want}={first[0]}; they must be equal",
                    )


def _wanted(declared: Mapping[str, NamedInput]) -> str:
    return "; ".join(f"{name} {item.describe()}" for name, item in declared.items())


def _shape_error(name: str, tensor: torch.Tensor, item: NamedInput) -> RequestError:
    return RequestError(
        422, f"input {name!r} has shape {list(tensor.shape)}, expected {item.describe()}"
    )
