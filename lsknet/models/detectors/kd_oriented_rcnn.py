"""Oriented R-CNN student distilled from a frozen teacher through its RoI logits."""
import copy
from typing import List, Optional, Union

import torch
from mmcv import Config
from mmrotate.models.builder import ROTATED_DETECTORS
from mmrotate.models.detectors import OrientedRCNN
from mmrotate.utils import get_root_logger
from torch import Tensor

from .teacher import build_teacher

# RoI heads whose sampling can be shared with the teacher, and their KD variants.
KD_ROI_HEADS = {
    'OrientedStandardRoIHead': 'KDOrientedStandardRoIHead',
    'KDOrientedStandardRoIHead': 'KDOrientedStandardRoIHead',
}


@ROTATED_DETECTORS.register_module()
class KDOrientedRCNN(OrientedRCNN):
    """Oriented R-CNN trained with Hinton distillation from a frozen teacher.

    Distilling the Knowledge in a Neural Network (Hinton et al., 2015): the
    student's RoI classification logits are pulled towards the teacher's with a
    temperature-scaled KL loss (``loss_distill`` of the bbox head), beside the usual
    classification and regression losses. Regression is learned from the ground
    truth only.

    Each training step runs the teacher's backbone and neck on the images without
    autograd, lets the student's RPN propose and the student's RoI head assign and
    sample once, and runs the teacher's RoI extractor and bbox head on exactly
    those sampled RoIs, so the two sets of logits describe the same boxes in the
    same order. The teacher's RPN, NMS and sampler never run.

    The teacher is kept out of ``parameters()``, ``state_dict()``, optimizers and
    the DDP wrapper by storing it outside ``nn.Module``'s submodule registry:
    checkpoints then contain the student alone, under the plain detector's key
    names, and test with the student's own config. ``_apply`` and ``train`` are
    overridden so the teacher still moves across devices with the detector and
    stays in eval mode. Inference is the student's.

    Args:
        backbone, neck, rpn_head, roi_head, train_cfg, test_cfg, pretrained,
            init_cfg: the student, as for ``OrientedRCNN``. ``roi_head.bbox_head``
            must configure ``loss_distill``.
        teacher_config (str | dict | Config): the teacher's detector config, a file
            path (absolute, relative to the working directory or the repository
            root) or a config with a ``model`` section. SyncBN in it becomes BN.
        teacher_ckpt (str): the teacher's trained checkpoint. Required unless
            ``allow_random_teacher`` is set.
        allow_random_teacher (bool): accept ``teacher_ckpt=None`` and distil from
            random weights. For tests only. Default: False.
        teacher_fp16 (bool): run the teacher under CUDA autocast (bf16 where the
            GPU supports it, else fp16); its logits are cast back to fp32 before
            the loss. Ignored with a warning on the CPU. Default: False.
        teacher_config_dir (str, optional): folder of the student's config, for a
            relative ``teacher_config``; tools/train.py fills it in.
    """

    def __init__(self,
                 backbone: dict,
                 rpn_head: dict,
                 roi_head: dict,
                 train_cfg: dict,
                 test_cfg: dict,
                 teacher_config: Union[str, dict, Config],
                 teacher_ckpt: Optional[str] = None,
                 neck: Optional[dict] = None,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None,
                 allow_random_teacher: bool = False,
                 teacher_fp16: bool = False,
                 teacher_config_dir: Optional[str] = None):
        roi_head = _as_kd_roi_head(roi_head)
        super().__init__(
            backbone=backbone,
            neck=neck,
            rpn_head=rpn_head,
            roi_head=roi_head,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            pretrained=pretrained,
            init_cfg=init_cfg)

        teacher = build_teacher(
            teacher_config,
            teacher_ckpt,
            num_classes=self.roi_head.bbox_head.num_classes,
            allow_random_teacher=allow_random_teacher,
            config_dir=teacher_config_dir)
        # object.__setattr__ bypasses nn.Module's registration of submodules, which
        # is what keeps the teacher out of parameters(), state_dict() and DDP.
        object.__setattr__(self, 'teacher', teacher)
        self.teacher_fp16 = teacher_fp16
        self._warned_teacher_fp16_on_cpu = False

    def _apply(self, fn):
        # Called by .to(), .cuda(), .cpu() and friends; carry the teacher along.
        self.teacher._apply(fn)
        return super()._apply(fn)

    def train(self, mode: bool = True) -> 'KDOrientedRCNN':
        """Set the student's mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.train(False)
        return self

    def forward_train(self,
                      img: Tensor,
                      img_metas: List[dict],
                      gt_bboxes: List[Tensor],
                      gt_labels: List[Tensor],
                      gt_bboxes_ignore: Optional[List[Tensor]] = None,
                      gt_masks=None,
                      proposals: Optional[List[Tensor]] = None,
                      **kwargs) -> dict:
        """Compute the student's losses, ``loss_distill`` included.

        Args:
            img (Tensor): (N, 3, H, W) normalised images.
            img_metas (list[dict]): image meta information, one per image.
            gt_bboxes (list[Tensor]): ground truth per image, (num_gts, 5) as
                [cx, cy, w, h, angle].
            gt_labels (list[Tensor]): class index per ground-truth box.
            gt_bboxes_ignore (list[Tensor], optional): boxes to ignore.
            gt_masks (None): unused.
            proposals (list[Tensor], optional): proposals to use instead of the
                RPN's, when the detector has no RPN.

        Returns:
            dict[str, Tensor]: RPN losses, ``loss_cls``, ``loss_bbox``, ``acc`` and
            ``loss_distill``.
        """
        # The teacher's features first: its backbone activations are freed before
        # the student's, which autograd keeps, are allocated.
        teacher_feats = self.extract_teacher_feat(img)

        student_feats = self.extract_feat(img)
        losses = dict()
        if self.with_rpn:
            proposal_cfg = self.train_cfg.get('rpn_proposal', self.test_cfg.rpn)
            rpn_losses, proposal_list = self.rpn_head.forward_train(
                student_feats,
                img_metas,
                gt_bboxes,
                gt_labels=None,
                gt_bboxes_ignore=gt_bboxes_ignore,
                proposal_cfg=proposal_cfg,
                **kwargs)
            losses.update(rpn_losses)
        else:
            proposal_list = proposals

        roi_losses = self.roi_head.forward_train(
            student_feats,
            img_metas,
            proposal_list,
            gt_bboxes,
            gt_labels,
            gt_bboxes_ignore,
            gt_masks,
            teacher_cls_score_fn=lambda rois: self.teacher_cls_score(
                teacher_feats, rois))
        losses.update(roi_losses)
        return losses

    @torch.no_grad()
    def extract_teacher_feat(self, img: Tensor) -> List[Tensor]:
        """Return the teacher's backbone+neck features, each (N, C, H_i, W_i)."""
        with self._teacher_autocast(img.device):
            return list(self.teacher.extract_feat(img))

    @torch.no_grad()
    def teacher_cls_score(self, teacher_feats: List[Tensor], rois: Tensor) -> Tensor:
        """Return the teacher's RoI logits on ``rois``.

        Args:
            teacher_feats (list[Tensor]): output of ``extract_teacher_feat``.
            rois (Tensor): (num_rois, 6) sampled RoIs as [batch_idx, cx, cy, w, h,
                angle], as produced by the student's RoI head.

        Returns:
            Tensor: (num_rois, num_classes + 1) fp32 logits, without autograd.
        """
        roi_head = self.teacher.roi_head
        # mmcv 1.7.2's RoIAlignRotated has no bf16 kernel and expects the RoIs
        # in the features' dtype, so under teacher_fp16 it gets fp32 copies of
        # the levels it samples, freed on return. In fp32, .float() copies nothing.
        num_levels = roi_head.bbox_roi_extractor.num_inputs
        roi_feats = [feat.float() for feat in teacher_feats[:num_levels]]
        with self._teacher_autocast(rois.device):
            bbox_results = roi_head._bbox_forward(roi_feats, rois)
        return bbox_results['cls_score'].float()

    def _teacher_autocast(self, device: torch.device) -> torch.autocast:
        """Return the autocast context for the teacher on ``device``.

        ``teacher_fp16`` takes effect on CUDA only, in bf16 where the GPU supports
        it and fp16 otherwise. On other devices it is ignored with one warning.
        """
        enabled = self.teacher_fp16 and device.type == 'cuda'
        if self.teacher_fp16 and not enabled and \
                not self._warned_teacher_fp16_on_cpu:
            get_root_logger().warning(
                'teacher_fp16=True has no effect on the CPU; the teacher '
                'runs in fp32')
            self._warned_teacher_fp16_on_cpu = True

        dtype = None
        if enabled:
            dtype = (torch.bfloat16
                     if torch.cuda.is_bf16_supported() else torch.float16)
        return teacher_autocast(device.type, enabled, dtype)


