"""Tests for the Hinton distillation loss and its registration."""
import math

import pytest
import torch

import lsknet  # noqa: F401 (registers the lsknet modules)
from lsknet.models.losses import KnowledgeDistillationKLDivLoss, kd_kl_div_loss
from mmrotate.models.builder import build_loss

STUDENT_LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER_LOGITS = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
# KL(softmax(teacher / T) || softmax(student / T)) * T**2 for each row above,
# computed with Python's math module. The T = 1 value of the second row, worked
# by hand: p_t = 1/3 each and p_s = (0.0466, 0.0171, 0.9362), so
# KL = (log 7.151 + log 19.44 + log 0.356) / 3 = 1.300.
EXPECTED_LOSS_T1 = [0.6643068646250243, 1.3006049484226527]
EXPECTED_LOSS_T2 = [0.7811333595370792, 1.4976403609108135]


def softmax_with_math(logits, T):
    exps = [math.exp(value / T) for value in logits]
    total = sum(exps)
    return [value / total for value in exps]


def hinton_loss_with_math(student, teacher, T):
    student_prob = softmax_with_math(student, T)
    teacher_prob = softmax_with_math(teacher, T)
    kl = sum(t * math.log(t / s) for t, s in zip(teacher_prob, student_prob))
    return kl * T * T


def logits():
    student = torch.tensor(STUDENT_LOGITS, dtype=torch.float64)
    teacher = torch.tensor(TEACHER_LOGITS, dtype=torch.float64)
    return student, teacher


def test_kd_loss_matches_hand_computed_value():
    student, teacher = logits()

    loss = kd_kl_div_loss(student, teacher, T=1.0)

    assert loss.shape == (2,)
    assert loss.tolist() == pytest.approx(EXPECTED_LOSS_T1, rel=1e-12)
    assert loss[1].item() == pytest.approx(1.300, abs=1e-3)


@pytest.mark.parametrize('T', [0.5, 1.0, 2.0, 4.0, 10.0])
def test_kd_loss_scales_with_T_squared(T):
    student, teacher = logits()

    loss = kd_kl_div_loss(student, teacher, T=T)

    expected = [
        hinton_loss_with_math(s, t, T)
        for s, t in zip(STUDENT_LOGITS, TEACHER_LOGITS)
    ]
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)


def test_kd_loss_at_T2_matches_precomputed_value():
    student, teacher = logits()

    loss = kd_kl_div_loss(student, teacher, T=2.0)

    assert loss.tolist() == pytest.approx(EXPECTED_LOSS_T2, rel=1e-12)


def test_kd_loss_sums_over_classes_not_mean():
    # mmdet 2.28 averages over the C classes, which would give a loss C times
    # smaller than this one.
    student, teacher = logits()
    num_classes = student.size(1)

    loss = kd_kl_div_loss(student, teacher, T=1.0)

    assert loss[0].item() != pytest.approx(
        EXPECTED_LOSS_T1[0] / num_classes, rel=1e-3)
    assert loss[0].item() == pytest.approx(EXPECTED_LOSS_T1[0], rel=1e-12)


@pytest.mark.parametrize('reduction, expected', [
    ('none', EXPECTED_LOSS_T1),
    ('sum', sum(EXPECTED_LOSS_T1)),
    ('mean', sum(EXPECTED_LOSS_T1) / 2),
])
def test_kd_module_reductions(reduction, expected):
    student, teacher = logits()
    loss_module = KnowledgeDistillationKLDivLoss(
        T=1.0, loss_weight=3.0, reduction=reduction)

    loss = loss_module(student, teacher)

    expected_loss = torch.tensor(expected, dtype=torch.float64) * 3.0
    assert loss.shape == expected_loss.shape
    assert torch.allclose(loss, expected_loss, rtol=1e-12, atol=0)


def test_kd_module_reduction_override():
    student, teacher = logits()
    loss_module = KnowledgeDistillationKLDivLoss(T=1.0, reduction='mean')

    loss = loss_module(student, teacher, reduction_override='sum')

    assert loss.item() == pytest.approx(sum(EXPECTED_LOSS_T1), rel=1e-12)


def test_kd_module_weight_and_avg_factor():
    student, teacher = logits()
    weight = torch.tensor([2.0, 0.5], dtype=torch.float64)
    loss_module = KnowledgeDistillationKLDivLoss(T=1.0, loss_weight=1.5)
    weighted_sum = 2.0 * EXPECTED_LOSS_T1[0] + 0.5 * EXPECTED_LOSS_T1[1]

    weighted_mean = loss_module(student, teacher, weight=weight)
    averaged_by_4 = loss_module(student, teacher, weight=weight, avg_factor=4)
    weighted_none = loss_module(
        student, teacher, weight=weight, reduction_override='none')

    assert weighted_mean.item() == pytest.approx(1.5 * weighted_sum / 2, rel=1e-12)
    # mmdet's weight_reduce_loss adds float32 eps to avg_factor.
    assert averaged_by_4.item() == pytest.approx(1.5 * weighted_sum / 4, rel=1e-6)
    assert weighted_none.tolist() == pytest.approx(
        [1.5 * 2.0 * EXPECTED_LOSS_T1[0], 1.5 * 0.5 * EXPECTED_LOSS_T1[1]],
        rel=1e-12)


def test_kd_module_avg_factor_with_sum_raises():
    student, teacher = logits()
    loss_module = KnowledgeDistillationKLDivLoss(T=1.0, reduction='sum')

    with pytest.raises(ValueError, match='avg_factor'):
        loss_module(student, teacher, avg_factor=4)


