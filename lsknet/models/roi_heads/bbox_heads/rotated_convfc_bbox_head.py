"""mmrotate's ``RotatedShared2FCBBoxHead`` with an optional distillation loss."""
from typing import Dict, Optional

from mmcv.runner import force_fp32
from mmrotate.models.builder import ROTATED_HEADS, build_loss
from mmrotate.models.roi_heads.bbox_heads import \
    RotatedShared2FCBBoxHead as MMRotateShared2FCBBoxHead
from torch import Tensor


@ROTATED_HEADS.register_module(force=True)
class RotatedShared2FCBBoxHead(MMRotateShared2FCBBoxHead):
    """Shared-2FC rotated bbox head that can learn from a teacher's RoI logits.

    The class is registered with ``force=True`` under mmrotate 0.3.4's name, so
    after ``import lsknet`` existing configs build this class. Without
    ``loss_distill`` it computes the same outputs and losses as mmrotate's head.
    It adds no parameters or buffers, so the two heads have identical
    state-dict keys and checkpoints load into either one.

    With ``loss_distill``, :meth:`loss` also returns ``loss_distill``, computed
    between the student's and the teacher's classification logits on the same
    sampled RoIs. The caller passes the teacher logits, as ``KDOrientedRCNN``
    does.

    Args:
        *args: Positional arguments of mmrotate's ``RotatedShared2FCBBoxHead``.
        loss_distill (dict, optional): Config of the distillation loss, for
            example ``dict(type='KnowledgeDistillationKLDivLoss', T=10)``.
            Defaults to None, which disables distillation.
        **kwargs: Keyword arguments of mmrotate's ``RotatedShared2FCBBoxHead``.

    Raises:
        ValueError: If ``loss_distill`` is given for a head built with
            ``with_cls=False``, which has no logits to distill.
    """

    def __init__(self, *args, loss_distill: Optional[dict] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if loss_distill is not None and not self.with_cls:
            raise ValueError(
                'loss_distill needs a classification branch, but the bbox head '
                'was built with with_cls=False (remove loss_distill or set '
                'with_cls=True)')
        self.loss_distill = (
            build_loss(loss_distill) if loss_distill is not None else None)

    @force_fp32(apply_to=('cls_score', 'bbox_pred', 'teacher_cls_score'))
    def loss(self,
             cls_score: Optional[Tensor],
             bbox_pred: Optional[Tensor],
             rois: Tensor,
             labels: Tensor,
             label_weights: Tensor,
             bbox_targets: Tensor,
             bbox_weights: Tensor,
             reduction_override: Optional[str] = None,
             teacher_cls_score: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """Compute the classification, regression and distillation losses.

        ``loss_distill`` covers all sampled RoIs, positives and negatives,
        because the teacher's background probability is knowledge too. It is
        called without ``weight`` or ``avg_factor``, so its own ``reduction``
        decides the result: with the default ``'mean'``, the average over the
        num_rois RoIs. ``label_weights`` is not applied to it.

        Args:
            cls_score (Tensor, optional): (num_rois, num_classes + 1) student
                classification logits, with the background class last.
            bbox_pred (Tensor, optional): (num_rois, 5) box deltas if
                ``reg_class_agnostic``, else (num_rois, 5 * num_classes).
            rois (Tensor): (num_rois, 6) RoIs as
                (batch_idx, cx, cy, w, h, a).
            labels (Tensor): (num_rois,) class index per RoI, in
                [0, num_classes], where num_classes means background.
            label_weights (Tensor): (num_rois,) weight of each RoI in
                ``loss_cls``.
            bbox_targets (Tensor): (num_rois, 5) encoded regression targets
                (dx, dy, dw, dh, da).
            bbox_weights (Tensor): (num_rois, 5) weight of each target value in
                ``loss_bbox``.
            reduction_override (str, optional): Reduction to use instead of
                each loss module's own, applied to all three losses.
            teacher_cls_score (Tensor, optional): (num_rois, num_classes + 1)
                teacher classification logits for the same RoIs. Required if
                and only if ``loss_distill`` is configured.

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``acc`` and ``loss_bbox`` as in
            mmrotate's head, plus ``loss_distill`` if it is configured.

        Raises:
            ValueError: If ``teacher_cls_score`` is missing while
                ``loss_distill`` is configured, is given while it is not, or
                does not have the shape of ``cls_score``.
        """
        losses = super().loss(
            cls_score,
            bbox_pred,
            rois,
            labels,
            label_weights,
            bbox_targets,
            bbox_weights,
            reduction_override=reduction_override)

        if self.loss_distill is None:
            if teacher_cls_score is not None:
                raise ValueError(
                    'teacher_cls_score was passed, but the bbox head has no '
                    'loss_distill configured, so the teacher logits would be '
                    'ignored (add loss_distill to the bbox_head config)')
            return losses

        if teacher_cls_score is None:
            raise ValueError(
                'loss_distill is configured, but no teacher_cls_score was '
                'passed (train this head with KDOrientedRCNN, or remove '
                'loss_distill from the bbox_head config)')
        if teacher_cls_score.shape != cls_score.shape:
            raise ValueError(
                'teacher_cls_score must have the shape of cls_score '
                f'(num_rois, num_classes + 1) = {tuple(cls_score.shape)}, but '
                f'got {tuple(teacher_cls_score.shape)} (the teacher and student '
                'must score the same RoIs and the same classes)')
        losses['loss_distill'] = self.loss_distill(
            cls_score,
            teacher_cls_score,
            reduction_override=reduction_override)
        return losses
