"""Students: shapes, padding, embeddings, learning, and BERT weight transfer (tiny models)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from students.config import StudentConfig
from students.bcn import BCNStudent
from students.bilstm import BiLSTMStudent
from students.factory import build_student, count_parameters
from students.heads import TaskHeads
from students.transformer import TransformerStudent, init_from_bert, join_pair, pick_layers

HEADS = {"sst2": 2, "mnli": 3, "stsb": 1}
V = 50


def ids(lengths, width=None, seed=0):
    """Right-padded random token ids, one row per length (0 = all padding)."""
    g = torch.Generator().manual_seed(seed)
    width = width or max(max(lengths), 1)
    out = torch.zeros(len(lengths), width, dtype=torch.long)
    for r, n in enumerate(lengths):
        out[r, :n] = torch.randint(1, V, (n,), generator=g)
    return out


def make(kind):
    torch.manual_seed(0)
    if kind.startswith("bilstm"):
        return BiLSTMStudent(V, 8, 6, 2, 10, HEADS, dropout=0.1, pair=kind.endswith("pair"))
    if kind.startswith("bcn"):
        return BCNStudent(V, 8, 6, HEADS, dropout=0.1)
    return TransformerStudent(V, 16, 2, 2, 32, 40, 2, HEADS, dropout=0.1)


KINDS = ["bilstm-single", "bilstm-pair", "bcn-single", "bcn-pair", "transformer-single",
         "transformer-pair"]


def call(model, kind, a, b, task):
    return model(a, b if kind.endswith("pair") else None, task=task)


@pytest.mark.parametrize("kind", KINDS)
def test_every_head_has_its_shape_and_empty_rows_are_finite(kind):
    model = make(kind)
    a, b = ids([5, 3, 0, 7]), ids([4, 0, 2, 6], seed=1)  # row 2 of a is empty
    for task, n in HEADS.items():
        out = call(model.train(), kind, a, b, task)
        assert out.shape == (4, n)
        assert torch.isfinite(out).all()
        out.sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        model.zero_grad()


@pytest.mark.parametrize("kind", KINDS)
def test_extra_padding_does_not_change_outputs(kind):
    model = make(kind).eval()
    a, b = ids([5, 3, 1, 7]), ids([4, 6, 2, 1], seed=1)
    with torch.no_grad():
        for task in HEADS:
            base = call(model, kind, a, b, task)
            padded = call(model, kind, F.pad(a, (0, 6)), F.pad(b, (0, 3)), task)
            assert torch.allclose(base, padded, atol=1e-5), task


def test_heads_shared_parameters_and_counts():
    model = make("bilstm-pair")
    assert set(model.heads.keys()) == set(HEADS)
    assert model.heads.sizes == HEADS
    head_ids = {id(p) for p in model.heads.parameters()}
    shared = list(model.shared_parameters())
    assert shared and not any(id(p) in head_ids for p in shared)
    n_all = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in shared) + sum(p.numel() for p in model.heads.parameters()) == n_all
    assert model.non_embedding_parameters() == n_all - V * 8
    assert count_parameters(model) == {"total": n_all, "non_embedding": n_all - V * 8}


def test_task_resolution():
    model = make("bilstm-single")
    a = ids([3, 2])
    with pytest.raises(ValueError, match="mnli"):  # several heads: name one
        model(a)
    with pytest.raises(ValueError, match="no head for task 'qqp'"):
        model(a, task="qqp")
    one = BiLSTMStudent(V, 8, 6, 1, 10, {"sst2": 2}, 0.0, False)
    assert one(a).shape == (2, 2)
    with pytest.raises(ValueError, match="sentence pairs|single sentences"):
        one(a, a)
    heads = TaskHeads(4, {"a": 2, "b": 1}, hidden=3)
    assert heads(torch.zeros(5, 4), "b").shape == (5, 1) and heads.is_regression("b")
    with pytest.raises(ValueError, match="cannot name a head"):
        TaskHeads(4, {"train": 2})


def test_pretrained_embeddings_are_copied_and_can_be_frozen():
    emb = np.random.default_rng(0).normal(size=(V, 8)).astype(np.float32)
    model = BiLSTMStudent(V, 8, 6, 1, 10, HEADS, 0.0, False, pretrained=emb,
                          trainable_embeddings=False)
    assert np.allclose(model.embedding.embed.weight.detach().numpy(), emb)
    assert not model.embedding.embed.weight.requires_grad
    bcn = BCNStudent(V, 8, 6, HEADS, 0.0, pretrained=torch.from_numpy(emb))
    assert torch.equal(bcn.embedding.embed.weight.detach(), torch.from_numpy(emb))
    assert bcn.embedding.embed.weight.requires_grad
    with pytest.raises(ValueError, match="shape"):
        BiLSTMStudent(V, 9, 6, 1, 10, HEADS, 0.0, False, pretrained=emb)


def test_multichannel_static_copy_is_frozen():
    emb = np.random.default_rng(1).normal(size=(V, 8)).astype(np.float32)
    model = BiLSTMStudent(V, 8, 6, 1, 10, {"sst2": 2}, 0.0, False, pretrained=emb,
                          channels="multi")
    assert model.lstm.input_size == 16
    static, dynamic = model.embedding.static.weight, model.embedding.embed.weight
    assert np.allclose(static.detach().numpy(), emb) and np.allclose(dynamic.detach().numpy(), emb)
    model(ids([4, 3])).sum().backward()
    assert static.grad is None or not static.grad.any()
    assert dynamic.grad is not None and dynamic.grad.abs().sum() > 0
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    opt.step()
    assert np.allclose(static.detach().numpy(), emb)


def test_bcn_single_sentence_attends_to_itself():
    model = make("bcn-single").eval()
    a = ids([5, 2, 0, 7])
    with torch.no_grad():
        assert torch.allclose(model(a, task="mnli"), model(a, a, task="mnli"), atol=1e-6)


def test_bcn_pooling_is_configurable():
    model = BCNStudent(V, 8, 6, {"sst2": 2}, 0.0, pooling=["max", "self"])
    assert model.heads["sst2"][1].in_features == 2 * 2 * 2 * 6
    assert model(ids([3, 1])).shape == (2, 2)
    with pytest.raises(ValueError, match="pooling"):
        BCNStudent(V, 8, 6, {"sst2": 2}, 0.0, pooling=["median"])


def test_bilstm_overfits_a_tiny_separable_set():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # class 0 sentences use tokens 1..9, class 1 tokens 10..19; lengths 2..6
    rows, labels = [], []
    for i in range(32):
        y = i % 2
        n = int(torch.randint(2, 7, (1,), generator=g))
        rows.append(torch.randint(1 + 9 * y, 10 + 10 * y, (n,), generator=g))
        labels.append(y)
    x = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    y = torch.tensor(labels)
    model = BiLSTMStudent(20, 8, 8, 1, 8, {"toy": 2}, dropout=0.0, pair=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_join_pair_packs_tokens_and_segments():
    a = torch.tensor([[101, 5, 102, 0], [101, 102, 0, 0]])
    b = torch.tensor([[7, 8, 102], [9, 102, 0]])
    joined, seg = join_pair(a, b)
    assert joined.tolist() == [[101, 5, 102, 7, 8, 102], [101, 102, 9, 102, 0, 0]]
    assert seg.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]]


def test_segments_inferred_from_sep():
    model = TransformerStudent(V, 16, 1, 2, 32, 40, 2, {"x": 2}, 0.0, sep_token_id=3)
    seq = torch.tensor([[2, 5, 3, 7, 3, 0]])
    assert model._segments(seq).tolist() == [[0, 0, 0, 1, 1, 0]]


def test_pick_layers():
    assert pick_layers(3, 6, "first") == [0, 1, 2]
    assert pick_layers(3, 6, "even") == [1, 3, 5]
    assert pick_layers(3, 12, "even") == [3, 7, 11]
    assert pick_layers(3, 6, "0,2,4") == [0, 2, 4]
    with pytest.raises(ValueError, match="4 layers but the teacher only 3"):
        pick_layers(4, 3, "even")
    with pytest.raises(ValueError, match="do not exist"):
        pick_layers(2, 3, [0, 3])


# --------------------------------------------------------------------------------------------
# initialising the Transformer student from a (tiny, random) Hugging Face BERT

transformers = pytest.importorskip("transformers")


def tiny_bert(layers, init_range=0.02):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=layers,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=40, type_vocab_size=2,
                                  initializer_range=init_range)
    return transformers.BertModel(cfg).eval()


def test_init_from_bert_copies_the_chosen_layers():
    bert = tiny_bert(4)
    student = TransformerStudent(V, 32, 2, 2, 64, 40, 2, HEADS, 0.1)
    assert init_from_bert(student, bert, "even") == [1, 3]
    t, s = bert.state_dict(), student.state_dict()
    for j, i in enumerate([1, 3]):
        assert torch.equal(s[f"layers.{j}.query.weight"],
                           t[f"encoder.layer.{i}.attention.self.query.weight"])
        assert torch.equal(s[f"layers.{j}.ffn_norm.bias"], t[f"encoder.layer.{i}.output.LayerNorm.bias"])
        assert torch.equal(s[f"layers.{j}.ffn_in.weight"], t[f"encoder.layer.{i}.intermediate.dense.weight"])
    assert torch.equal(s["embeddings.word.weight"], t["embeddings.word_embeddings.weight"])
    assert torch.equal(s["pooler.weight"], t["pooler.dense.weight"])
    # a sequence-classification wrapper works too (its .bert prefix is found)
    clf = transformers.BertForSequenceClassification(bert.config)
    init_from_bert(student, clf, [0, 2])
    assert torch.equal(student.layers[1].value.bias,
                       clf.bert.encoder.layer[2].attention.self.value.bias)


@pytest.mark.parametrize("dtype,init_range,atol", [
    (torch.float32, 0.02, 1e-5),  # BERT's own init
    # large weights in double precision: small differences (e.g. tanh-approximate GELU) show
    (torch.float64, 0.5, 1e-9),
])
def test_equal_depth_student_reproduces_bert(dtype, init_range, atol):
    bert = tiny_bert(2, init_range).to(dtype)
    student = TransformerStudent(V, 32, 2, 2, 64, 40, 2, {"sst2": 2}, 0.1).eval()
    init_from_bert(student, bert, "first")
    student.to(dtype)
    x = ids([9, 5, 12], width=14, seed=3)
    x[:, 0] = 2  # a [CLS]-like first token everywhere
    seg = torch.zeros_like(x)
    seg[:, 4:] = 1
    seg = seg * (x != 0)
    with torch.no_grad():
        ref = bert(input_ids=x, attention_mask=(x != 0).long(), token_type_ids=seg)
        hidden, pooled = student.encode(x, seg)
    assert pooled.dtype == dtype
    assert torch.allclose(pooled, ref.pooler_output, atol=atol)
    mask = x != 0
    assert torch.allclose(hidden[mask], ref.last_hidden_state[mask], atol=atol)
    # the pair given as two parts (joined by the student) gives the same logits as joined input
    with torch.no_grad():
        a, b = x[:, :4], x[:, 4:]
        assert torch.allclose(student(a, b), student(x, token_type_ids=seg), atol=atol)


def test_init_from_bert_rejects_mismatches():
    bert = tiny_bert(2)
    with pytest.raises(ValueError, match="3 layers but the teacher only 2"):
        init_from_bert(TransformerStudent(V, 32, 3, 2, 64, 40, 2, HEADS, 0.1), bert, "first")
    with pytest.raises(ValueError, match="hidden size differs: student 16, teacher 32"):
        init_from_bert(TransformerStudent(V, 16, 2, 2, 64, 40, 2, HEADS, 0.1), bert)
    with pytest.raises(ValueError, match="ffn size"):
        init_from_bert(TransformerStudent(V, 32, 2, 2, 48, 40, 2, HEADS, 0.1), bert)
    with pytest.raises(ValueError, match="attention heads"):
        init_from_bert(TransformerStudent(V, 32, 2, 4, 64, 40, 2, HEADS, 0.1), bert)
    with pytest.raises(ValueError, match="position_embeddings"):
        init_from_bert(TransformerStudent(V, 32, 2, 2, 64, 80, 2, HEADS, 0.1), bert)


# --------------------------------------------------------------------------------------------
# factory

@pytest.mark.parametrize("arch", ["bilstm", "bcn", "transformer"])
def test_build_student_from_config(arch):
    cfg = StudentConfig(arch=arch, embed_dim=8, hidden_size=6, relu_size=10, tf_layers=1,
                        tf_hidden=16, tf_heads=2, tf_ffn=32, max_length=20)
    emb = np.zeros((V, 12), dtype=np.float32) if arch != "transformer" else None
    model = build_student(cfg, V, {"sst2": 2, "stsb": 1}, pair=False, pretrained=emb)
    assert model(ids([3, 4]), task="stsb").shape == (2, 1)
    if emb is not None:
        assert model.embedding.out_dim == 12  # the pretrained matrix sets the size
    counts = count_parameters(model)
    assert 0 < counts["non_embedding"] < counts["total"]


def test_build_student_rejects_unknown_arch():
    with pytest.raises(ValueError, match="bilstm, bcn, transformer"):
        build_student(StudentConfig(arch="gru"), V, {"sst2": 2}, pair=False)


def test_a_registered_student_kind_is_accepted_built_and_named_everywhere():
    """A new student is one register() call: the config check accepts its name, build_student
    builds it, run names use its shape, and the bundle key follows its input encoding."""
    from orchestrator.config import ConfigError, ExperimentConfig, validate, with_values
    from orchestrator.runtime.tracking import trial_run_name
    from students import registry
    from students.registry import StudentKind, names, register, student_kind

    built = []

    def build(cfg, vocab_size, heads, pair, pretrained, max_position):
        built.append((vocab_size, dict(heads), pair))
        return BiLSTMStudent(vocab_size, cfg.embed_dim, 8, 1, 8, heads, 0.0, pair)

    with pytest.raises(ConfigError, match="choose bilstm, bcn, transformer"):
        validate(with_values(ExperimentConfig(), {"student.arch": "tiny"}))
    register(StudentKind("tiny", "words", False, build, lambda c: "t8", "a test student"))
    try:
        assert names()[-1] == "tiny" and student_kind("tiny").words
        with pytest.raises(ValueError, match="registered already"):
            register(StudentKind("tiny", "words", False, build, str, "again"))
        cfg = with_values(ExperimentConfig(), {"student.arch": "tiny"})
        validate(cfg)
        model = build_student(cfg.student, 50, {"sst2": 2}, False)
        assert isinstance(model, BiLSTMStudent) and built == [(50, {"sst2": 2}, False)]
        assert trial_run_name(3, cfg).startswith("trial-3 tiny t8 lr")
    finally:
        registry._KINDS.pop("tiny", None)
    assert "tiny" not in names()
    with pytest.raises(ValueError, match="encoding="):
        StudentKind("odd", "bytes", False, build, str, "")


def test_builtin_kinds_say_what_the_code_used_to_test_by_name():
    from students.registry import student_kind

    assert [student_kind(a).encoding for a in ("bilstm", "bcn", "transformer")] == \
        ["words", "words", "wordpiece"]
    assert [student_kind(a).from_teacher_layers for a in ("bilstm", "bcn", "transformer")] == \
        [False, False, True]
