"""Teacher pool: batching, order, equality with a direct model call, cache, faults, labeling
from Train workers through the pool's client.

One Ray instance for the module (2 CPUs, no dashboard) and one shared 2-actor pool
(2 x 0.5 CPU), so a 2-worker Train run (2 x 0.5 CPU) fits beside it.
"""
from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest
import ray

import orchestrator.teachers.teacher_pool as tp
from orchestrator.config import PoolConfig
from orchestrator.teachers.batching import flat_order, restore_order, token_budget_batches
from orchestrator.teachers.cache import text_keys
from orchestrator.teachers.teacher_model import TeacherError, create_random_teacher, load_teacher
from orchestrator.teachers.teacher_pool import PoolResourceError, TeacherPool

WORDS = ("the a movie film good bad great terrible plot actor boring fun slow sharp witty dull "
         "story scene music cast ending long short brilliant awful").split()
MAXLEN = 64


# ---------------------------------------------------------------------------------------------
# pure batching


@pytest.mark.parametrize("seed", range(5))
def test_token_budget_batches_cover_every_index_once_within_budget(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 120, size=int(rng.integers(1, 400))).tolist()
    budget, max_bs = int(rng.integers(100, 2000)), int(rng.integers(1, 64))
    batches = token_budget_batches(lengths, budget, max_bs)
    assert sorted(flat_order(batches)) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= max_bs
        width = max(max(1, lengths[i]) for i in b)
        assert width * len(b) <= budget or len(b) == 1
    # longest first, and batches never overlap in length (that is what keeps padding low)
    for prev, nxt in zip(batches, batches[1:]):
        assert min(lengths[i] for i in prev) >= max(lengths[i] for i in nxt)


def test_over_budget_item_gets_its_own_batch_and_order_is_restored():
    lengths = [5, 500, 3, 7, 600, 1]
    batches = token_budget_batches(lengths, token_budget=20, max_batch_size=8)
    assert [600] in [[lengths[i] for i in b] for b in batches]
    assert [500] in [[lengths[i] for i in b] for b in batches]
    outputs = [np.array([[i, 10 * i] for i in b], dtype=np.float32) for b in batches]
    restored = restore_order(batches, outputs)
    np.testing.assert_array_equal(restored[:, 0], np.arange(len(lengths)))
    assert token_budget_batches([], 10, 2) == []
    with pytest.raises(ValueError):
        token_budget_batches([1], 0, 2)
    with pytest.raises(ValueError, match="exactly once"):
        restore_order([[0, 0]], [np.zeros((2, 1))])


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    return create_random_teacher(tmp_path_factory.mktemp("teacher") / "t", WORDS, num_labels=3,
                                 head_name="sst2", max_position=128, seed=1)


@pytest.fixture(scope="module")
def direct(teacher_dir):
    return load_teacher(teacher_dir)


@pytest.fixture(scope="module")
def pool(ray_local, teacher_dir):
    # fp32: these tests compare the labels with direct fp32 model calls
    cfg = PoolConfig(num_actors=2, cpus_per_actor=0.5, token_budget=256, max_batch_size=8,
                     precision="fp32")
    p = TeacherPool(teacher_dir, cfg, chunk_size=16)
    yield p
    p.shutdown()


def _texts(n: int, seed: int, lo: int = 1, hi: int = 50) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(lo, hi)))) for _ in range(n)]


def _direct_logits(teacher, texts_a, texts_b=None, max_length=MAXLEN) -> np.ndarray:
    rows = []
    for i, a in enumerate(texts_a):
        b = texts_b[i] if texts_b is not None else None
        enc = teacher.tokenizer(a, b, truncation=True, max_length=max_length, return_tensors="pt")
        rows.append(teacher.logits(enc["input_ids"], enc["attention_mask"],
                                   enc.get("token_type_ids")).numpy()[0])
    return np.stack(rows)


# ---------------------------------------------------------------------------------------------
# labeling


def test_labels_in_input_order_equal_direct_model_calls(pool, direct):
    texts_a = _texts(120, seed=0)
    texts_b = [t if i % 3 else None for i, t in enumerate(_texts(120, seed=1, hi=20))]
    res = pool.label_texts(texts_a, texts_b, max_length=MAXLEN, progress=False)
    assert res.logits.shape == (120, 3) and res.logits.dtype == np.float32
    np.testing.assert_allclose(res.logits, _direct_logits(direct, texts_a, texts_b), atol=1e-5)
    too_long = sum(len(direct.tokenizer(a, b)["input_ids"]) > MAXLEN
                   for a, b in zip(texts_a, texts_b))
    assert (res.hits, res.misses, res.computed, res.truncated) == (0, 120, 120, too_long)
    assert pool.info["threads"] == 1  # 0.5 CPU -> 1 torch thread
    # each actor saw several length-sorted chunks
    assert all(ray.get(a.info.remote())["calls"] >= 1 for a in pool.actors)


