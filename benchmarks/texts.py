"""The benchmarks' real text: sentences and QA pairs written for this repository (benchmarks/data/), and
the serving mix built from them with a chosen spread of token lengths."""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SENTENCES_FILE = DATA_DIR / "sentences.txt"
QA_PAIRS_FILE = DATA_DIR / "qa_pairs.jsonl"


def load_sentences(limit: int | None = None) -> list[str]:
    """One text per non-empty line of sentences.txt (reviews, news, instructions, science, legal; 3 to
    ~120 words), in file order; the first ``limit`` when given."""
    sentences = [line.strip() for line in SENTENCES_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sentences[:limit]


def load_qa_pairs(limit: int | None = None) -> list[dict[str, str]]:
    """``{"question", "context"}`` per line of qa_pairs.jsonl; the first ``limit`` when given."""
    with QA_PAIRS_FILE.open(encoding="utf-8") as lines:
        pairs = [json.loads(line) for line in lines if line.strip()]
    return pairs[:limit]


def token_count(tokenizer, text: str, max_length: int | None = None) -> int:
    """Tokens the model sees for ``text``, special tokens included, after truncation to ``max_length``."""
    count = len(tokenizer(text, add_special_tokens=True)["input_ids"])
    return count if max_length is None else min(count, max_length)


def text_of_length(tokenizer, corpus: list[str], target_tokens: int, rng: random.Random) -> str:
    """Consecutive corpus sentences from a random start, cut after the token that makes ``target_tokens``
    (special tokens included). Cutting at a token's end can split a word, so the result re-tokenizes to
    about, not exactly, the target; callers count its tokens again."""
    start = rng.randrange(len(corpus))
    text = ""
    index = start
    while True:
        text = f"{text} {corpus[index % len(corpus)]}".strip()
        index += 1
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        content_tokens = target_tokens - tokenizer.num_special_tokens_to_add()
        if len(encoded["input_ids"]) >= content_tokens:
            return text[: encoded["offset_mapping"][max(content_tokens, 1) - 1][1]]


def serving_mix(tokenizer, count: int, *, max_length: int, min_tokens: int = 8, body_max_tokens: int = 128,
                tail_share: float = 0.1, seed: int = 0) -> list[str]:
    """``count`` request texts: (1 - tail_share) of them with lengths uniform in [min_tokens,
    body_max_tokens], the rest a long tail uniform in [body_max_tokens, 2 * max_length] tokens (so the tail
    reaches max_length and some requests are truncated there, as real traffic is)."""
    if not 0 <= tail_share <= 1:
        raise ValueError(f"tail_share must be in [0, 1]; got {tail_share}")
    rng = random.Random(seed)
    corpus = load_sentences()
    body_max = min(body_max_tokens, max_length)
    texts = []
    for _ in range(count):
        if rng.random() < tail_share:
            target = rng.randint(body_max, 2 * max_length)
        else:
            target = rng.randint(min_tokens, body_max)
        texts.append(text_of_length(tokenizer, corpus, target, rng))
    return texts
