"""The architectures spa's families cover, built from the family registry plus a named table.

Every `Example` a registered family carries is a case (a new family is tested with no edit
here); `NAMED` adds `transformers` architectures that no family names, which must be matched by
structure alone. Each case declares what it supports; `test_open_world.py` runs exactly that
end to end, and `markdown_table` renders the same declarations as the README's table.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn

from spa.families import FAMILIES, Example, split_experts
from spa.families.llama import DECODER
from spa.families.tiny import GPT2_NAMES
from tests._transformers import Net

ALL_UNITS = ("heads", "ffn", "hidden")


@dataclass(frozen=True)
class Architecture:
    """One tiny architecture and what spa supports on it.

    Args:
        name: test id and table row.
        example: how to build it.
        family: the family `describe` must find by structure.
        units: the units pruned end to end.
        export: the units after whose pruning (together, `ranking="local"`,
            `round_to=spa.pretrained_round_to(model)`) `spa.save_pretrained` writes a directory
            plain `transformers` reloads (empty: none).
        refused: units after whose pruning alone `spa.save_pretrained` refuses in one line
            before writing anything, because the config cannot describe the result.
        refusal: why (README).
        note: why a unit is missing, or other limits (README).
    """

    name: str
    example: Example
    family: str
    units: tuple[str, ...] = ALL_UNITS
    export: tuple[str, ...] = ALL_UNITS
    refused: tuple[str, ...] = ()
    refusal: str = ""
    note: str = ""

    @property
    def decoder(self) -> bool:
        return self.example.kind == "decoder"

    def build(self) -> Net:
        """The tiny model (random init, seeded by the caller) in `Net`, in eval mode."""
        config = getattr(transformers, self.example.config)(**self.example.options)
        model = getattr(transformers, self.example.model)(config)
        _randomise_per_head_tables(model)
        split_experts(model)  # 3-D experts as per-expert Linear layers (a no-op elsewhere)
        if self.family == "falcon":
            _plain_linears(model)
        return Net(model, self.example.kind).eval()

    def inputs(self, batch: int = 2) -> torch.Tensor:
        """Pixels for image models, else token ids (embeddings would fix the hidden size)."""
        if self.example.kind == "image":
            options = self.example.options.get("vision_config", self.example.options)
            size = options["image_size"]
            return torch.randn(batch, options.get("num_channels", 3), size, size)
        return torch.randint(3, 40, (batch, 6))


def _randomise_per_head_tables(model: nn.Module) -> None:
    """transformers starts per-head bias tables at zero: give each head its own values."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                parameter.normal_()