def test_too_long_texts_are_truncated_and_counted(pool, direct):
    texts = _texts(6, seed=2, lo=2, hi=10) + _texts(4, seed=3, lo=200, hi=300)
    res = pool.label_texts(texts, max_length=32, progress=False)
    assert res.truncated == 4
    np.testing.assert_allclose(res.logits, _direct_logits(direct, texts, max_length=32),
                               atol=1e-5)
    # past the model's 128 positions: capped, not an index error
    res = pool.label_texts(texts[-2:], max_length=4096, progress=False)
    np.testing.assert_allclose(res.logits, _direct_logits(direct, texts[-2:], max_length=128),
                               atol=1e-5)


def test_empty_input_and_duplicates(pool):
    res = pool.label_texts([], progress=False)
    assert res.logits.shape == (0, 3)
    res = pool.label_texts(["good movie", "bad", "good movie"], progress=False)
    assert res.computed == 2
    np.testing.assert_array_equal(res.logits[0], res.logits[2])


def test_client_labels_from_another_process_like_the_pool(pool, direct, tmp_path):
    """A PoolClient travels to a Ray task (as to a Train worker) and labels through the pool's
    own actors and the same cache, with the pool's results."""
    texts = _texts(40, seed=9)
    client = pool.client()

    @ray.remote(num_cpus=0)
    def label_elsewhere(c, texts, root):
        res = c.label_texts(texts, max_length=MAXLEN, cache=c.cache(root, "sst2", MAXLEN),
                            progress=False)
        return res.logits, res.hits, res.misses, os.getpid()

    logits, hits, misses, pid = ray.get(label_elsewhere.remote(client, texts, str(tmp_path)))
    assert pid != os.getpid() and (hits, misses) == (0, 40)
    np.testing.assert_allclose(logits, _direct_logits(direct, texts), atol=1e-5)
    cached = pool.label_texts(texts, max_length=MAXLEN, progress=False,
                              cache=pool.cache(str(tmp_path), "sst2", MAXLEN))
    assert cached.hits == 40, "the client's labels went to the pool's cache"
    assert client.resolve_head(None) == pool.resolve_head(None)
    # the client holds the pool's own actors: it never starts one
    assert [a._actor_id for a in client.actors] == [a._actor_id for a in pool.actors]