def teacher_autocast(device_type: str,
                     enabled: bool,
                     dtype: Optional[torch.dtype] = None) -> torch.autocast:
    """Return the autocast context the teacher's forward pass runs in.

    Args:
        device_type (str): ``'cuda'`` or ``'cpu'``, as ``torch.autocast`` takes it.
        enabled (bool): whether to run in ``dtype``. When False, the context
            also switches off any autocast the caller entered, so the teacher
            runs in fp32.
        dtype (torch.dtype, optional): ``torch.float16`` or ``torch.bfloat16``;
            None takes autocast's default for the device.

    Returns:
        torch.autocast: the context manager.
    """
    if not enabled:
        return torch.autocast(device_type=device_type, enabled=False)
    return torch.autocast(device_type=device_type, dtype=dtype)


def _as_kd_roi_head(roi_head: dict) -> dict:
    """Return a copy of the RoI head config using its distillation variant."""
    roi_head = copy.deepcopy(roi_head)
    head_type = roi_head.get('type')
    if head_type not in KD_ROI_HEADS:
        raise NotImplementedError(
            f'KDOrientedRCNN does not support roi_head type {head_type!r}; '
            f'supported: {", ".join(sorted(set(KD_ROI_HEADS)))}')
    roi_head['type'] = KD_ROI_HEADS[head_type]

    bbox_head = roi_head.get('bbox_head') or {}
    if bbox_head.get('loss_distill') is None:
        raise ValueError(
            'KDOrientedRCNN has nothing to distil: model.roi_head.bbox_head has '
            'no loss_distill. Add e.g. loss_distill=dict(type='
            "'KnowledgeDistillationKLDivLoss', T=2, loss_weight=2.0), or use "
            'OrientedRCNN to train without a teacher')
    return roi_head

