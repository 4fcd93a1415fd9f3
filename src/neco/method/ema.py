"""EMA teacher: a frozen copy of the student updated as `t <- m*t + (1-m)*s` after each optimiser step."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ema_update_", "make_teacher"]


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of `student` with gradients off and in eval mode (no dropout / drop-path)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place `teacher_p = momentum * teacher_p + (1 - momentum) * student_p` for every parameter.

    Parameters are matched by name (frozen student parameters included); floating buffers are averaged
    the same way and other buffers copied.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"`momentum` must be in [0, 1] but is {momentum}")
    teacher_params = dict(teacher.named_parameters())
    student_params = dict(student.named_parameters())
    if teacher_params.keys() != student_params.keys():
        missing = sorted(set(student_params) ^ set(teacher_params))[:5]
        raise ValueError(f"teacher and student must have the same parameters; they differ in {missing}")
    names = list(student_params)
    teacher_tensors = [teacher_params[n].data for n in names]
    student_tensors = [student_params[n].data for n in names]
    if teacher_tensors:
        torch._foreach_mul_(teacher_tensors, momentum)
        torch._foreach_add_(teacher_tensors, student_tensors, alpha=1.0 - momentum)
    student_buffers = dict(student.named_buffers())
    for name, buffer in teacher.named_buffers():
        source = student_buffers.get(name)
        if source is None or source.shape != buffer.shape:
            continue
        if buffer.is_floating_point():
            buffer.mul_(momentum).add_(source, alpha=1.0 - momentum)
        else:
            buffer.copy_(source)
