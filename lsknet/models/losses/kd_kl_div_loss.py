"""Hinton knowledge-distillation loss: KL divergence between tempered softmaxes."""
import math
from numbers import Real
from typing import Optional

import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.losses.utils import weight_reduce_loss
from mmrotate.models.builder import ROTATED_LOSSES
from torch import Tensor

REDUCTIONS = ('none', 'mean', 'sum')


def _is_finite_real(value) -> bool:
    """Return whether ``value`` is a finite real number other than a bool."""
    is_real = isinstance(value, Real) and not isinstance(value, bool)
    return is_real and math.isfinite(value)


def _check_temperature(T: float) -> None:
    """Raise ``ValueError`` unless ``T`` is a finite real number greater than 0."""
    if not (_is_finite_real(T) and T > 0):
        raise ValueError(
            f'invalid distillation temperature T={T!r}: expected a finite '
            'number > 0 (set T > 0 in loss_distill)')


def _check_logit_shapes(pred: Tensor, soft_label: Tensor) -> None:
    """Raise ``ValueError`` unless both logits are 2-D and of the same shape."""
    if pred.dim() != 2 or pred.shape != soft_label.shape:
        raise ValueError(
            'student and teacher logits must both have shape (N, C), but got '
            f'pred {tuple(pred.shape)} and soft_label {tuple(soft_label.shape)}')


def kd_kl_div_loss(pred: Tensor,
                   soft_label: Tensor,
                   T: float,
                   detach_target: bool = True) -> Tensor:
    """Compute the per-sample Hinton distillation loss.

    The loss of sample ``i`` is
    ``T**2 * sum_c p_t[i, c] * (log p_t[i, c] - log p_s[i, c])``, where
    ``p_t = softmax(soft_label / T)`` and ``p_s = softmax(pred / T)``. Both sides
    come from ``log_softmax``, and ``p_t`` is the exponential of ``log p_t``.
    Neither log-probability is ``-inf`` unless the logit differences divided
    by T overflow the dtype, so float32 logits of magnitude 1e4 give a finite
    loss and finite gradients for both inputs. A class whose teacher
    probability underflows to 0 contributes exactly 0.

    Args:
        pred (Tensor): (N, C) student logits.
        soft_label (Tensor): (N, C) teacher logits.
        T (float): Softmax temperature, a finite number > 0.
        detach_target (bool): If True, no gradient flows into ``soft_label``.

    Returns:
        Tensor: (N,) loss per sample, summed over the C classes and scaled by
        ``T**2``, which keeps the gradient magnitude roughly independent of T
        for large T.

    Raises:
        ValueError: If ``T`` is not a finite number > 0, or if the two logit
            tensors are not both of shape (N, C).
    """
    _check_temperature(T)
    _check_logit_shapes(pred, soft_label)
    if detach_target:
        soft_label = soft_label.detach()

    student_log_prob = F.log_softmax(pred / T, dim=1)
    teacher_log_prob = F.log_softmax(soft_label / T, dim=1)
    teacher_prob = teacher_log_prob.exp()
    kl_per_class = teacher_prob * (teacher_log_prob - student_log_prob)
    return kl_per_class.sum(dim=1) * (T * T)