def _plain_linears(model: nn.Module) -> None:
    """Falcon's `FalconLinear` (the same map as `nn.Linear`, its own forward) as `nn.Linear`, which
    `spa.adapt` wraps; until adapt takes `nn.Linear` subclasses (issue 21 item 6)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and type(module) is not nn.Linear:
            linear = nn.Linear(
                module.in_features, module.out_features, bias=module.bias is not None
            )
            linear.weight, linear.bias = module.weight, module.bias
            model.set_submodule(name, linear)


# What an example cannot do, declared per example name (README notes).
_ALONE = {
    "refused": ("heads", "hidden"),
    "refusal": "heads or hidden alone: the config derives head_dim = hidden / heads",
}
_SCALED = {
    "export": ("heads", "ffn"),
    "refused": ("hidden",),
    "refusal": "hidden: the embeddings are scaled by sqrt(config hidden size)",
}
_POOLED = "heads or hidden: the config derives head_dim = hidden / heads and gives the"
_EXPERTS = "experts split into per-expert layers by `spa.adapt`; export pads them to one width"
_LIMITS = {
    "bert": {"export": ("ffn",), **_ALONE, "refusal": f"{_POOLED} pooler hidden outputs"},
    "clip-vision": _ALONE,
    "siglip-vision": {**_ALONE, "note": "hidden: without its attention-pooling head"},
    "bloom": {
        "units": ("ffn", "hidden"),
        "export": (),
        "refused": ("ffn", "hidden"),
        "refusal": "the config has no FFN width, and head_dim = hidden / heads with fixed heads",
        "note": "heads: ALiBi slopes follow the head count",
    },
    "dinov2": {
        "units": ("heads", "ffn"),
        "export": (),
        "refused": ("heads", "ffn"),
        "refusal": "the config holds mlp_ratio, not an FFN width, and head_dim = hidden / heads",
        "note": "hidden: only without the head (it reads the class and mean tokens, 2 x hidden)",
    },
    "falcon": {**_ALONE, "note": "FalconLinear run as nn.Linear"},
    "falcon-multi-query": {
        "units": ("ffn", "hidden"),
        "export": ("ffn",),
        "refused": ("hidden",),
        "refusal": "hidden: head_dim = hidden / heads with fixed heads",
        "note": "heads: one key/value head read by all heads (one channel)",
    },
    "gemma2": _SCALED,
    "gemma3": _SCALED,
    "gpt2": _ALONE,
    "mixtral": {"note": _EXPERTS},
    "qwen2_moe": {"note": f"{_EXPERTS}; shared expert"},
    "gpt_neox": _ALONE,
    "gptj": _ALONE,
    "persimmon": _ALONE,
    "modernbert": {"export": ("ffn",), **_ALONE, "refusal": f"{_POOLED} head hidden outputs"},
    "opt": _ALONE,
    "swin": {
        "export": (),
        "refused": ALL_UNITS,
        "refusal": "the config holds per-stage lists (num_heads, mlp_ratio x stage width)",
    },
}


def registry_cases() -> list[Architecture]:
    """One case per `Example` of every registered family."""
    cases = []
    for family in FAMILIES:
        for example in FAMILIES.get(family).examples:
            name = example.name or family
            cases.append(Architecture(name, example, family, **_LIMITS.get(name, {})))
    return cases


def _decoder(config: str, model: str, **options) -> Example:
    return Example(model=model, config=config, kind="decoder", options={**DECODER, **options})


# Architectures no family names: matched by structure alone (two of them no issue names).
NAMED = [
    Architecture("qwen2", _decoder("Qwen2Config", "Qwen2ForCausalLM"), "llama"),
    Architecture("mistral", _decoder("MistralConfig", "MistralForCausalLM"), "llama"),
    Architecture(
        "gemma", _decoder("GemmaConfig", "GemmaForCausalLM", head_dim=16), "llama", **_SCALED
    ),
    Architecture("granite", _decoder("GraniteConfig", "GraniteForCausalLM"), "llama"),
    Architecture(
        "olmo",
        _decoder("OlmoConfig", "OlmoForCausalLM"),
        "llama",
        note="LayerNorms without a weight, masked over the kept channels",
    ),
    Architecture("stablelm", _decoder("StableLmConfig", "StableLmForCausalLM"), "llama", **_ALONE),
    # HeliumConfig defaults head_dim to 128; its o_proj is hidden x hidden, so keep them equal.
    Architecture(
        "helium",
        _decoder("HeliumConfig", "HeliumForCausalLM", head_dim=8),
        "llama",
        refused=("heads", "hidden"),
        refusal="heads or hidden alone: the config makes o_proj hidden x hidden",
    ),
    Architecture("smollm3", _decoder("SmolLM3Config", "SmolLM3ForCausalLM"), "llama"),
    Architecture("nemotron", _decoder("NemotronConfig", "NemotronForCausalLM"), "llama-up-down"),
    # Decoders no issue names, matched by structure to an existing family.
    Architecture("seed_oss", _decoder("SeedOssConfig", "SeedOssForCausalLM"), "llama"),
    Architecture("ernie4_5", _decoder("Ernie4_5Config", "Ernie4_5ForCausalLM"), "llama"),
    Architecture("olmo3", _decoder("Olmo3Config", "Olmo3ForCausalLM"), "olmo2"),
    Architecture("cohere2", _decoder("Cohere2Config", "Cohere2ForCausalLM"), "cohere"),
    # HunYuanDenseV1Config defaults head_dim to 128: keep it hidden / heads.
    Architecture(
        "hunyuan_v1_dense",
        _decoder("HunYuanDenseV1Config", "HunYuanDenseV1ForCausalLM", head_dim=8),
        "llama",
        note="q/k norms named query_layernorm / key_layernorm",
    ),
    Architecture(
        "qwen3_moe",
        _decoder(
            "Qwen3MoeConfig",
            "Qwen3MoeForCausalLM",
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
        ),
        "mixtral",
        note=_EXPERTS,
    ),
]


# XGLM's attention and blocks have OPT's layout; its final norm and sinusoidal positions do not.
XGLM = Example(
    model="XGLMForCausalLM",
    config="XGLMConfig",
    kind="decoder",
    options={
        "d_model": 32,
        "num_layers": 2,
        "attention_heads": 4,
        "ffn_dim": 64,
        "vocab_size": 40,
        "max_position_embeddings": 32,
        "pad_token_id": 1,
    },
)
NAMED.append(
    Architecture(
        "xglm",
        XGLM,
        "opt",
        units=("heads", "ffn"),
        export=("ffn",),
        refused=("heads",),
        refusal="heads alone: the config derives head_dim = hidden / heads",
        note="hidden: refused before any mask (a final `layer_norm` OPT's layout does not name)",
    )
)


# GPTBigCode (SantaCoder, StarCoder) has GPT-2's modules, but a multi-query `c_attn`.
NAMED.append(
    Architecture(
        "gpt_bigcode",
        Example(
            model="GPTBigCodeForCausalLM",
            config="GPTBigCodeConfig",
            kind="decoder",
            options=GPT2_NAMES,  # GPT-2's config field names
        ),
        "gpt2",
        units=("ffn", "hidden"),
        export=(),
        refused=("ffn", "hidden"),
        refusal="its multi-query `c_attn` gives GPT-2's layout the wrong head count",
        note="heads: refused before any mask (multi-query `c_attn`, one key/value head)",
    )
)


# Architectures no family fits (each falls back to Torch-Pruning's traced groups), and why.
UNMATCHED: dict[str, tuple[Example, str]] = {
    "diffllama": (
        _decoder("DiffLlamaConfig", "DiffLlamaForCausalLM"),
        "differential attention: per-layer lambda parameters on the attention module",
    ),
    "bitnet": (
        _decoder("BitNetConfig", "BitNetForCausalLM"),
        "sub-norms inside attention and FFN (attn_sub_norm, ffn_sub_norm)",
    ),
}


def cases() -> list[Architecture]:
    """The registry's cases, then the named table."""
    return [*registry_cases(), *NAMED]


