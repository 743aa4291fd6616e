"""Oriented R-CNN RoI head that hands its sampled RoIs to a distillation teacher."""
from typing import Callable, List, Optional

from mmrotate.core import rbbox2roi
from mmrotate.models.builder import ROTATED_HEADS
from mmrotate.models.roi_heads import OrientedStandardRoIHead
from torch import Tensor

# Maps the sampled RoIs, (num_rois, 6) as [batch_idx, cx, cy, w, h, angle], to the
# teacher's classification logits on them, (num_rois, num_classes + 1).
TeacherClsScoreFn = Callable[[Tensor], Tensor]


@ROTATED_HEADS.register_module()
class KDOrientedStandardRoIHead(OrientedStandardRoIHead):
    """``OrientedStandardRoIHead`` whose bbox loss also receives teacher logits.

    Assignment and sampling are the parent's, run once per step. The RoIs they
    produce go to the student's bbox head and, through ``teacher_cls_score_fn``, to
    the teacher, so both sets of logits describe the same boxes in the same order.
    The head adds no parameters: its state dict equals the parent's, and without a
    teacher function it trains exactly like the parent.
    """

    _teacher_cls_score_fn: Optional[TeacherClsScoreFn] = None

    def forward_train(self,
                      x: List[Tensor],
                      img_metas: List[dict],
                      proposal_list: List[Tensor],
                      gt_bboxes: List[Tensor],
                      gt_labels: List[Tensor],
                      gt_bboxes_ignore: Optional[List[Tensor]] = None,
                      gt_masks=None,
                      teacher_cls_score_fn: Optional[TeacherClsScoreFn] = None):
        """Assign and sample proposals, then compute the bbox losses.

        Args:
            x (list[Tensor]): multi-level student features, each (N, C, H, W).
            img_metas (list[dict]): image meta information, one per image.
            proposal_list (list[Tensor]): proposals per image, (num_proposals, 6)
                as [cx, cy, w, h, angle, score].
            gt_bboxes (list[Tensor]): ground truth per image, (num_gts, 5).
            gt_labels (list[Tensor]): class index per ground-truth box.
            gt_bboxes_ignore (list[Tensor], optional): boxes to ignore.
            gt_masks (None): unused, kept for the parent's signature.
            teacher_cls_score_fn (callable, optional): maps the sampled RoIs
                (num_rois, 6) to the teacher's logits (num_rois, num_classes + 1).
                When given, the bbox head also returns ``loss_distill``.

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``loss_bbox``, ``acc`` and, with a
            teacher, ``loss_distill``.
        """
        # The parent's sampling loop calls _bbox_forward_train without a way to pass
        # extra arguments, so the function is kept on the head for this call only.
        self._teacher_cls_score_fn = teacher_cls_score_fn
        try:
            return super().forward_train(x, img_metas, proposal_list, gt_bboxes,
                                         gt_labels, gt_bboxes_ignore, gt_masks)
        finally:
            self._teacher_cls_score_fn = None

    def _bbox_forward_train(self, x, sampling_results, gt_bboxes, gt_labels,
                            img_metas):
        """Run the bbox head on the sampled RoIs and compute its losses."""
        sampled_rois = rbbox2roi([res.bboxes for res in sampling_results])
        bbox_results = self._bbox_forward(x, sampled_rois)
        bbox_targets = self.bbox_head.get_targets(sampling_results, gt_bboxes,
                                                  gt_labels, self.train_cfg)

        loss_kwargs = {}
        if self._teacher_cls_score_fn is not None:
            loss_kwargs['teacher_cls_score'] = self._teacher_cls_score_fn(
                sampled_rois)

        loss_bbox = self.bbox_head.loss(bbox_results['cls_score'],
                                        bbox_results['bbox_pred'], sampled_rois,
                                        *bbox_targets, **loss_kwargs)
        bbox_results.update(loss_bbox=loss_bbox)
        return bbox_results
