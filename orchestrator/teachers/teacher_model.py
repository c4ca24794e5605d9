"""Teachers on disk and in memory: one interface for single-task and multi-task teachers.

Formats
- single task: a plain Hugging Face ``AutoModelForSequenceClassification`` directory. It has one
  head, named by ``distillray_heads.json`` when present (else ``"default"``).
- multi task: an HF encoder directory (``AutoModel``) plus ``heads.safetensors`` and
  ``distillray_heads.json`` (``{"heads": {"sst2": 2, "stsb": 1, ...}, "multitask": true}``).
The teacher pool, the labeling stage and the report all load teachers through :func:`load_teacher`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

HEADS_FILE = "distillray_heads.json"


class TeacherError(ValueError):
    """A teacher path or model that cannot serve the asked task."""


class MultiTaskTeacher(nn.Module):
    """A shared encoder with a linear head per task over the pooled [CLS] representation."""

    def __init__(self, encoder: nn.Module, heads: dict[str, int], dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({t: nn.Linear(hidden, n) for t, n in heads.items()})

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, head: str | None = None):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids)
        pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None \
            else out.last_hidden_state[:, 0]
        return self.heads[head](self.dropout(pooled))


@dataclass
class Teacher:
    model: nn.Module
    tokenizer: object
    heads: dict[str, int]  # head name -> number of outputs (1 = regression)
    path: str
    multitask: bool

    def resolve_head(self, head: str | None) -> str:
        if head is None:
            if len(self.heads) == 1:
                return next(iter(self.heads))
            raise TeacherError(f"teacher {self.path} has heads {sorted(self.heads)}: name one")
        if head not in self.heads:
            if len(self.heads) == 1 and not self.multitask:
                return next(iter(self.heads))
            raise TeacherError(
                f"teacher {self.path} has no head for task {head!r} (heads: {sorted(self.heads)}); "
                "refine a multi-task teacher that includes it")
        return head

    def set_attention(self, impl: str) -> None:
        """Compute attention with the Hugging Face kernel ``impl`` (``sdpa``, ``eager``) from the
        next forward pass on; a model that has no such kernel keeps its own."""
        hf = self.model.encoder if self.multitask else self.model
        if getattr(getattr(hf, "config", None), "_attn_implementation", impl) == impl:
            return
        try:
            hf.set_attn_implementation(impl)
        except (AttributeError, ValueError, ImportError):
            pass

    @torch.inference_mode()
    def logits(self, input_ids, attention_mask, token_type_ids=None, head: str | None = None):
        head = self.resolve_head(head)
        if self.multitask:
            return self.model(input_ids, attention_mask, token_type_ids, head=head)
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).logits


# how a fine-tuning went (its seconds, the steps it resumed at), saved beside the weights and
# left out of the teacher's identity: the same weights trained twice, or resumed after a kill,
# label into the same soft-label cache
RUN_RECORD_FILE = "train_run.json"


def teacher_identity(path: str | Path) -> str:
    """Hash of a teacher's weights and configs: the soft-label cache keys on it."""
    from orchestrator.runtime.keys import content_key, file_digest

    p = Path(path)
    parts = {}
    for f in sorted(p.iterdir()):
        if f.name == RUN_RECORD_FILE:
            continue
        if f.is_file() and (f.suffix in (".safetensors", ".json", ".txt", ".bin", ".model")):
            parts[f.name] = file_digest(f)
    if not parts:
        raise TeacherError(f"teacher dir {p} holds no model files")
    return content_key(parts)


def base_model_identity(name: str) -> str:
    """A base model's identity for cache keys: a local dir by its content, else its name."""
    if Path(name).is_dir():
        return f"dir:{teacher_identity(name)}"
    return name


def mask_token(path: str | Path) -> str:
    """The teacher tokenizer's mask token, read from its saved config files (loading the
    tokenizer imports transformers, over a second in every trial that builds a transfer set);
    the tokenizer itself only when neither file names it, ``[MASK]`` when it has none."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            tok = json.loads((Path(path) / name).read_text()).get("mask_token")
        except (OSError, ValueError, AttributeError):
            continue
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if isinstance(tok, str) and tok:
            return tok
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path)).mask_token or "[MASK]"


def check_teacher_path(path: str | Path) -> Path:
    """The cheap checks of :func:`load_teacher`, usable before any actor starts."""
    p = Path(path)
    if not p.is_dir():
        raise TeacherError(f"teacher path {p} does not exist; fine-tune one with "
                           "`distillray finetune-teacher` or pass an HF model directory")
    if not (p / "config.json").is_file():
        raise TeacherError(f"teacher path {p} has no config.json: not a Hugging Face model dir")
    return p


def load_teacher(path: str | Path, device: str = "cpu") -> Teacher:
    """Load a teacher dir (see module doc). Clear errors for missing or unfit paths."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    p = check_teacher_path(path)
    meta = json.loads((p / HEADS_FILE).read_text()) if (p / HEADS_FILE).is_file() else {}
    tokenizer = AutoTokenizer.from_pretrained(str(p))
    if meta.get("multitask"):
        heads = {k: int(v) for k, v in meta["heads"].items()}
        encoder = AutoModel.from_pretrained(str(p), add_pooling_layer=True)
        model = MultiTaskTeacher(encoder, heads)
        from safetensors.torch import load_file
        model.heads.load_state_dict(load_file(str(p / "heads.safetensors")))
        multitask = True
    else:
        config = AutoConfig.from_pretrained(str(p))
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(p))
        except (ValueError, KeyError, OSError) as e:
            raise TeacherError(f"teacher {p} ({config.model_type}) is not a classifier-compatible "
                               f"encoder: {e}") from None
        name = next(iter(meta.get("heads", {})), "default")
        heads = {name: int(model.config.num_labels)}
        multitask = False
    model.to(device).eval()
    return Teacher(model=model, tokenizer=tokenizer, heads=heads, path=str(p), multitask=multitask)


def save_multitask_teacher(model: MultiTaskTeacher, tokenizer, out_dir: str | Path) -> None:
    from safetensors.torch import save_file

    out = Path(out_dir)
    model.encoder.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    save_file({k: v.contiguous() for k, v in model.heads.state_dict().items()},
              str(out / "heads.safetensors"))
    (out / HEADS_FILE).write_text(json.dumps(
        {"multitask": True, "heads": {t: h.out_features for t, h in model.heads.items()}}, indent=1))


def create_random_teacher(out_dir: str | Path, words: list[str], num_labels: int,
                          head_name: str = "default", hidden: int = 32, layers: int = 2,
                          heads: int = 2, max_position: int = 128, seed: int = 0) -> Path:
    """A tiny random-weight BERT classifier with a WordPiece vocab of ``words``: for tests and the
    smoke preset, where no hub or asset model is wanted."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + sorted({w.lower() for w in words} - set(specials))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=hidden * 2,
                     max_position_embeddings=max_position, num_labels=num_labels)
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    (out / HEADS_FILE).write_text(json.dumps({"multitask": False, "heads": {head_name: num_labels}}))
    return out
