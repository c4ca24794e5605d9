"""Every stage that groups texts by length goes through ``orchestrator.teachers.batching``, and
each still makes the batches it made when it had its own copy: the literals below were taken
from those copies (the teacher's fine-tuning plans, the student's batch streams, both dev
evaluations, the actors' token budget, the pool's chunks) on fixed inputs. A change here changes
which examples train together, so trained teachers and students would differ from the ones
already cached."""
from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import torch

from orchestrator.config import TeacherConfig
from orchestrator.stages.multitask_teacher import mixture_plan
from orchestrator.stages.teacher import predict_logits, single_task_plan
from orchestrator.teachers.batching import (by_length, length_grouped_batches,
                                            length_sorted_batches, token_budget_batches)
from orchestrator.teachers.teacher_pool import length_chunks
from orchestrator.training.bundle import TaskTensors
from orchestrator.training.train import TaskStream, predict
from tasks.data import Example


def _lengths(n: int, seed: int) -> list[int]:
    r = random.Random(seed)
    return [r.randint(1, 30) for _ in range(n)]


def _examples(n: int, seed: int, pair: bool = False) -> list[Example]:
    lens = _lengths(n, seed)
    return [Example(i, f"{i:03d}" + "a" * lens[i], ("b" * (lens[i] % 7)) if pair else None, i % 2)
            for i in range(n)]


def _digest(batches) -> str:
    return hashlib.sha256(json.dumps(batches).encode()).hexdigest()[:16]


def test_teacher_fine_tuning_plans():
    plan = single_task_plan(_examples(23, 1), TeacherConfig(batch_size=3, epochs=1.5, seed=7))
    assert plan == [[2, 19], [16, 0, 15], [6, 21, 13], [18, 5, 7], [11, 17, 1], [14, 3, 20],
                    [12, 9, 4], [22, 10, 8], [18, 5, 16], [6, 21, 13], [7, 0, 15], [3, 14, 20]]
    # several windows of 50 batches
    big = single_task_plan(_examples(400, 2, pair=True),
                           TeacherConfig(batch_size=2, epochs=2.0, seed=11))
    assert (len(big), big[:3]) == (400, [[368, 98], [34, 100], [173, 135]])
    assert _digest(big) == "f45543080c78ca9b"


def test_multitask_teacher_plan():
    train = {"a": _examples(9, 3), "b": _examples(6, 4, pair=True)}
    plan, per_epoch = mixture_plan(train, TeacherConfig(batch_size=2, epochs=2.0, seed=3))
    assert per_epoch == 8
    assert [[t, b] for t, b in plan] == [
        ["a", [6, 8]], ["a", [2, 1]], ["b", [2, 0]], ["a", [5]], ["a", [3, 0]], ["a", [4, 7]],
        ["a", [2, 1]], ["a", [3, 0]], ["b", [4, 3]], ["a", [4, 7]], ["a", [5]], ["a", [6, 8]],
        ["a", [3, 0]], ["a", [5]], ["b", [1, 5]], ["b", [1, 5]]]


def test_mixture_tau_draws_the_small_task_more_often():
    """teacher.mixture_tau < 1 flattens the teacher's mixture: with sizes 400 and 25, the small
    task's share of the steps goes from 25/425 (proportional) toward 5/25 (size ** 0.5)."""
    train = {"big": _examples(400, 5), "small": _examples(25, 6)}

    def share(tau):
        plan, _ = mixture_plan(train, TeacherConfig(batch_size=2, epochs=4.0, seed=1,
                                                    mixture_tau=tau))
        return sum(t == "small" for t, _ in plan) / len(plan)
    assert share(1.0) < 0.09
    assert 0.16 < share(0.5) < 0.24


def _stream_batches(n: int, batch_size: int, seed: int, rank: int, world: int,
                    passes: int) -> list[list[int]]:
    lens = _lengths(n, seed)
    data = TaskTensors([[i + 1] * lens[i] for i in range(n)], None, None, np.zeros(n), None)
    shard = np.arange(rank, n, world)
    stream = TaskStream(data, shard, batch_size, seed)
    steps = passes * -(-len(shard) // batch_size)
    return [[int(x) for x in stream.next()["ids_a"][:, 0] - 1] for _ in range(steps)]


def test_student_batch_streams():
    assert _stream_batches(13, 3, 5, 0, 1, passes=2) == [
        [9], [10, 0, 8], [11, 1, 3], [4, 12, 6], [5, 7, 2],
        [9], [4, 12, 6], [5, 2, 7], [10, 0, 8], [11, 1, 3]]
    # rank 1 of 2, several windows of 32 batches, two passes
    big = _stream_batches(300, 2, 6, 1, 2, passes=2)
    assert (len(big), big[:3]) == (150, [[103, 129], [13, 263], [265, 161]])
    assert _digest(big) == "8440ab4f51134caf"


class _Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen: list[list[int]] = []

    def forward(self, ids_a, ids_b, task):
        self.seen.append([int(x) for x in ids_a[:, 0] - 1])
        return torch.zeros(len(ids_a), 2)


def test_student_dev_batches():
    lens = _lengths(11, 8)
    model = _Recorder()
    predict(model, TaskTensors([[i + 1] * lens[i] for i in range(11)], None, None,
                               np.zeros(11), None), "t", batch_size=4)
    assert model.seen == [[6, 7, 3, 8], [4, 0, 9, 1], [2, 5, 10]]


class _Tokenizer:
    def __init__(self):
        self.seen: list[list[int]] = []

    def __call__(self, a, b, **kw):
        self.seen.append([int(t[:3]) for t in a])
        return {"input_ids": torch.zeros(len(a), 1, dtype=torch.long)}


class _Teacher(torch.nn.Module):
    def forward(self, input_ids, **kw):
        class Out:
            logits = torch.zeros(len(input_ids), 2)
        return Out()


def test_teacher_dev_batches():
    tok = _Tokenizer()
    predict_logits(_Teacher(), tok, _examples(10, 9, pair=True), 16, batch_size=3)
    assert tok.seen == [[8, 4, 3], [5, 9, 0], [2, 7, 1], [6]]


def test_actor_token_budget_batches():
    assert token_budget_batches(_lengths(17, 10) + [0, 0], 60, 4) == [
        [8, 10], [13, 12], [0, 4, 16], [3, 9, 7], [2, 11, 6, 14], [1, 15, 5, 17], [18]]


def test_pool_chunks():
    lens = _lengths(12, 12)
    todo = [(f"k{i}", "a" * lens[i], ("b" * (lens[i] % 5)) if i % 3 else None)
            for i in range(12)]
    assert [[t[0] for t in c] for c in length_chunks(todo, 5)] == [
        ["k2", "k4", "k3", "k10", "k0"], ["k7", "k5", "k1", "k11", "k9"], ["k6", "k8"]]


def test_the_shared_pieces():
    assert by_length([3, 0, 2, 1], [5, 1, 5, 0]) == [3, 1, 0, 2]
    assert by_length(range(4), [2, 7, 2, 7], descending=True) == [1, 3, 0, 2]
    assert length_sorted_batches([3, 1, 2, 1, 9], 2) == [[1, 3], [2, 0], [4]]
    assert length_grouped_batches([0, 1, 2, 3, 4], [5, 4, 3, 2, 1], 1, window=2) == [
        [1], [0], [3], [2], [4]]
