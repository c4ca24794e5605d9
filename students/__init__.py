"""Student models (plain torch.nn.Modules) and the distillation losses.

Every student: ``forward(ids_a, ids_b=None, task=None) -> logits [B, n_outputs(task)]`` (padding
id 0), ``.heads`` (one head per task), ``shared_parameters()``, ``non_embedding_parameters()``.
"""
from students.bcn import BCNStudent
from students.bilstm import BiLSTMStudent
from students.factory import build_student, count_parameters
from students.registry import StudentKind, register, student_kind
from students.heads import TaskHeads
from students.losses import distillation_loss
from students.transformer import TransformerStudent, init_from_bert

__all__ = ["BCNStudent", "BiLSTMStudent", "StudentKind", "TaskHeads", "TransformerStudent",
           "build_student", "count_parameters", "distillation_loss", "init_from_bert", "register",
           "student_kind"]
