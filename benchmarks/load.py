"""The serving benchmark's load generator: closed loops of clients (aiohttp), in one process or several.

Imports no torch: the client processes start in a second or less.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import time
from dataclasses import dataclass

import aiohttp

REPLY_TIMEOUT_S = 120.0  # one request's answer at most (TorchServe's default_response_timeout)


@dataclass
class Reply:
    seconds: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    tokens: int


async def run_load(url: str, token: str, texts: list[str], tokens: list[int], concurrency: int, requests: int,
                   duration_cap: float, first_text: int = 0) -> tuple[list[Reply], float]:
    """A closed loop of ``concurrency`` clients; returns every reply and the wall time of the cell."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain; charset=utf-8"}
    replies: list[Reply] = []
    sent = 0
    deadline = time.perf_counter() + duration_cap
    timeout = aiohttp.ClientTimeout(total=max(duration_cap, REPLY_TIMEOUT_S))

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            index = (first_text + sent) % len(texts)
            sent += 1
            started = time.perf_counter()
            try:
                async with session.post(url, data=texts[index].encode("utf-8"), headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = 0
            replies.append(Reply(time.perf_counter() - started, status, tokens[index]))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return replies, time.perf_counter() - began


def run_load_in_processes(processes: int, url: str, token: str, texts: list[str], tokens: list[int],
                          concurrency: int, requests: int, duration_cap: float) -> tuple[list[Reply], float]:
    """``run_load`` split over ``processes`` client processes that start together (one aiohttp event loop
    tops out at a few thousand requests/s: past that the client, not the server, would be measured).
    Clients and requests are dealt out as evenly as they go; each process starts at its own place in
    ``texts``. Returns every reply and the wall time from the first start to the last finish."""
    processes = min(processes, concurrency)
    if processes == 1:
        return asyncio.run(run_load(url, token, texts, tokens, concurrency, requests, duration_cap))
    context = multiprocessing.get_context("spawn")  # no copy of this process's threads or TorchServe handles
    barrier, results = context.Barrier(processes), context.Queue()
    shares = [(concurrency // processes + (i < concurrency % processes),
               requests // processes + (i < requests % processes)) for i in range(processes)]
    children = [context.Process(target=_client_process, args=(barrier, results, url, token, texts, tokens, clients,
                                                              count, duration_cap, i * len(texts) // processes))
                for i, (clients, count) in enumerate(shares)]
    for child in children:
        child.start()
    try:  # a client process that died puts nothing: wait past the cell's cap and the slowest answer, not forever
        outcomes = [results.get(timeout=duration_cap + REPLY_TIMEOUT_S + 60) for _ in children]
    except queue.Empty:
        raise RuntimeError(f"a load process gave no result; exit codes {[c.exitcode for c in children]}") from None
    finally:
        for child in children:
            child.join(timeout=10)
    replies = [reply for process_replies, _, _ in outcomes for reply in process_replies]
    return replies, max(end for _, _, end in outcomes) - min(start for _, start, _ in outcomes)


def _client_process(barrier, results, url, token, texts, tokens, concurrency, requests, duration_cap, first_text):
    barrier.wait()
    started = time.time()
    replies, _ = asyncio.run(run_load(url, token, texts, tokens, concurrency, requests, duration_cap, first_text))
    results.put((replies, started, time.time()))