def test_kd_loss_identical_logits_is_zero():
    student = torch.tensor([[3.0, -2.0, 0.1, 7.0], [0.0, 0.0, 0.0, 0.0]])

    loss = kd_kl_div_loss(student, student.clone(), T=4.0)

    assert torch.allclose(loss, torch.zeros(2), atol=1e-6)


def test_kd_loss_extreme_logits_stay_finite():
    student = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]],
                           requires_grad=True)
    teacher = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, -1e4]],
                           requires_grad=True)

    loss = kd_kl_div_loss(student, teacher, T=1.0, detach_target=False)
    loss.sum().backward()

    assert torch.isfinite(loss).all()
    # Teacher row 0 is one-hot on class 1, and the student's log-probability
    # of class 1 is -2e4, so the KL is 2e4.
    assert loss[0].item() == pytest.approx(2e4, rel=1e-6)
    assert torch.isfinite(student.grad).all()
    assert torch.isfinite(teacher.grad).all()
    assert student.grad.abs().sum().item() > 0


def test_kd_loss_gradient_reaches_only_student():
    student, teacher = logits()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    loss_module = KnowledgeDistillationKLDivLoss(T=2.0)

    loss = loss_module(student, teacher)
    loss.backward()

    assert student.grad is not None
    assert student.grad.abs().sum().item() > 0
    assert teacher.grad is None


def test_kd_loss_gradient_matches_closed_form():
    # d loss / d student = T * (softmax(student / T) - softmax(teacher / T)).
    student, teacher = logits()
    student.requires_grad_(True)
    T = 2.0

    kd_kl_div_loss(student, teacher, T=T).sum().backward()

    expected_grad = T * (torch.softmax(student.detach() / T, dim=1) -
                         torch.softmax(teacher / T, dim=1))
    assert torch.allclose(student.grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_kd_loss_without_detach_reaches_teacher():
    student, teacher = logits()
    teacher.requires_grad_(True)

    kd_kl_div_loss(student, teacher, T=2.0, detach_target=False).sum().backward()

    assert teacher.grad is not None
    assert teacher.grad.abs().sum().item() > 0


@pytest.mark.parametrize('reduction', ['mean', 'sum'])
def test_kd_module_zero_rois_gives_connected_zero(reduction):
    student = torch.zeros(0, 16, requires_grad=True)
    teacher = torch.zeros(0, 16)
    loss_module = KnowledgeDistillationKLDivLoss(T=2.0, reduction=reduction)

    loss = loss_module(student, teacher)
    loss.backward()

    assert loss.shape == ()
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    assert student.grad is not None
    assert student.grad.shape == (0, 16)


def test_kd_module_zero_rois_with_none_reduction():
    student = torch.zeros(0, 16, requires_grad=True)
    teacher = torch.zeros(0, 16)

    loss = KnowledgeDistillationKLDivLoss(T=2.0, reduction='none')(student, teacher)

    assert loss.shape == (0,)
    assert loss.grad_fn is not None


@pytest.mark.parametrize('T', [0, -1, float('nan'), float('inf'), True, '2'])
def test_kd_module_rejects_invalid_T(T):
    with pytest.raises(ValueError, match=r'T=.*set T > 0 in loss_distill'):
        KnowledgeDistillationKLDivLoss(T=T)


@pytest.mark.parametrize('T', [0, -1.0, float('nan')])
def test_kd_function_rejects_invalid_T(T):
    student, teacher = logits()

    with pytest.raises(ValueError, match=r'set T > 0'):
        kd_kl_div_loss(student, teacher, T=T)


def test_kd_module_rejects_negative_loss_weight():
    with pytest.raises(ValueError, match=r'loss_weight=-0\.5.*>= 0'):
        KnowledgeDistillationKLDivLoss(T=2.0, loss_weight=-0.5)


def test_kd_module_rejects_unknown_reduction():
    with pytest.raises(ValueError, match=r"reduction='average'"):
        KnowledgeDistillationKLDivLoss(T=2.0, reduction='average')
    loss_module = KnowledgeDistillationKLDivLoss(T=2.0)
    student, teacher = logits()
    with pytest.raises(ValueError, match=r"reduction_override='average'"):
        loss_module(student, teacher, reduction_override='average')


def test_kd_loss_rejects_mismatched_shapes():
    loss_module = KnowledgeDistillationKLDivLoss(T=2.0)

    with pytest.raises(ValueError, match=r'pred \(4, 16\) and soft_label \(4, 15\)'):
        loss_module(torch.zeros(4, 16), torch.zeros(4, 15))
    with pytest.raises(ValueError, match=r'pred \(4,\) and soft_label \(4,\)'):
        loss_module(torch.zeros(4), torch.zeros(4))


def test_kd_module_rejects_wrong_weight_shape():
    loss_module = KnowledgeDistillationKLDivLoss(T=2.0)

    with pytest.raises(ValueError, match=r'weight must have shape \(4,\).*\(4, 16\)'):
        loss_module(torch.zeros(4, 16), torch.zeros(4, 16),
                    weight=torch.ones(4, 16))


def test_kd_registry_builds_lsknet_class():
    loss_module = build_loss(
        dict(type='KnowledgeDistillationKLDivLoss', T=2, loss_weight=2.0))

    assert type(loss_module).__module__.startswith('lsknet')
    assert isinstance(loss_module, KnowledgeDistillationKLDivLoss)
    assert loss_module.T == 2
    assert loss_module.loss_weight == 2.0
    assert loss_module.reduction == 'mean'


def test_kd_module_default_T_matches_mmdet():
    assert KnowledgeDistillationKLDivLoss().T == 10.0
