"""EMA teacher update and cosine schedules against their formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neco.method.ema import ema_update_, make_teacher
from neco.method.schedules import CosineSchedule, cosine_schedule


def test_ema_update_equals_formula() -> None:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    teacher = make_teacher(student)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    ema_update_(teacher, student, 0.9)
    for name, param in teacher.named_parameters():
        expected = 0.9 * before[name] + 0.1 * dict(student.named_parameters())[name]
        torch.testing.assert_close(param, expected)
    ema_update_(teacher, student, 1.0)  # momentum 1 leaves the teacher alone
    ema_update_(teacher, student, 0.0)  # momentum 0 copies the student
    for (_, t), (_, s) in zip(teacher.named_parameters(), student.named_parameters()):
        torch.testing.assert_close(t, s)


def test_ema_rejects_mismatched_models_and_bad_momentum() -> None:
    with pytest.raises(ValueError, match="same parameters"):
        ema_update_(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)), 0.5)
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(nn.Linear(2, 2), nn.Linear(2, 2), 1.5)


@pytest.mark.parametrize("start,end", [(1e-5, 0.0), (0.04, 0.5), (0.9995, 1.0)])
def test_cosine_schedule_matches_formula(start: float, end: float) -> None:
    total = 1000
    schedule = cosine_schedule(start, end, total)
    assert schedule(0) == pytest.approx(start)
    assert schedule(total // 2) == pytest.approx((start + end) / 2)
    assert schedule(total) == pytest.approx(end)
    assert schedule(total + 50) == pytest.approx(end)
    assert schedule(250) == pytest.approx(end + (start - end) * (1 + math.cos(math.pi / 4)) / 2)
    with pytest.raises(ValueError, match="total_steps"):
        CosineSchedule(0.0, 1.0, 0)
