"""Distillation losses: pure functions of (student, teacher) tensors, scalar float32-or-input-dtype out.

Invariants: every loss is >= 0, exactly or numerically zero when student equals teacher, and
differentiable in both arguments (callers compute the teacher under ``torch.no_grad`` when it is
frozen). Inputs are validated before any math: both floating tensors (or, for ``mse_loss``, equal-
length sequences of them), same shape, same device, not empty; a mismatch raises ValueError
naming both shapes, because a silently broadcast distillation loss trains toward the wrong target.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "cosine_embedding_loss", "kl_div_loss", "mse_loss"]


def _check_pair(name: str, student: Tensor, teacher: Tensor) -> None:
    for what, t in (("student", student), ("teacher", teacher)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: {what} must be a floating tensor, got {t.dtype}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"{name}: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}; "
            f"the two models must produce outputs of the same shape (check embed_fn / output heads)"
        )
    if student.device != teacher.device:
        raise ValueError(f"{name}: student is on {student.device}, teacher on {teacher.device}")
    if student.numel() == 0:
        raise ValueError(f"{name}: empty inputs (shape {tuple(student.shape)})")


def cosine_embedding_loss(student: Tensor, teacher: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean cosine distance ``1 - cos(s, t)`` between embeddings along the last dimension.

    Args:
        student: [..., D] floating embeddings of the student.
        teacher: [..., D] embeddings of the teacher, same shape.
        eps: floor on each vector norm (as in ``F.cosine_similarity``).

    Returns:
        A scalar in [0, 2]: 0 when every student vector points like its teacher vector (the scale
        is ignored, which is what matters for L2-normalised sentence embeddings).
    """
    _check_pair("cosine_embedding_loss", student, teacher)
    cos = F.cosine_similarity(student, teacher, dim=-1, eps=eps)
    return (1.0 - cos).clamp_min(0.0).mean()


def kl_div_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Hinton's distillation loss: ``T^2 * KL(softmax(t / T) || softmax(s / T))``.

    Args:
        student_logits: [..., C] floating logits of the student.
        teacher_logits: [..., C] logits of the teacher, same shape.
        temperature: T > 0; softens both distributions. The T^2 factor keeps gradient magnitudes
            comparable across temperatures (Hinton et al., 2015).

    Returns:
        A scalar >= 0: the KL divergence summed over the C classes and averaged over all leading
        positions (PyTorch's "batchmean" over every distribution, not every element).
    """
    _check_pair("kl_div_loss", student_logits, teacher_logits)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"kl_div_loss: temperature must be a number > 0, got {temperature!r}")
    c = student_logits.shape[-1]
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
    n_dist = student_logits.numel() // c
    return kl * (temperature * temperature) / n_dist


def mse_loss(
    student_hidden: Union[Tensor, Sequence[Tensor]], teacher_hidden: Union[Tensor, Sequence[Tensor]]
) -> Tensor:
    """Mean squared error between hidden states (TinyBERT / DistilBERT style).

    Args:
        student_hidden: a floating tensor [...] or a sequence of them (e.g. one per layer, as
            ``output_hidden_states=True`` returns).
        teacher_hidden: the same structure and shapes from the teacher.

    Returns:
        A scalar >= 0: the element mean of squared differences, averaged over the tensors of a
        sequence (each tensor weighs the same whatever its size).
    """
    if isinstance(student_hidden, Tensor) or isinstance(teacher_hidden, Tensor):
        if not (isinstance(student_hidden, Tensor) and isinstance(teacher_hidden, Tensor)):
            raise TypeError("mse_loss: pass two tensors or two sequences of tensors, not one of each")
        _check_pair("mse_loss", student_hidden, teacher_hidden)
        return F.mse_loss(student_hidden, teacher_hidden)
    s, t = list(student_hidden), list(teacher_hidden)
    if len(s) != len(t):
        raise ValueError(f"mse_loss: {len(s)} student hidden states but {len(t)} teacher ones")
    if not s:
        raise ValueError("mse_loss: empty sequences of hidden states")
    for i, (a, b) in enumerate(zip(s, t)):
        try:
            _check_pair("mse_loss", a, b)
        except (TypeError, ValueError) as e:
            raise type(e)(f"hidden state {i}: {e}") from None
    return torch.stack([F.mse_loss(a, b) for a, b in zip(s, t)]).mean()


# name -> loss(student, teacher, **kwargs); the names ``distill_`` accepts.
LOSSES = {"cosine": cosine_embedding_loss, "kl": kl_div_loss, "mse": mse_loss}
