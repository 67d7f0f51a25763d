"""Run a coroutine to completion from synchronous code, also when the caller already runs an event loop.

The LLM generator and its pre-flight are async (concurrent requests, total deadlines), while stages are plain
functions; a notebook or an async host calls them from inside a running loop, where ``asyncio.run`` refuses, so
the coroutine then runs on a fresh loop in a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """The result of ``coro``, run on a new event loop (in a worker thread when one is already running here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()