def test_cache_hits_and_corrupt_shards_are_recomputed(pool, tmp_path):
    texts = _texts(80, seed=4)
    reference = pool.label_texts(texts, max_length=MAXLEN, progress=False).logits
    root = str(tmp_path / "cache")
    first = pool.label_texts(texts + texts[:10], max_length=MAXLEN,
                             cache=pool.cache(root, max_length=MAXLEN), progress=False)
    assert (first.hits, first.misses, first.computed) == (0, 90, 80)
    np.testing.assert_array_equal(first.logits[:80], reference)

    cache = pool.cache(root, max_length=MAXLEN)  # a second trial, fresh instance
    second = pool.label_texts(texts, max_length=MAXLEN, cache=cache, progress=False)
    assert (second.hits, second.misses, second.computed) == (80, 0, 0)
    assert (cache.stats.hits, cache.stats.misses) == (80, 0)
    np.testing.assert_array_equal(second.logits, reference)

    # corrupt every shard, then a fresh cache must recompute rather than trust them
    shards = [os.path.join(cache.dir, n) for n in os.listdir(cache.dir) if n.endswith(".parquet")]
    for s in shards:
        with open(s, "r+b") as f:
            f.truncate(os.path.getsize(s) - 7)
    third = pool.label_texts(texts, max_length=MAXLEN, cache=pool.cache(root, max_length=MAXLEN),
                             progress=False)
    assert (third.hits, third.computed) == (0, 80)
    np.testing.assert_allclose(third.logits, reference, atol=1e-6)
    # the damaged bytes are gone: what is on disk now verifies, and serves every text
    for n in os.listdir(cache.dir):
        if n.endswith(".parquet"):
            with open(os.path.join(cache.dir, n), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() + ".parquet" == n
    fourth = pool.cache(root, max_length=MAXLEN)
    assert fourth.lookup(text_keys(texts))[1] == [] and fourth.stats.corrupt_shards == 0

    with pytest.raises(ValueError, match="max_length"):
        pool.label_texts(texts, max_length=32, cache=cache, progress=False)


# ---------------------------------------------------------------------------------------------
# faults


class _KillOnWait:
    """Stands in for the ``ray`` module inside teacher_pool: kills an actor at the 3rd
    ``ray.wait`` of a labeling run, i.e. while chunks are in flight."""

    def __init__(self, victim, no_restart: bool):
        self.victim, self.no_restart, self.waits, self.killed = victim, no_restart, 0, False

    def __getattr__(self, name):
        return getattr(ray, name)

    def wait(self, refs, **kw):
        self.waits += 1
        if self.waits == 3:
            ray.kill(self.victim, no_restart=self.no_restart)
            self.killed = True
        return ray.wait(refs, **kw)


@pytest.mark.parametrize("no_restart", [False, True], ids=["ray-restarts", "pool-replaces"])
def test_killed_actor_mid_labeling_gives_complete_identical_labels(pool, monkeypatch, no_restart):
    texts = _texts(300, seed=7)
    clean = pool.label_texts(texts, max_length=MAXLEN, progress=False)
    victim = pool.actors[0]
    pid_before = ray.get(victim.info.remote())["pid"]
    fake = _KillOnWait(victim, no_restart)
    monkeypatch.setattr(tp, "ray", fake)
    faulty = pool.label_texts(texts, max_length=MAXLEN, progress=False)
    monkeypatch.undo()
    assert fake.killed
    assert faulty.logits.shape == clean.logits.shape
    np.testing.assert_array_equal(faulty.logits, clean.logits)
    # slot 0 is served by a new process: restarted by Ray, or replaced by the pool
    assert ray.get(pool.actors[0].info.remote(), timeout=120)["pid"] != pid_before
    if no_restart:
        assert faulty.retried_chunks >= 1 and pool.actors[0] is not victim


# ---------------------------------------------------------------------------------------------
# errors


def test_unknown_teacher_path_is_a_clear_error(tmp_path):
    with pytest.raises(TeacherError, match="does not exist"):
        TeacherPool(tmp_path / "no-such-teacher", PoolConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match="no config.json"):
        TeacherPool(tmp_path / "empty", PoolConfig())


def test_unloadable_teacher_fails_with_its_own_error(pool, tmp_path):
    bad = tmp_path / "weightless"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "bert"}')
    free = ray.available_resources().get("CPU")
    with pytest.raises(TeacherError, match="failed to start: .*not a classifier-compatible"):
        TeacherPool(bad, PoolConfig(num_actors=1, cpus_per_actor=0.5), start_timeout_s=60)
    deadline = time.monotonic() + 10  # its CPU share is given back
    while ray.available_resources().get("CPU") != free and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU") == free


@pytest.mark.parametrize("cfg,pattern", [
    (PoolConfig(gpus_per_actor=1), r"no 'GPU' resource.*pool.gpus_per_actor=0"),
    (PoolConfig(resources_per_actor={"teacher_gpu": 1}), r"no 'teacher_gpu' resource"),
    (PoolConfig(num_actors=8, cpus_per_actor=1), r"needs 8 'CPU'"),
    (PoolConfig(num_actors=1, cpus_per_actor=3), r"largest node has 2"),
])
def test_missing_resources_fail_fast_instead_of_hanging(pool, teacher_dir, cfg, pattern):
    t0 = time.monotonic()
    with pytest.raises(PoolResourceError, match=pattern):
        TeacherPool(teacher_dir, cfg)
    assert time.monotonic() - t0 < 5


def test_busy_cpus_fail_with_a_clear_error(pool):
    # the shared pool holds 1 of 2 CPUs: two more whole-CPU actors cannot start now
    t0 = time.monotonic()
    with pytest.raises(PoolResourceError, match=r"needs 2 'CPU' but only 1 of 2 is free"):
        tp.check_pool_resources(PoolConfig(num_actors=2, cpus_per_actor=1), wait_s=0.5)
    assert time.monotonic() - t0 < 5


# ---------------------------------------------------------------------------------------------
# labeling from other processes


