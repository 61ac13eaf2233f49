"""A `transformers` model on the meta device whose blocks are loaded from shards one at a time.

`Skeleton.open` builds the model from its `config.json` with every parameter on the meta device
(no weights, no initialisation) but real buffers (the rotary frequencies no checkpoint holds,
as accelerate's `init_empty_weights(include_buffers=False)` does), loads everything outside the
transformer blocks (embeddings, final norm, LM head) from the checkpoint, and `load_block` /
`unload_block` move one block's weights in and out of memory. Not safe to share between
threads: building swaps `nn.Module.register_parameter` for the duration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from spa.errors import ConfigError
from spa.families import Family, describe
from spa.pruning.calibration import inside, sequential_blocks
from spa.tasks.shards import ShardedCheckpoint


@dataclass
class Skeleton:
    """A model whose blocks live on the meta device until loaded.

    Args:
        model: the model (eval mode; blocks on the meta device unless loaded).
        config: its `transformers` config, as read.
        family: its family description.
        blocks: the block paths, in order.
        checkpoint: where the weights come from.
        outside: the checkpoint keys outside every block (loaded at `open`).
    """

    model: nn.Module
    config: object
    family: Family
    blocks: list[str]
    checkpoint: ShardedCheckpoint
    outside: list[str]

    @classmethod
    def open(cls, directory: str | Path) -> Skeleton:
        """Build the skeleton of the `transformers` model saved in `directory`.

        Raises:
            ConfigError: if the directory has no config or weights, the model is of no
                described family, its blocks do not run one after another, or a tensor
                outside the blocks is missing from the checkpoint.
        """
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise ConfigError(f"{directory}: no config.json (a transformers model directory)")
        import transformers  # imported here: `import spa` does not load transformers

        config = transformers.AutoConfig.from_pretrained(directory)
        model_class = _model_class(config, directory)
        with _parameters_on_meta():
            model = model_class(config).eval()
        family = describe(model)
        blocks = sequential_blocks(model)
        if family is None or blocks is None:
            raise ConfigError(
                f"{directory}: a {model_class.__name__} is not of a described family with "
                "blocks that run one after another; it cannot be streamed"
            )
        checkpoint = ShardedCheckpoint(directory)
        outside = [key for key in checkpoint.keys() if inside(key, blocks) is None]
        skeleton = cls(model, config, family, blocks, checkpoint, outside)
        skeleton._load_outside()
        return skeleton

    def _load_outside(self) -> None:
        tensors = self.checkpoint.load(self.outside)
        self.model.load_state_dict(tensors, strict=False, assign=True)
        if getattr(self.config, "tie_word_embeddings", False):
            self.model.tie_weights()
        for name, parameter in self.model.named_parameters():
            if parameter.is_meta and inside(name, self.blocks) is None:
                raise ConfigError(f"{self.checkpoint.directory}: the checkpoint has no {name!r}")

    def block_keys(self, index: int) -> list[str]:
        """The checkpoint keys of block `index`."""
        prefix = self.blocks[index] + "."
        return [key for key in self.checkpoint.keys() if key.startswith(prefix)]

    def load_block(self, index: int) -> nn.Module:
        """Load block `index`'s weights from the checkpoint and return the block.

        Raises:
            ConfigError: if the checkpoint lacks a tensor of the block or holds one too many.
        """
        path = self.blocks[index]
        block = self.model.get_submodule(path)
        tensors = self.checkpoint.load(self.block_keys(index))
        relative = {key[len(path) + 1 :]: tensor for key, tensor in tensors.items()}
        try:
            block.load_state_dict(relative, strict=True, assign=True)
        except RuntimeError as error:
            message = str(error).strip().splitlines()
            detail = message[1].strip() if len(message) > 1 else error
            raise ConfigError(f"{path}: the checkpoint does not fit the block ({detail})") from None
        return block

    def unload_block(self, index: int) -> None:
        """Send block `index` back to the meta device (its shapes stay, its memory is freed)."""
        self.model.get_submodule(self.blocks[index]).to("meta")


def _model_class(config, directory: Path) -> type:
    import transformers

    names = getattr(config, "architectures", None) or []
    for name in names:
        found = getattr(transformers, name, None)
        if isinstance(found, type):
            return found
    mapping = transformers.MODEL_FOR_CAUSAL_LM_MAPPING
    if type(config) in mapping:
        return mapping[type(config)]
    raise ConfigError(f"{directory}: config.json names no transformers model class ({names})")


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Register every parameter created inside on the meta device; buffers stay real."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, parameter) -> None:
        original(module, name, parameter)
        if parameter is not None:
            meta = parameter.to("meta")
            module._parameters[name] = nn.Parameter(meta, requires_grad=parameter.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original
