"""Module descriptions that several families share: the same modules under the same names."""

from spa.families.description import FeedForwardDescription

# A fused `mlp.gate_up_proj` (rows `[gate | up]`) -> `mlp.down_proj` (Phi-3, GLM).
GATE_UP_FFN = FeedForwardDescription(
    module="mlp",
    inputs=("mlp.gate_up_proj",),
    output="mlp.down_proj",
    activation="mlp.activation_fn",
    chunks=2,
)


def dense_4h_ffn(activation: str) -> FeedForwardDescription:
    """Megatron's `mlp.dense_h_to_4h` -> `mlp.dense_4h_to_h` with the `activation` module
    (GPT-NeoX, BLOOM, Falcon)."""
    return FeedForwardDescription(
        module="mlp",
        inputs=("mlp.dense_h_to_4h",),
        output="mlp.dense_4h_to_h",
        activation=activation,
    )
