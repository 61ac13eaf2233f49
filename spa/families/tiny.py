"""Tiny config sizes shared by the families' examples (random-init models, built in tests)."""

# Width, depth and head count of every tiny transformer example.
BLOCKS = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
# ... with an FFN width of its own.
FEED_FORWARD = {**BLOCKS, "intermediate_size": 64}
# A small vocabulary whose special tokens are id 0.
VOCABULARY = {"vocab_size": 40, "bos_token_id": 0, "eos_token_id": 0}
# ... with a short learned or rotary position range.
TOKENS = {**VOCABULARY, "max_position_embeddings": 32}
# The decoders of the Llama-like families.
DECODER = {**FEED_FORWARD, "num_key_value_heads": 2, **TOKENS, "pad_token_id": 0}
# 8x8 three-channel images in 4x4 patches, three labels.
IMAGE = {**FEED_FORWARD, "image_size": 8, "patch_size": 4, "num_channels": 3, "num_labels": 3}
# The same sizes under GPT-2's config field names (GPT-2, GPT-J, GPTBigCode).
GPT2_NAMES = {
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
    "n_inner": 64,
    "n_positions": 32,
    **VOCABULARY,
}
