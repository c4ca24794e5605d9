"""Latency and size probes for students and teachers, measured the same way everywhere."""
from __future__ import annotations

import statistics
import time

import torch


def median_latency_ms(fn, repeats: int = 30, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


@torch.inference_mode()
def student_latency_ms(model: torch.nn.Module, batch_size: int, seq_len: int, pair: bool,
                       vocab_size: int, task: str | None = None, repeats: int = 30,
                       threads: int | None = 1) -> float:
    """Median forward latency on random token ids (latency does not depend on weights)."""
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model.eval()
        g = torch.Generator().manual_seed(0)
        ids_a = torch.randint(3, max(4, vocab_size), (batch_size, seq_len), generator=g)
        ids_b = torch.randint(3, max(4, vocab_size), (batch_size, seq_len), generator=g) if pair else None
        return median_latency_ms(lambda: model(ids_a, ids_b, task), repeats=repeats)
    finally:
        torch.set_num_threads(prev)
