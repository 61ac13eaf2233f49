"""What the channel-pruning task types' seed sessions share: the iterative schedule's finish, the
deployable model and bundle, and checkpoints that carry the channel masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spa.experiments import measure
from spa.experiments.task_types.base import Step


class ChannelSessionSteps:
    """Mixin for a `SeedSession` dataclass with the fields `config`, `model`, `base`,
    `example`, `optimizer`, `pruner` (a `ChannelPruner` or None), `model_name` and
    `model_options` (the base's `spa.models` name and builder arguments, for bundles)."""

    def finish_training(self, step: Step) -> None:
        """Nothing to do: iterative masks are final when set."""

    def deploy(self, bundle_path: Path) -> dict[str, Any]:
        """Compact and fuse a copy, measure it and save the bundle (`measure_task`)."""
        return measure.measure_task(
            self.model,
            self.base,
            self.example,
            bundle_path,
            self.config.train.latency_batch_size,
            model_name=self.model_name,
            model_options=self.model_options,
        )

    def checkpoint_state(self) -> dict[str, Any]:
        """Model, optimiser and channel masks (hook masks are not in `state_dict`)."""
        masks = self.pruner.masks() if self.pruner is not None else None
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "masks": masks,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load the model and optimiser states and re-apply the channel masks."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.pruner is not None:
            self.pruner.restore(self.model, state["masks"])