@ROTATED_LOSSES.register_module(force=True)
class KnowledgeDistillationKLDivLoss(nn.Module):
    """Hinton distillation loss between student and teacher logits.

    The loss follows Hinton, Vinyals and Dean, "Distilling the Knowledge in a
    Neural Network" (2015): the KL divergence between the tempered softmaxes,
    scaled by ``T**2``.

    The loss is registered with ``force=True`` under the name of mmdet 2.28's
    ``KnowledgeDistillationKLDivLoss``. mmrotate's registries are mmdet's
    ``MODELS``, so after ``import lsknet`` every config in the process that
    names this type builds this class. The two classes differ as follows:

    * mmdet averages the KL terms over the C classes, so its loss is ours
      divided by C, and its scale changes with the number of classes. This
      class sums over classes, as in Hinton et al.
    * mmdet's loss function passes the teacher's ``softmax`` probabilities to
      ``F.kl_div``. With torch 2.1 and ``detach_target=False``, its gradient
      for the teacher logits is NaN once a probability underflows to 0, as
      it does for logits of magnitude 1e4. This class works with
      ``log_softmax`` on both sides, so the loss and both gradients stay
      finite there.
    * mmdet asserts ``T >= 1``, and this class accepts any finite T > 0. It
      rejects invalid ``T``, ``loss_weight``, ``reduction`` and input shapes
      with ``ValueError``. For zero samples and reduction ``'mean'`` it
      returns 0 where mmdet returns NaN.

    ``T`` defaults to 10, as in mmdet, so a config that omits it keeps mmdet's
    temperature. Keyword arguments give the same settings as in mmdet, but the
    positional order differs.

    Args:
        T (float): Softmax temperature, a finite number > 0. Defaults to 10.
        loss_weight (float): Factor applied to the reduced loss, >= 0.
            Defaults to 1.0.
        reduction (str): ``'none'``, ``'mean'`` or ``'sum'`` over the N
            samples. Defaults to ``'mean'``.
        detach_target (bool): If True, no gradient flows into the teacher
            logits. Defaults to True.

    Raises:
        ValueError: If an argument is outside the range given above.
    """

    def __init__(self,
                 T: float = 10.0,
                 loss_weight: float = 1.0,
                 reduction: str = 'mean',
                 detach_target: bool = True) -> None:
        super().__init__()
        _check_temperature(T)
        if not (_is_finite_real(loss_weight) and loss_weight >= 0):
            raise ValueError(
                f'invalid loss_weight={loss_weight!r} for '
                'KnowledgeDistillationKLDivLoss: expected a finite number >= 0')
        if reduction not in REDUCTIONS:
            raise ValueError(
                f'invalid reduction={reduction!r} for '
                f'KnowledgeDistillationKLDivLoss: expected one of {REDUCTIONS}')
        self.T = T
        self.loss_weight = loss_weight
        self.reduction = reduction
        self.detach_target = detach_target

    def forward(self,
                pred: Tensor,
                soft_label: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """Compute the weighted and reduced distillation loss.

        Args:
            pred (Tensor): (N, C) student logits.
            soft_label (Tensor): (N, C) teacher logits.
            weight (Tensor, optional): (N,) weight of each sample's loss.
            avg_factor (float, optional): Divisor that replaces N when the
                reduction is ``'mean'``, as in mmdet's ``weight_reduce_loss``.
                It cannot be combined with reduction ``'sum'``.
            reduction_override (str, optional): ``'none'``, ``'mean'`` or
                ``'sum'`` to use instead of ``self.reduction`` for this call.

        Returns:
            Tensor: The loss times ``loss_weight``. Its shape is (N,) for
            reduction ``'none'`` and () otherwise. With N = 0 and reduction
            ``'mean'`` or ``'sum'``, it is a zero scalar that is still part of
            the autograd graph, so ``backward()`` works.

        Raises:
            ValueError: If the logits are not both (N, C), ``weight`` is not
                (N,), or ``reduction_override`` is not a valid reduction.
        """
        if reduction_override not in (None, ) + REDUCTIONS:
            raise ValueError(
                f'invalid reduction_override={reduction_override!r}: expected '
                f'None or one of {REDUCTIONS}')
        reduction = reduction_override or self.reduction
        _check_logit_shapes(pred, soft_label)
        if weight is not None and weight.shape != pred.shape[:1]:
            raise ValueError(
                f'weight must have shape ({pred.size(0)},), one value per '
                f'sample of pred {tuple(pred.shape)}, but got '
                f'{tuple(weight.shape)}')

        loss = kd_kl_div_loss(
            pred, soft_label, self.T, detach_target=self.detach_target)
        if loss.numel() == 0 and reduction != 'none':
            # The mean of zero samples is NaN. The sum of an empty tensor is 0
            # and still depends on pred, so backward() works.
            return loss.sum() * self.loss_weight
        loss = weight_reduce_loss(
            loss, weight=weight, reduction=reduction, avg_factor=avg_factor)
        return loss * self.loss_weight
