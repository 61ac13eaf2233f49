"""Transformer unit pruning on CPU: structure-building time, encoder latency, decoder speed.

1. BERT-base (random init, hidden 768, 12 layers, 12 heads, FFN 3072): seconds to adapt with
   SPLoRA and to build the head + FFN (+ hidden size) channel groups from the family
   description (no tracing), then to score, mask and compact.
2. The same model at 30% density (local ranking), pruned by heads and FFN neurons, and by
   heads, FFN neurons and the hidden size, vs dense: CPU latency at batch 8, sequence 128,
   FLOPs, realised speed-up and speed-up / FLOPs reduction.
3. A Llama-style decoder (hidden 512, 8 layers, 8 heads, 4 key/value heads, SwiGLU 1408): greedy
   decode tokens/s with a KV cache, dense vs the same two prunings (the hidden size also
   narrows the embedding and the tied LM head, which dominates decoding at this size).

Run: `python benchmarks/bench_transformers.py` (2 threads; numbers are for this machine only).
"""

from __future__ import annotations

import copy
import time

import torch
import transformers
from _timing import interleaved_ratios, report_goal

import spa
from spa.flops import count_flops
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, score

THREADS, BATCH, SEQUENCE, ROUNDS, NEW_TOKENS = 2, 8, 128, 9, 32


UNITS = {"heads+FFN": ("heads", "ffn"), "+hidden": ("heads", "ffn", "hidden")}


def _pruned(
    model: torch.nn.Module, fraction_kept: float, example, units: tuple[str, ...]
) -> tuple[torch.nn.Module, dict]:
    """Adapt, group, score, mask (same fraction per group), compact and fuse."""
    timings = {}
    start = time.perf_counter()
    spa.adapt(model, spa.SPLoRAConfig(rank=8))
    timings["adapt"] = time.perf_counter() - start
    start = time.perf_counter()
    groups = channel_groups(model, example, units=units)
    timings["channel_groups"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = score(model, "weight", groups)
    timings["score"] = time.perf_counter() - start
    start = time.perf_counter()
    masks = compute_masks(
        groups, scores, density=fraction_kept, ranking="local", round_to={"hidden": 8}
    )
    apply_masks(model, masks)
    timings["masks"] = time.perf_counter() - start
    start = time.perf_counter()
    compact(model)
    timings["compact"] = time.perf_counter() - start
    return spa.fuse(model).eval(), timings


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bench_bert() -> None:
    config = transformers.BertConfig()  # bert-base sizes, random init
    dense = transformers.BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQUENCE))
    models = {"dense": dense}
    for name, units in UNITS.items():
        models[name], timings = _pruned(copy.deepcopy(dense), 0.3, ids, units)
        print(f"BERT-base, {name}: time to build the pruning structure and prune (s)")
        for step, seconds in timings.items():
            print(f"  {step:<15} {seconds:8.2f}")
    with torch.inference_mode():
        timed = interleaved_ratios(
            {name: (lambda m=m: m(ids)) for name, m in models.items()},
            "dense",
            rounds=ROUNDS,
            repeats=1,
        )
    dense_flops = count_flops(dense, ids)
    print(f"BERT-base batch {BATCH} x {SEQUENCE}, density 30% (local ranking)")
    print(f"  {'':<10}{'params':>12}{'GFLOPs':>10}{'latency s':>12}{'speed-up':>22}")
    for name, model in models.items():
        seconds, ratio, low, high = timed[name]  # per round: this model's seconds / dense's
        flops = count_flops(model, ids)
        speed = f"{1 / ratio:.2f} ({1 / high:.2f}-{1 / low:.2f})"
        print(
            f"  {name:<10}{_parameters(model):>12,}{flops / 1e9:>10.1f}{seconds:>12.3f}{speed:>22}"
        )
        if name != "dense":
            reduction = dense_flops / flops
            print(
                f"  {'':<10}FLOPs reduction {reduction:.2f}x, speed-up / reduction "
                f"{1 / ratio / reduction:.2f}"
            )
            report_goal(
                f"BERT-base 30% {name}: speed-up (FLOPs reduction {reduction:.2f}x)",
                "-",
                speed,
                None,
            )


def bench_llama() -> None:
    config = transformers.LlamaConfig(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1408,
        vocab_size=32000,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    dense = transformers.LlamaForCausalLM(config).eval()
    prompt = torch.randint(1, config.vocab_size, (1, 16))
    models, timings = {"dense": dense}, {}
    for name, units in UNITS.items():
        models[name], timings[name] = _pruned(copy.deepcopy(dense), 0.3, prompt, units)
    options = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    with torch.inference_mode():
        timed = interleaved_ratios(
            {name: (lambda m=m: m.generate(prompt, **options)) for name, m in models.items()},
            "dense",
            rounds=ROUNDS,
            repeats=1,
        )
    print(f"Llama-style decoder ({_parameters(dense) / 1e6:.0f}M params), greedy decode, KV cache")
    for name, model in models.items():
        seconds, ratio, low, high = timed[name]
        speed = f"{1 / ratio:.2f} ({1 / high:.2f}-{1 / low:.2f})"
        groups = (
            f"channel_groups {timings[name]['channel_groups']:.2f} s" if name in timings else ""
        )
        print(
            f"  {name:<10}{_parameters(model):>12,} params {NEW_TOKENS / seconds:8.1f} tokens/s"
            f"  speed-up {speed}  {groups}"
        )
        if name != "dense":
            report_goal(f"Llama-style 40M decoder 30% {name}: decode speed-up", "-", speed, None)


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    bench_bert()
    bench_llama()


if __name__ == "__main__":
    main()
