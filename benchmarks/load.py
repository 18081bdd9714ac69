"""The serving benchmark's load generator: closed loops of clients (aiohttp), in one process or several.

The client processes live for the whole run and start each cell together.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import aiohttp

REPLY_TIMEOUT_S = 120.0  # one request's answer at most (TorchServe's default_response_timeout)
START_DELAY_S = 0.2  # from handing a cell to the client processes to their common start


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


class LoadGenerator:
    """Runs a cell's load from this process, or split over ``processes`` client processes (one aiohttp
    event loop tops out at a few thousand requests/s: past that the client, not the server, would be
    measured). The processes are started once and kept for the whole run: each one imports the main
    module of the run (torch with it), which takes seconds."""

    def __init__(self, processes: int):
        self.processes = processes
        self._pool = None
        if processes > 1:
            # spawn: no copy of this process's threads, CUDA state or TorchServe handles.
            self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
            # These tasks make the pool start its processes now; one still importing when the first cell
            # starts only delays that cell's warm-up, which is not measured.
            for started in [self._pool.submit(time.sleep, 1.0) for _ in range(processes)]:
                started.result()

    def run(self, url: str, token: str, texts: list[str], tokens: list[int], concurrency: int, requests: int,
            duration_cap: float) -> tuple[list[Reply], float]:
        """Every reply of the cell, and its wall time from the first client's start to the last one's end.
        Clients and requests are dealt out to the processes as evenly as they go; each process starts at
        its own place in ``texts``, all at one moment."""
        processes = min(self.processes, concurrency)
        if processes == 1:
            return asyncio.run(run_load(url, token, texts, tokens, concurrency, requests, duration_cap))
        start_at = time.time() + START_DELAY_S
        shares = [(concurrency // processes + (i < concurrency % processes),
                   requests // processes + (i < requests % processes)) for i in range(processes)]
        futures = [self._pool.submit(_client_process, start_at, url, token, texts, tokens, clients, count, duration_cap,
                                     i * len(texts) // processes) for i, (clients, count) in enumerate(shares)]
        # A cell ends by its request count or its cap; past that and the slowest answer, something is wrong.
        outcomes = [future.result(timeout=START_DELAY_S + duration_cap + REPLY_TIMEOUT_S + 60) for future in futures]
        replies = [reply for process_replies, _, _ in outcomes for reply in process_replies]
        return replies, max(end for _, _, end in outcomes) - min(start for _, start, _ in outcomes)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def _client_process(start_at, url, token, texts, tokens, concurrency, requests, duration_cap, first_text):
    time.sleep(max(0.0, start_at - time.time()))
    started = time.time()
    replies, _ = asyncio.run(run_load(url, token, texts, tokens, concurrency, requests, duration_cap, first_text))
    return replies, started, time.time()
