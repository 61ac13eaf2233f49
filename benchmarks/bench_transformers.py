"""Transformer head/FFN pruning on CPU: structure-building time, encoder latency, decoder speed.

1. BERT-base (random init, hidden 768, 12 layers, 12 heads, FFN 3072): seconds to adapt with
   SPLoRA and to build the head + FFN channel groups from the family description (no tracing),
   then to score, mask and compact.
2. The same model with ~30% of heads and FFN neurons kept (local ranking) vs dense: CPU latency
   at batch 8, sequence 128, FLOPs, realised speed-up and speed-up / FLOPs reduction.
3. A Llama-style decoder (hidden 512, 8 layers, 8 heads, 4 key/value heads, SwiGLU 1408): greedy
   decode tokens/s with a KV cache, dense vs the same 30% pruning.

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


def _pruned(model: torch.nn.Module, fraction_kept: float, example) -> tuple[torch.nn.Module, dict]:
    """Adapt, group, score, mask (heads and FFN, same fraction per group), compact and fuse."""
    timings = {}
    start = time.perf_counter()
    spa.adapt(model, spa.SPLoRAConfig(rank=8))
    timings["adapt"] = time.perf_counter() - start
    start = time.perf_counter()
    groups = channel_groups(model, example)
    timings["channel_groups"] = time.perf_counter() - start
    start = time.perf_counter()
    scores = score(model, "weight", groups)
    timings["score"] = time.perf_counter() - start
    start = time.perf_counter()
    masks = compute_masks(groups, scores, density=fraction_kept, ranking="local")
    apply_masks(model, masks)
    timings["masks"] = time.perf_counter() - start
    start = time.perf_counter()
    compact(model)
    timings["compact"] = time.perf_counter() - start
    return spa.fuse(model).eval(), timings


def bench_bert() -> None:
    config = transformers.BertConfig()  # bert-base sizes, random init
    dense = transformers.BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQUENCE))
    pruned, timings = _pruned(copy.deepcopy(dense), 0.3, ids)
    print("BERT-base: time to build the pruning structure and prune (s)")
    for name, seconds in timings.items():
        print(f"  {name:<15} {seconds:8.2f}")
    with torch.inference_mode():
        timed = interleaved_ratios(
            {"dense": lambda: dense(ids), "pruned": lambda: pruned(ids)},
            "pruned",
            rounds=ROUNDS,
            repeats=1,
        )
    dense_time, speedup, low, high = timed["dense"]  # per round: dense seconds / pruned seconds
    pruned_time = timed["pruned"][0]
    dense_flops, pruned_flops = count_flops(dense, ids), count_flops(pruned, ids)
    params = sum(p.numel() for p in pruned.parameters()), sum(p.numel() for p in dense.parameters())
    reduction = dense_flops / pruned_flops
    print(f"BERT-base batch {BATCH} x {SEQUENCE}, 30% of heads and FFN neurons kept")
    print(f"  {'':<8}{'params':>12}{'GFLOPs':>10}{'latency s':>12}")
    print(f"  {'dense':<8}{params[1]:>12,}{dense_flops / 1e9:>10.1f}{dense_time:>12.3f}")
    print(f"  {'pruned':<8}{params[0]:>12,}{pruned_flops / 1e9:>10.1f}{pruned_time:>12.3f}")
    print(
        f"  speed-up {speedup:.2f}x ({low:.2f}-{high:.2f}, {ROUNDS} interleaved rounds), "
        f"FLOPs reduction {reduction:.2f}x, speed-up / FLOPs reduction {speedup / reduction:.2f}"
    )
    report_goal(
        f"BERT-base 30% heads+FFN: speed-up (FLOPs reduction {reduction:.2f}x)",
        "-",
        f"{speedup:.2f} ({low:.2f}-{high:.2f})",
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
    pruned, timings = _pruned(copy.deepcopy(dense), 0.3, prompt)
    options = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    with torch.inference_mode():
        timed = interleaved_ratios(
            {
                "dense": lambda: dense.generate(prompt, **options),
                "pruned": lambda: pruned.generate(prompt, **options),
            },
            "pruned",
            rounds=ROUNDS,
            repeats=1,
        )
    dense_time, speedup, low, high = timed["dense"]
    pruned_time = timed["pruned"][0]
    params = sum(p.numel() for p in pruned.parameters()), sum(p.numel() for p in dense.parameters())
    print(f"Llama-style decoder ({params[1] / 1e6:.0f}M params), greedy decode with KV cache")
    print(f"  channel_groups {timings['channel_groups']:.2f} s")
    print(f"  dense   {params[1]:>12,} params {NEW_TOKENS / dense_time:8.1f} tokens/s")
    print(f"  pruned  {params[0]:>12,} params {NEW_TOKENS / pruned_time:8.1f} tokens/s")
    print(f"  decode speed-up {speedup:.2f}x ({low:.2f}-{high:.2f}, {ROUNDS} interleaved rounds)")
    report_goal(
        "Llama-style 40M decoder 30% heads+FFN: decode speed-up",
        "-",
        f"{speedup:.2f} ({low:.2f}-{high:.2f})",
        None,
    )


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    bench_bert()
    bench_llama()


if __name__ == "__main__":
    main()
