"""Inputs and comparisons shared by the op, fuse() and CUDA parity tests."""

from __future__ import annotations

import torch

SENTENCES = [
    "The fused encoder runs only on real tokens.",
    "Short.",
    "A considerably longer sentence, with punctuation, numbers like 1234, and enough words to make the "
    "padding of its neighbours matter for anything that does not remove it.",
    "Paris is the capital of France.",
    "I loved this film; the acting was superb and the plot kept me guessing until the very end.",
    "Terrible service, cold food, and a two hour wait. Never again.",
]
# Sequence lengths of the batches most likely to break packing.
AWKWARD_BATCHES = {
    "batch_1": [17],
    "one_token_among_long": [60, 1, 45, 60],
    "all_equal": [24] * 8,
    "max_length_512": [512, 300],
    "batch_64": [8 + (i * 37) % 120 for i in range(64)],
}
# The op's small test encoder: hidden size, heads, FFN size, layers.
HIDDEN, HEADS, INTERMEDIATE, LAYERS = 64, 4, 128, 2


def lengths_mask(lengths, seq_len=None, device="cpu") -> torch.Tensor:
    """[len(lengths), seq_len] int64 mask, right-padded: 1 for the first `length` positions."""
    seq_len = seq_len or max(lengths)
    return (torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]).long().to(device)


def random_batch(vocab, lengths, seq_len=None, seed=0, device="cpu") -> dict[str, torch.Tensor]:
    """Tokenizer-shaped inputs: random ids (pad id 0 at padding) and the mask."""
    mask = lengths_mask(lengths, seq_len)
    input_ids = torch.randint(5, vocab, mask.shape, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": (input_ids * mask).to(device), "attention_mask": mask.to(device)}


def max_diff_at_real_tokens(a, b, mask) -> float:
    real = mask.bool()
    return (a[real].float() - b[real].float()).abs().max().item()


def random_encoder_weights(layers=LAYERS, hidden=HIDDEN, intermediate=INTERMEDIATE, dtype=torch.float32,
                           device="cpu", seed=0) -> list[torch.Tensor]:
    """The op's 12 tensors per layer, random, with LayerNorm weights near 1."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * 0.1).to(device, dtype)

    weights = []
    for _ in range(layers):
        weights += [
            rand(3 * hidden, hidden), rand(3 * hidden), rand(hidden, hidden), rand(hidden),
            1 + rand(hidden), rand(hidden), rand(intermediate, hidden), rand(intermediate),
            rand(hidden, intermediate), rand(hidden), 1 + rand(hidden), rand(hidden),
        ]
    return weights


def random_op_inputs(lengths=(5, 1, 9, 3), dtype=torch.float32, device="cpu", seed=0, seq_len=None):
    """(hidden [B, S, HIDDEN], mask [B, S], weights) for the small test encoder; S defaults to the longest."""
    mask = lengths_mask(lengths, seq_len, device)
    generator = torch.Generator().manual_seed(seed + 1)
    hidden = torch.randn(len(lengths), mask.shape[1], HIDDEN, generator=generator).to(device, dtype)
    return hidden, mask, random_encoder_weights(dtype=dtype, device=device, seed=seed)
