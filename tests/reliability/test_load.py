"""Load and faults through a real TorchServe: a soak at concurrency 64 loses and fails nothing, answers what
each text gets alone and holds the worker's memory flat; killing the worker mid-load fails only the
requests it was running, and TorchServe replaces it."""

from __future__ import annotations

import os
import signal
import time

import pytest

from torchserve_support import ARCHIVE, BATCH_SIZE, EMBEDDER, LOST, describe, post_all, resident_bytes, worker_pid

CONCURRENCY = 64
# Short texts of 3 to ~40 tokens: the soak is about reliability, so keep each request cheap.
WORDS = "fused encoders serve real tokens only while the frontend batches requests from many clients".split()
TEXTS = [f"{i}: " + " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(1 + i % 24)) for i in range(100)]
EMBEDDING_ATOL = 1e-6  # batched vs alone: GEMM rounding over another row count
RSS_GROWTH_LIMIT = 0.05


@pytest.fixture(scope="module")
def answers_alone(server) -> dict[str, list[float]]:
    """Each text's embedding when it is sent alone, from the model serving the same archive."""
    replies = post_all(server, ARCHIVE, TEXTS, concurrency=1)
    assert all(r.status == 200 for r in replies), [r.body[:200] for r in replies if r.status != 200][:3]
    return {text: reply.json()["embedding"] for text, reply in zip(TEXTS, replies)}


def differs(reply, expected: list[float]) -> bool:
    return max(abs(a - b) for a, b in zip(reply.json()["embedding"], expected)) > EMBEDDING_ATOL


@pytest.mark.parametrize("total", [pytest.param(1_000, id="1k"),
                                   pytest.param(10_000, id="10k", marks=pytest.mark.slow)])
def test_soak_loses_nothing_answers_correctly_and_holds_memory(server, answers_alone, total):
    pid = worker_pid(server, EMBEDDER)
    window = total // 10  # RSS after the first and after the last tenth (the first and last thousand of 10k)
    resident = {}
    done = 0

    def on_reply(index, reply):
        nonlocal done
        done += 1
        if done in (window, total):
            resident[done] = resident_bytes(pid)

    bodies = [TEXTS[i % len(TEXTS)] for i in range(total)]
    started = time.monotonic()
    replies = post_all(server, EMBEDDER, bodies, concurrency=CONCURRENCY, on_reply=on_reply)
    seconds = time.monotonic() - started

    statuses = [r.status for r in replies]
    assert statuses.count(LOST) == 0, "requests without a reply"
    assert statuses.count(200) == total, {s: statuses.count(s) for s in set(statuses)}
    wrong = [text for text, reply in zip(bodies, replies) if differs(reply, answers_alone[text])]
    assert not wrong, f"{len(wrong)} answers differ from the text's answer alone, e.g. {wrong[0]!r}"
    assert worker_pid(server, EMBEDDER) == pid
    growth = resident[total] / resident[window] - 1
    print(f"soak: {total} requests at concurrency {CONCURRENCY} in {seconds:.1f} s ({total / seconds:.0f}/s); "
          f"worker RSS {resident[window] / 2**20:.0f} -> {resident[total] / 2**20:.0f} MiB ({growth:+.2%})")
    assert growth < RSS_GROWTH_LIMIT


def test_killed_worker_fails_only_its_in_flight_requests_and_is_replaced(server, answers_alone):
    total, kill_after = 400, 100
    victim = worker_pid(server, EMBEDDER)
    seen, killed_at = 0, None

    def kill_part_way(index, reply):
        nonlocal seen, killed_at
        seen += 1
        if seen == kill_after:
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)

    bodies = [TEXTS[i % len(TEXTS)] for i in range(total)]
    replies = post_all(server, EMBEDDER, bodies, concurrency=CONCURRENCY, on_reply=kill_part_way)

    failed = [r for r in replies if r.status != 200]
    answered = [(text, r) for text, r in zip(bodies, replies) if r.status == 200]
    print(f"worker killed after {kill_after} of {total} replies: {len(failed)} failed (in flight), "
          f"{len(answered)} answered")
    assert killed_at is not None
    # 500, or 507 when the frontend has already read the killed process's exit status 137 (its OOM guess).
    assert all(r.status in (500, 507) and r.json()["message"] == "Worker died." for r in failed), \
        [(r.status, r.body[:200]) for r in failed][:3]
    # Only what the dead worker held: one batch, all of it sent before the kill.
    assert 0 < len(failed) <= BATCH_SIZE
    assert all(r.sent < killed_at for r in failed)
    assert not [text for text, r in answered if differs(r, answers_alone[text])]
    replacement = worker_pid(server, EMBEDDER)
    assert replacement != victim
    assert describe(server, EMBEDDER)["workers"][0]["status"] == "READY"
    assert post_all(server, EMBEDDER, [TEXTS[0]], concurrency=1)[0].status == 200
