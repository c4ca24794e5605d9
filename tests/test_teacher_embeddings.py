"""``student.embeddings=teacher``: a word-level student's vectors are the mean of the teacher base
model's input-embedding rows over each word's pieces; the bundle key follows that choice and the
base model, and stays as it was for GloVe and null; bad inputs fail early. No Ray: the bundle is
built with on-demand labels (no teacher pool), the student trains one step by hand."""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file

from orchestrator.config import ConfigError, build_config
from orchestrator.stages.pipeline import TeacherRef, bundle_key, prepare_bundle
from orchestrator.stages.preflight import PreflightError, check_embeddings
from orchestrator.teachers.teacher_model import create_random_teacher
from orchestrator.teachers.teacher_vectors import input_embedding_dim, teacher_word_vectors
from tasks.data import Example
from tasks.loaders import TaskData
from tasks.registry import get_task
from tasks.vocab import Vocab

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "##s", "good", "bad"]
TRAIN = ["the cat sat on the mat", "the dogs sat", "good cats", "bad dog", "zebra xylophone"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny random BERT dir (hidden 32) standing for a pre-trained base model."""
    return str(create_random_teacher(tmp_path_factory.mktemp("base") / "bert", WORDS, 2))


def _rows(model_dir):
    """The base model's word-piece table and vocabulary, read straight from its files."""
    state = load_file(f"{model_dir}/model.safetensors")
    table = next(v for k, v in state.items() if k.endswith("word_embeddings.weight"))
    vocab = open(f"{model_dir}/vocab.txt").read().split("\n")
    return table, {w: i for i, w in enumerate(vocab) if w}


def _data():
    train = [Example(i, t, None, i % 2) for i, t in enumerate(TRAIN)]
    return {"sst2": TaskData(get_task("sst2"), train, {"dev": train[:2]})}


def _cfg(base, tmp_path, **student):
    return build_config({"student": {"arch": "bilstm", "embeddings": "teacher", "hidden_size": 8,
                                     "relu_size": 8, **student},
                         "teacher": {"model": base}, "pool": {"precision": "fp32"},
                         "train": {"soft_labels": "on_demand"}, "work_root": str(tmp_path)})


def _teachers(path):
    return {"sst2": TeacherRef(path, "teacher-key", "default", 32)}


def test_vectors_are_the_mean_of_the_word_pieces_rows(tiny_base):
    vocab = Vocab.build(TRAIN)
    m, found = teacher_word_vectors(tiny_base, vocab)
    table, ids = _rows(tiny_base)
    assert m.dtype == np.float32 and m.shape == (len(vocab), 32) == (len(vocab), table.shape[1])
    np.testing.assert_allclose(m[vocab.index("cat")], table[ids["cat"]], rtol=1e-6)
    np.testing.assert_allclose(m[vocab.index("cats")], (table[ids["cat"]] + table[ids["##s"]]) / 2,
                               rtol=1e-6)
    np.testing.assert_allclose(m[vocab.index("zebra")], table[ids["[UNK]"]], rtol=1e-6)
    np.testing.assert_array_equal(m[vocab.pad_id], 0.0)
    np.testing.assert_allclose(m[vocab.unk_id], table[ids["[UNK]"]], rtol=1e-6)
    np.testing.assert_allclose(m[vocab.mask_id], table[ids["[MASK]"]], rtol=1e-6)
    assert found == len(vocab) - 3 - 2  # all but the specials, zebra and xylophone
    assert input_embedding_dim(tiny_base) == 32


@pytest.mark.assets
def test_minilm_vectors(assets_dir):
    base = assets_dir / "models" / "minilm-l6-uncased"
    if not (base / "model.safetensors").is_file():
        pytest.skip(f"MiniLM assets not found at {base}")
    from transformers import AutoTokenizer

    vocab = Vocab.build(["an unbelievably good film", "qwxzv"])
    m, found = teacher_word_vectors(str(base), vocab)
    table, ids = _rows(base)
    pieces = AutoTokenizer.from_pretrained(str(base)).tokenize("unbelievably")
    assert len(pieces) > 1, pieces  # a word of several pieces
    assert m.shape == (len(vocab), 384) and input_embedding_dim(str(base)) == 384
    np.testing.assert_allclose(m[vocab.index("unbelievably")],
                               table[[ids[p] for p in pieces]].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(m[vocab.index("film")], table[ids["film"]], rtol=1e-6)
    assert found == len(vocab) - 3


def test_bundle_key_follows_the_option_and_the_base_model(tiny_base, tmp_path):
    data, teachers = _data(), _teachers(tiny_base)
    glove = tmp_path / "g.txt"
    glove.write_text("the 0.5 1 -1\ncat 2 2 2\n")
    teacher = bundle_key(_cfg(tiny_base, tmp_path), data, teachers)
    assert teacher != bundle_key(_cfg(tiny_base, tmp_path, embeddings=None), data, teachers)
    assert teacher != bundle_key(_cfg(tiny_base, tmp_path, embeddings=str(glove)), data, teachers)
    assert teacher == bundle_key(_cfg(tiny_base, tmp_path), data, teachers)
    # another base model (other weights), and the same one copied elsewhere (same content)
    other = create_random_teacher(tmp_path / "other", WORDS, 2, seed=1)
    assert teacher != bundle_key(_cfg(str(other), tmp_path), data, teachers)
    copy = shutil.copytree(tiny_base, tmp_path / "copy")
    assert teacher == bundle_key(_cfg(str(copy), tmp_path), data, teachers)
    # a transformer student ignores the option, as it ignores GloVe: no base model is read
    tf = _cfg(str(tmp_path / "absent"), tmp_path, arch="transformer")
    assert bundle_key(tf, data, teachers) == bundle_key(
        _cfg(str(tmp_path / "absent"), tmp_path, arch="transformer", embeddings=str(glove)),
        data, teachers)


def test_glove_and_null_bundle_keys_are_unchanged(tmp_path):
    """The keys of bundles built before ``teacher`` existed (literals computed on the commit
    before it, same inputs): caches of running searches must stay valid."""
    glove = tmp_path / "g.txt"
    glove.write_text("the 0.5 1 -1\ncat 2 2 2\n")
    data = {"sst2": TaskData(get_task("sst2"), [Example(0, "the cat", None, 1),
                                                Example(1, "a dog", None, 0)],
                             {"dev": [Example(0, "the dog", None, 1)]})}
    teachers = {"sst2": TeacherRef("/t/x", "k0", "default", 128)}

    def key(arch, emb):
        return bundle_key(build_config({"student": {"arch": arch, "embeddings": emb},
                                        "pool": {"precision": "fp32"}}), data, teachers)

    assert key("bilstm", str(glove)) == "5d53a28e47b2e641"
    assert key("bcn", str(glove)) == "5d53a28e47b2e641"
    assert key("bilstm", None) == "2842c4201eaf9d84"
    assert key("transformer", str(glove)) == "66904a2038e83fa2"
    assert key("transformer", None) == "56de32b151ea4ea4"


def test_random_teacher_is_refused_for_word_students():
    with pytest.raises(ConfigError, match="student.embeddings=teacher .*teacher.model=random:tiny"):
        build_config({"student": {"embeddings": "teacher"}, "teacher": {"model": "random:tiny"}})
    with pytest.raises(ConfigError, match="random BERT built afresh"):
        build_config({"student": {"arch": "bcn", "embeddings": "teacher"},
                      "teacher": {"model": "random:tiny"}})
    # a transformer student ignores student.embeddings (as with GloVe)
    build_config({"student": {"arch": "transformer", "embeddings": "teacher"},
                  "teacher": {"model": "random:tiny"}})


def test_preflight_checks_the_base_model(tiny_base, tmp_path):
    check_embeddings(_cfg(tiny_base, tmp_path))
    with pytest.raises(PreflightError, match=r"teacher.model=.*absent: no Hugging Face model "):
        check_embeddings(_cfg(str(tmp_path / "absent"), tmp_path))
    no_tok = shutil.copytree(tiny_base, tmp_path / "no_tok")
    for f in ("vocab.txt", "tokenizer.json"):
        (no_tok / f).unlink(missing_ok=True)
    with pytest.raises(PreflightError, match="no tokenizer files"):
        check_embeddings(_cfg(str(no_tok), tmp_path))
    no_weights = shutil.copytree(tiny_base, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(PreflightError, match="no weights"):
        check_embeddings(_cfg(str(no_weights), tmp_path))
    # a space that may sample embeddings=teacher with a random teacher (set on the command line)
    cfg = build_config({"teacher": {"model": "random:tiny"}})
    space = SimpleNamespace(params=[SimpleNamespace(key="student.embeddings", type="choice",
                                                    values=[None, "teacher"])])
    with pytest.raises(PreflightError, match="random BERT built afresh"):
        check_embeddings(cfg, space)
    # only transformer students: nothing to check
    tf = build_config({"student": {"arch": "transformer", "embeddings": "teacher"},
                       "teacher": {"model": str(tmp_path / "absent")}})
    check_embeddings(tf)


def test_bilstm_builds_trains_and_reloads_with_teacher_vectors(tiny_base, tmp_path):
    from orchestrator.training.bundle import load_embeddings
    from orchestrator.training.train import (build_for_training, forward, load_bundle, load_student,
                                             make_batch, save_student)

    cfg = _cfg(tiny_base, tmp_path)
    res = prepare_bundle(cfg, _data(), _teachers(tiny_base), log=lambda *_: None)
    vectors = load_embeddings(res.path)
    meta, train, _, _ = load_bundle(res.path)
    assert vectors.shape == (meta["vocab_size"], 32) and meta["embed_dim"] == 32
    vocab = Vocab.load(res.path / "vocab.json")
    table, ids = _rows(tiny_base)
    np.testing.assert_allclose(vectors[vocab.index("cats")],
                               (table[ids["cat"]] + table[ids["##s"]]) / 2, rtol=1e-6)

    model, meta, _ = build_for_training(cfg, meta, vectors)
    emb = next(m for m in model.modules() if isinstance(m, torch.nn.Embedding))
    np.testing.assert_allclose(emb.weight.detach().numpy(), vectors, rtol=1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = make_batch(train["sst2"], list(range(len(TRAIN))))
    model.train()
    loss = F.cross_entropy(forward(model, batch, "sst2"), batch["label"].long())
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not np.allclose(emb.weight.detach().numpy(), vectors), "the vectors train"

    out = tmp_path / "student"
    out.mkdir()
    save_student(model, out, cfg, meta, res.path)
    loaded, info = load_student(out)
    assert info["student"]["embeddings"] == "teacher" and info["meta"]["embed_dim"] == 32
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(forward(loaded, batch, "sst2").numpy(),
                                   forward(model, batch, "sst2").numpy(), rtol=1e-5, atol=1e-6)
    # built again from the same inputs: reused
    again = prepare_bundle(cfg, _data(), _teachers(tiny_base), log=lambda *_: None)
    assert again.reused and again.key == res.key