def test_two_train_workers_label_through_the_pool_client(pool, direct, tmp_path):
    """What an on-demand trial's Train workers do: label their rows through the pool's
    picklable client, concurrently, and get the teacher's logits."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    texts = _texts(40, seed=9)
    pairs = _texts(40, seed=10, hi=10)
    expected = _direct_logits(direct, texts, pairs)

    def loop(config):
        import json

        import numpy as np
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        client = config["client"]
        mine = list(range(rank, len(config["texts"]), 2))
        got = np.concatenate([
            client.label_texts([config["texts"][i] for i in mine[j: j + 4]],
                               [config["pairs"][i] for i in mine[j: j + 4]], head="sst2",
                               max_length=config["max_length"], progress=False).logits
            for j in range(0, len(mine), 4)])
        err = float(np.abs(got - np.asarray(config["expected"])[mine]).max())
        assert err < 1e-5, f"rank {rank}: max error {err}"
        with open(f"{config['out']}/rank{rank}.json", "w") as f:
            json.dump({"max_err": err, "n": len(mine)}, f)
        ray.train.report({"rank": rank, "max_err": err})

    trainer = TorchTrainer(
        loop,
        train_loop_config={"client": pool.client(), "texts": texts,
                           "pairs": pairs, "expected": expected.tolist(), "max_length": MAXLEN,
                           "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False,
                                     resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="serve-test", storage_path=str(tmp_path / "train")),
    )
    result = trainer.fit()  # a worker's failed assertion fails the fit
    assert result.error is None
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["n"] for r in reports] == [20, 20]
    assert all(r["max_err"] < 1e-5 for r in reports)


def test_shutdown_kills_the_actors(ray_local, teacher_dir, pool):
    with TeacherPool(teacher_dir, PoolConfig(num_actors=1, cpus_per_actor=0.5)) as p:
        actor = p.actors[0]
        assert p.label_texts(["good film"], progress=False).logits.shape == (1, 3)
    assert p.actors == []
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.info.remote(), timeout=30)
    with pytest.raises(RuntimeError, match="shut down"):
        p.client()


def test_token_budget_defaults_to_the_device_and_is_validated(teacher_dir):
    from orchestrator.config import ConfigError, build_config
    from orchestrator.teachers.teacher_pool import DEFAULT_TOKEN_BUDGET, TeacherWorker

    w = TeacherWorker(str(teacher_dir), PoolConfig(cpus_per_actor=1))
    assert w.device == "cpu" and w.info()["token_budget"] == DEFAULT_TOKEN_BUDGET["cpu"] == 2048
    assert TeacherWorker(str(teacher_dir), PoolConfig(token_budget=64)).info()["token_budget"] == 64
    with pytest.raises(ConfigError, match="pool.token_budget=0 must be at least 1"):
        build_config({}, {"pool.token_budget": 0})


def test_mask_token_is_read_from_the_tokenizer_files(teacher_dir, tmp_path):
    """Without loading the tokenizer (transformers' import costs each trial over a second), and
    the same token the tokenizer has; a directory whose files do not name it asks the tokenizer."""
    from transformers import AutoTokenizer

    from orchestrator.teachers.teacher_model import mask_token

    assert mask_token(teacher_dir) == AutoTokenizer.from_pretrained(str(teacher_dir)).mask_token
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in teacher_dir.iterdir():
        if f.is_file():
            (bare / f.name).write_bytes(f.read_bytes())
    conf = json.loads((bare / "tokenizer_config.json").read_text())
    conf["mask_token"] = {"content": "<msk>", "special": True}
    (bare / "tokenizer_config.json").write_text(json.dumps(conf))
    assert mask_token(bare) == "<msk>"
    conf.pop("mask_token")
    (bare / "tokenizer_config.json").write_text(json.dumps(conf))
    assert mask_token(bare) == AutoTokenizer.from_pretrained(str(bare)).mask_token


def test_bf16_labels_with_eager_attention_and_fp32_with_sdpa(teacher_dir):
    """On a CPU, bf16 labeling switches the teacher to eager attention and fp32 back to SDPA:
    the fp32 labels stay those of the SDPA kernel, and bf16 ones stay close to them."""
    from orchestrator.teachers.teacher_pool import TeacherWorker, labeling_attention

    assert labeling_attention("bf16", "cpu") == "eager"
    assert labeling_attention("fp32", "cpu") == labeling_attention("bf16", "cuda") == "sdpa"
    w = TeacherWorker(str(teacher_dir), PoolConfig(cpus_per_actor=1, precision="bf16"))
    texts = ["a good movie", "the plot was thin and the acting worse", "fine", "an odd one"]
    fp32, _ = w.label(texts, precision="fp32")
    assert w.teacher.model.config._attn_implementation == "sdpa"
    low, _ = w.label(texts)
    assert w.teacher.model.config._attn_implementation == "eager"
    assert not np.array_equal(low, fp32) and np.abs(low - fp32).max() < 0.05
    again, _ = w.label(texts, precision="fp32")
    assert np.array_equal(again, fp32)
