"""A stable fingerprint of a base model's weights and a short name for its architecture."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def fingerprint(model: nn.Module) -> str:
    """A sha256 over the sorted names, shapes, dtypes and values of `model`'s state dict.

    The hash covers every parameter and persistent buffer, so two models share a fingerprint
    only if their weights are bit-identical under the same names. It does not depend on the
    device or on module object identities. Hashing reads every weight once (about 0.1 s for
    ResNet-50 on a CPU); `TaskHost` computes it once per base.

    Args:
        model: the base model (plain, not adapted).

    Returns:
        `"sha256:<64 hex digits>"`.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"\0{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        data = tensor.to("cpu").contiguous().reshape(-1).view(torch.uint8)
        digest.update(data.numpy())
    return "sha256:" + digest.hexdigest()


def describe_architecture(model: nn.Module) -> str:
    """A short architecture name: the class name, plus the transformers model type if any.

    Args:
        model: any model.

    Returns:
        For example `"ResNet"` or `"BertForQuestionAnswering(bert)"`.
    """
    name = type(model).__name__
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"{name}({model_type})" if isinstance(model_type, str) else name


def structure_fingerprint(model: nn.Module) -> str:
    """A sha256 over the sorted names, shapes and dtypes of `model`'s state dict (no values).

    Two models share it exactly when they have the same architecture (the same tensors under
    the same names), whatever their weights; a bundle refuses a base with another structure even
    when the weight fingerprint is not enforced.

    Args:
        model: the base model (plain, not adapted).

    Returns:
        `"sha256:<64 hex digits>"`.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"\0{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
    return "sha256:" + digest.hexdigest()
