"""Two student trainings at once with one thread each, against one at a time with every thread.

    .venv/bin/python benchmarks/trial_packing.py                      # tang's BiLSTM sizes
    .venv/bin/python benchmarks/trial_packing.py --repeats 7 --steps 60

Whether a search on a small CPU machine should run its trials one at a time, each with all the
cores (``search.max_concurrent: 1``, ``train.torch_threads`` = cores), or pack them, one core
each (``max_concurrent`` = cores, ``torch_threads: 1``), depends on how well one student's
training step uses several threads. This measures exactly that, for the BiLSTM sizes of
``search_spaces/tang.yaml``: ``steps`` training steps (forward, MSE on two logits, backward,
Adam) on random word ids of SST-2-like lengths (5 to 30 words, batch 64, 20,000-word vocabulary,
50-d embeddings),

* ``alone``: one process with ``--threads`` torch threads runs ``steps`` steps;
* ``packed``: ``--threads`` processes with 1 thread each run ``steps`` steps each, started
  together (a barrier), timed to the last one's end.

Throughput is steps per second of wall time; ``packed / alone`` > 1 means packing pays. Each
repeat measures every size both ways, in alternating order, so machine noise hits both alike;
the table gives medians over repeats. Processes are started once per size and mode (spawn), so
interpreter and torch start-up are outside the timed loop.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIZES = [(64, 1), (150, 1), (300, 1), (64, 2), (150, 2), (300, 2)]  # (hidden, layers)


def _steps(hidden: int, layers: int, steps: int, threads: int, seed: int) -> float:
    """Build a student and run ``steps`` training steps; returns the seconds they took."""
    import torch

    from students.bilstm import BiLSTMStudent

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = BiLSTMStudent(20_000, 50, hidden, layers, 200, {"sst2": 2}, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(8):
        lengths = torch.randint(5, 31, (64,), generator=g)
        ids = torch.randint(2, 20_000, (64, int(lengths.max())), generator=g)
        ids[torch.arange(ids.size(1))[None, :] >= lengths[:, None]] = 0  # padding id 0
        batches.append((ids, torch.randn(64, 2, generator=g)))
    for ids, target in batches[:2]:  # warm-up, untimed
        loss = torch.nn.functional.mse_loss(model(ids), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t0 = time.perf_counter()
    for i in range(steps):
        ids, target = batches[i % len(batches)]
        loss = torch.nn.functional.mse_loss(model(ids), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def _worker(conn, barrier, threads: int) -> None:
    """Runs jobs sent through ``conn`` until None; each job waits at the barrier first."""
    while True:
        job = conn.recv()
        if job is None:
            return
        hidden, layers, steps, seed = job
        barrier.wait()
        conn.send(_steps(hidden, layers, steps, threads, seed))


class Group:
    """``n`` worker processes with ``threads`` torch threads each, started together per job."""

    def __init__(self, n: int, threads: int):
        ctx = mp.get_context("spawn")
        self.barrier = ctx.Barrier(n)
        self.pipes, self.procs = [], []
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, self.barrier, threads), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    def run(self, hidden: int, layers: int, steps: int, seed: int) -> float:
        """Seconds of the slowest worker's timed steps (all start together, after the barrier)."""
        for i, c in enumerate(self.pipes):
            c.send((hidden, layers, steps, seed + i))
        return max(c.recv() for c in self.pipes)

    def close(self) -> None:
        for c in self.pipes:
            c.send(None)
        for p in self.procs:
            p.join(timeout=30)


def measure(sizes, steps: int, repeats: int, threads: int, log=print) -> list[dict]:
    alone, packed = Group(1, threads), Group(threads, 1)
    times = {(s, m): [] for s in sizes for m in ("alone", "packed")}
    try:
        for r in range(repeats):
            for i, (hidden, layers) in enumerate(sizes):
                order = ("alone", "packed") if (r + i) % 2 == 0 else ("packed", "alone")
                for mode in order:
                    g = alone if mode == "alone" else packed
                    times[((hidden, layers), mode)].append(g.run(hidden, layers, steps, 100 * r))
            log(f"[packing] repeat {r + 1}/{repeats} done")
    finally:
        alone.close()
        packed.close()
    rows = []
    for s in sizes:
        a = statistics.median(times[(s, "alone")])
        p = statistics.median(times[(s, "packed")])
        rows.append({"hidden": s[0], "layers": s[1],
                     "alone_steps_per_s": steps / a, "packed_steps_per_s": threads * steps / p,
                     "packed_over_alone": (threads * steps / p) / (steps / a)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="training steps per process and run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2,
                    help="cores to share: alone uses this many threads, packed this many processes")
    args = ap.parse_args(argv)
    rows = measure(SIZES, args.steps, args.repeats, args.threads)
    print(f"\nBiLSTM training steps per second (batch 64, medians of {args.repeats} interleaved "
          f"repeats, {args.steps} steps per process):")
    print("| hidden x layers | alone, {0} threads | packed, {0} x 1 thread | packed / alone |"
          .format(args.threads))
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['hidden']} x {r['layers']} | {r['alone_steps_per_s']:.1f} | "
              f"{r['packed_steps_per_s']:.1f} | {r['packed_over_alone']:.2f} |")
    ratios = [r["packed_over_alone"] for r in rows]
    print(f"median packed / alone over sizes: {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