def markdown_table() -> str:
    """The README's supported-architecture table, rendered from `cases()`."""
    rows = [
        "| architecture | transformers class | family | pruned units | KV-cache generation "
        "| `save_pretrained` (plain `transformers` reload) | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in cases():
        generation = "same tokens" if case.decoder else "n/a"
        units = ", ".join(case.units)
        rows.append(
            f"| {case.name} | `{case.example.model}` | {case.family} | {units} | {generation} "
            f"| {_export_cell(case)} | {case.note} |"
        )
    for name, (example, reason) in UNMATCHED.items():
        rows.append(f"| {name} | `{example.model}` | none | traced | | | {reason} |")
    return "\n".join(rows)


def _export_cell(case: Architecture) -> str:
    """ "reloads after ..." and "refused: reason" for the README's `save_pretrained` column."""
    cells = [f"reloads after {' + '.join(case.export)}"] if case.export else []
    if case.refused:
        cells.append(f"refused: {case.refusal}")
    return "; ".join(cells)


def main(paths: list[str]) -> None:
    """Rewrite the architecture table (between its `spa-docs` markers) of each Markdown file."""
    pattern = re.compile(
        r"(<!-- spa-docs:architectures -->\n).*?(<!-- /spa-docs:architectures -->)", re.DOTALL
    )
    for name in paths:
        path = Path(name)
        text = pattern.sub(lambda m: f"{m[1]}{markdown_table()}\n{m[2]}", path.read_text())
        path.write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
