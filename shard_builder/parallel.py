"""A process pool over shards with per-image progress through a shared counter (builds and verifies)."""
from __future__ import annotations

import multiprocessing as mp
from typing import Callable, Sequence, TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")

_counter = None


def _init_worker(counter) -> None:
    global _counter
    _counter = counter


def tick() -> None:
    """Count one finished image; a no-op outside a pool worker."""
    if _counter is not None:
        with _counter.get_lock():
            _counter.value += 1


def run_parallel(function: Callable[[Task], Result], tasks: Sequence[Task], total: int, workers: int,
                 progress: Callable[[int, int], None] | None = None) -> list[Result]:
    """Run `function` over `tasks` in `workers` processes; `progress(done, total)` is polled 5x a second.

    A worker's exception is re-raised here (the pool is torn down on the way out).
    """
    counter = mp.Value("l", 0)
    results = []
    with mp.get_context("fork").Pool(max(1, min(workers, len(tasks))), _init_worker, (counter,)) as pool:
        pending = pool.imap_unordered(function, tasks)
        while True:
            try:
                results.append(pending.next(timeout=0.2))
            except mp.TimeoutError:
                pass
            except StopIteration:
                break
            if progress is not None:
                progress(counter.value, total)
    if progress is not None:
        progress(counter.value, total)
    return results
