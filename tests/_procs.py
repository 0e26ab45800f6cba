"""Run a test's worker in several forked processes (gloo process groups of the data-parallel tests)."""

import torch.multiprocessing as mp


def run_in_processes(target, world: int, *args, timeout: float = 120) -> list:
    """`target(rank, *args, queue)` in `world` forked processes (no re-import of torch in the children:
    seconds faster than spawn); returns what each process put on the queue, in arrival order."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(rank, *args, queue)) for rank in range(world)]
    for proc in procs:
        proc.start()
    try:
        results = [queue.get(timeout=timeout) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    return results
