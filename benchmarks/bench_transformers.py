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
import statistics
import time

import torch
import transformers

import spa
from spa.flops import count_flops
from spa.pruning import apply_masks, channel_groups, compact, compute_masks, score

THREADS, BATCH, SEQUENCE, REPEATS, NEW_TOKENS = 2, 8, 128, 3, 32


def _median_seconds(fn, repeats: int = REPEATS) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
        dense_time = _median_seconds(lambda: dense(ids))
        pruned_time = _median_seconds(lambda: pruned(ids))
    dense_flops, pruned_flops = count_flops(dense, ids), count_flops(pruned, ids)
    params = sum(p.numel() for p in pruned.parameters()), sum(p.numel() for p in dense.parameters())
    speedup, reduction = dense_time / pruned_time, dense_flops / pruned_flops
    print(f"BERT-base batch {BATCH} x {SEQUENCE}, 30% of heads and FFN neurons kept")
    print(f"  {'':<8}{'params':>12}{'GFLOPs':>10}{'latency s':>12}")
    print(f"  {'dense':<8}{params[1]:>12,}{dense_flops / 1e9:>10.1f}{dense_time:>12.3f}")
    print(f"  {'pruned':<8}{params[0]:>12,}{pruned_flops / 1e9:>10.1f}{pruned_time:>12.3f}")
    print(
        f"  speed-up {speedup:.2f}x, FLOPs reduction {reduction:.2f}x, "
        f"speed-up / FLOPs reduction {speedup / reduction:.2f}"
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
        dense_time = _median_seconds(lambda: dense.generate(prompt, **options), repeats=2)
        pruned_time = _median_seconds(lambda: pruned.generate(prompt, **options), repeats=2)
    params = sum(p.numel() for p in pruned.parameters()), sum(p.numel() for p in dense.parameters())
    print(f"Llama-style decoder ({params[1] / 1e6:.0f}M params), greedy decode with KV cache")
    print(f"  channel_groups {timings['channel_groups']:.2f} s")
    print(f"  dense   {params[1]:>12,} params {NEW_TOKENS / dense_time:8.1f} tokens/s")
    print(f"  pruned  {params[0]:>12,} params {NEW_TOKENS / pruned_time:8.1f} tokens/s")
    print(f"  decode speed-up {dense_time / pruned_time:.2f}x")


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    bench_bert()
    bench_llama()


if __name__ == "__main__":
    main()
