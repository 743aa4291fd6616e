"""Tests for the KD-capable RotatedShared2FCBBoxHead."""
import pytest
import torch

import lsknet  # noqa: F401 (registers the lsknet modules)
from lsknet.models.losses import KnowledgeDistillationKLDivLoss
from lsknet.models.roi_heads.bbox_heads import RotatedShared2FCBBoxHead
from mmrotate.models.builder import ROTATED_HEADS, build_head
from mmrotate.models.roi_heads.bbox_heads.convfc_rbbox_head import \
    RotatedShared2FCBBoxHead as MMRotateHead

NUM_CLASSES = 15
NUM_ROIS = 12
IN_CHANNELS = 8
ROI_FEAT_SIZE = 7


def head_config(**overrides):
    """Return the LSKNet-T DOTA bbox head config, shrunk to small widths."""
    config = dict(
        in_channels=IN_CHANNELS,
        fc_out_channels=16,
        roi_feat_size=ROI_FEAT_SIZE,
        num_classes=NUM_CLASSES,
        bbox_coder=dict(
            type='DeltaXYWHAOBBoxCoder',
            angle_range='le90',
            norm_factor=None,
            edge_swap=True,
            proj_xy=True,
            target_means=(.0, .0, .0, .0, .0),
            target_stds=(0.1, 0.1, 0.2, 0.2, 0.1)),
        reg_class_agnostic=True,
        loss_cls=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))
    config.update(overrides)
    return config


def build_lsknet_head(**overrides):
    return build_head(dict(type='RotatedShared2FCBBoxHead', **head_config(**overrides)))


def sampled_rois_and_targets(seed=0):
    """Return RoI features, RoIs and targets like one image's sampled RoIs.

    The first 4 RoIs are positives of classes 0-3 and the rest are background
    (label NUM_CLASSES), as the 1:3 positive fraction of the rcnn sampler gives.
    """
    generator = torch.Generator().manual_seed(seed)
    roi_feats = torch.randn(
        NUM_ROIS, IN_CHANNELS, ROI_FEAT_SIZE, ROI_FEAT_SIZE, generator=generator)
    centers = torch.rand(NUM_ROIS, 2, generator=generator) * 1024
    sizes = 8 + torch.rand(NUM_ROIS, 2, generator=generator) * 120
    angles = (torch.rand(NUM_ROIS, 1, generator=generator) - 0.5) * torch.pi
    rois = torch.cat([torch.zeros(NUM_ROIS, 1), centers, sizes, angles], dim=1)

    num_pos = 4
    labels = torch.full((NUM_ROIS,), NUM_CLASSES, dtype=torch.long)
    labels[:num_pos] = torch.arange(num_pos)
    label_weights = torch.ones(NUM_ROIS)
    bbox_targets = torch.zeros(NUM_ROIS, 5)
    bbox_targets[:num_pos] = torch.randn(num_pos, 5, generator=generator) * 0.5
    bbox_weights = torch.zeros(NUM_ROIS, 5)
    bbox_weights[:num_pos] = 1.0
    return roi_feats, rois, labels, label_weights, bbox_targets, bbox_weights


def test_registry_head_is_lsknet_class():
    head = build_lsknet_head()

    assert ROTATED_HEADS.get('RotatedShared2FCBBoxHead') is RotatedShared2FCBBoxHead
    assert type(head) is RotatedShared2FCBBoxHead
    assert type(head).__module__.startswith('lsknet')
    assert isinstance(head, MMRotateHead)


@pytest.mark.parametrize(
    'loss_distill', [None, dict(type='KnowledgeDistillationKLDivLoss', T=10)])
def test_head_state_dict_matches_mmrotate(loss_distill):
    mmrotate_head = MMRotateHead(**head_config())
    lsknet_head = build_lsknet_head(loss_distill=loss_distill)

    mmrotate_state = mmrotate_head.state_dict()
    lsknet_state = lsknet_head.state_dict()

    assert list(lsknet_state.keys()) == list(mmrotate_state.keys())
    for name, tensor in mmrotate_state.items():
        assert lsknet_state[name].shape == tensor.shape, name
    assert len(list(lsknet_head.buffers())) == len(list(mmrotate_head.buffers()))


def test_head_matches_mmrotate_without_distill():
    torch.manual_seed(0)
    mmrotate_head = MMRotateHead(**head_config())
    mmrotate_head.init_weights()
    lsknet_head = build_lsknet_head()
    lsknet_head.load_state_dict(mmrotate_head.state_dict(), strict=True)
    roi_feats, rois, *targets = sampled_rois_and_targets()

    mmrotate_cls, mmrotate_bbox = mmrotate_head(roi_feats)
    lsknet_cls, lsknet_bbox = lsknet_head(roi_feats)
    mmrotate_losses = mmrotate_head.loss(mmrotate_cls, mmrotate_bbox, rois, *targets)
    lsknet_losses = lsknet_head.loss(lsknet_cls, lsknet_bbox, rois, *targets)

    assert lsknet_cls.shape == (NUM_ROIS, NUM_CLASSES + 1)
    assert lsknet_bbox.shape == (NUM_ROIS, 5)
    assert torch.equal(lsknet_cls, mmrotate_cls)
    assert torch.equal(lsknet_bbox, mmrotate_bbox)
    assert set(lsknet_losses) == {'loss_cls', 'loss_bbox', 'acc'}
    assert set(lsknet_losses) == set(mmrotate_losses)
    for name in ('loss_cls', 'loss_bbox', 'acc'):
        assert torch.equal(lsknet_losses[name], mmrotate_losses[name]), name
    assert lsknet_losses['loss_cls'].item() > 0
    assert lsknet_losses['loss_bbox'].item() > 0


def test_head_distill_loss_matches_loss_module():
    torch.manual_seed(0)
    distill_config = dict(type='KnowledgeDistillationKLDivLoss', T=4, loss_weight=2.0)
    head = build_lsknet_head(loss_distill=distill_config)
    plain_head = build_lsknet_head()
    plain_head.load_state_dict(head.state_dict(), strict=True)
    roi_feats, rois, *targets = sampled_rois_and_targets()
    teacher_cls_score = torch.randn(NUM_ROIS, NUM_CLASSES + 1) * 3

    cls_score, bbox_pred = head(roi_feats)
    losses = head.loss(
        cls_score, bbox_pred, rois, *targets, teacher_cls_score=teacher_cls_score)
    plain_losses = plain_head.loss(cls_score, bbox_pred, rois, *targets)
    expected_distill = KnowledgeDistillationKLDivLoss(T=4, loss_weight=2.0)(
        cls_score, teacher_cls_score)

    assert isinstance(head.loss_distill, KnowledgeDistillationKLDivLoss)
    assert set(losses) == {'loss_cls', 'loss_bbox', 'acc', 'loss_distill'}
    assert losses['loss_distill'].shape == ()
    assert losses['loss_distill'].item() > 0
    assert torch.allclose(losses['loss_distill'], expected_distill, rtol=1e-6, atol=0)
    for name in ('loss_cls', 'loss_bbox', 'acc'):
        assert torch.equal(losses[name], plain_losses[name]), name


def test_head_distill_covers_all_rois():
    # Negatives count too: the mean over all 12 RoIs, not over the 4 positives.
    head = build_lsknet_head(
        loss_distill=dict(type='KnowledgeDistillationKLDivLoss', T=1))
    roi_feats, rois, *targets = sampled_rois_and_targets()
    cls_score, bbox_pred = head(roi_feats)
    teacher_cls_score = torch.randn(NUM_ROIS, NUM_CLASSES + 1)

    losses = head.loss(
        cls_score, bbox_pred, rois, *targets, teacher_cls_score=teacher_cls_score)
    per_roi = head.loss(
        cls_score, bbox_pred, rois, *targets, reduction_override='none',
        teacher_cls_score=teacher_cls_score)['loss_distill']

    assert per_roi.shape == (NUM_ROIS,)
    assert (per_roi[4:] > 0).all()
    assert torch.allclose(losses['loss_distill'], per_roi.mean(), rtol=1e-6, atol=0)


def test_head_distill_gradient_skips_teacher():
    head = build_lsknet_head(
        loss_distill=dict(type='KnowledgeDistillationKLDivLoss', T=2))
    roi_feats, rois, *targets = sampled_rois_and_targets()
    teacher_cls_score = torch.randn(NUM_ROIS, NUM_CLASSES + 1, requires_grad=True)

    cls_score, bbox_pred = head(roi_feats)
    losses = head.loss(
        cls_score, bbox_pred, rois, *targets, teacher_cls_score=teacher_cls_score)
    losses['loss_distill'].backward()

    assert teacher_cls_score.grad is None
    assert head.fc_cls.weight.grad.abs().sum().item() > 0


def test_head_distill_without_teacher_raises():
    head = build_lsknet_head(
        loss_distill=dict(type='KnowledgeDistillationKLDivLoss', T=2))
    roi_feats, rois, *targets = sampled_rois_and_targets()
    cls_score, bbox_pred = head(roi_feats)

    expected_message = 'no teacher_cls_score was passed.*KDOrientedRCNN'
    with pytest.raises(ValueError, match=expected_message):
        head.loss(cls_score, bbox_pred, rois, *targets)


def test_head_teacher_without_distill_raises():
    head = build_lsknet_head()
    roi_feats, rois, *targets = sampled_rois_and_targets()
    cls_score, bbox_pred = head(roi_feats)

    with pytest.raises(ValueError, match='no loss_distill configured'):
        head.loss(
            cls_score, bbox_pred, rois, *targets,
            teacher_cls_score=torch.zeros(NUM_ROIS, NUM_CLASSES + 1))


@pytest.mark.parametrize('teacher_shape', [
    (NUM_ROIS, NUM_CLASSES),
    (NUM_ROIS - 1, NUM_CLASSES + 1),
])
def test_head_mismatched_teacher_shape_raises(teacher_shape):
    head = build_lsknet_head(
        loss_distill=dict(type='KnowledgeDistillationKLDivLoss', T=2))
    roi_feats, rois, *targets = sampled_rois_and_targets()
    cls_score, bbox_pred = head(roi_feats)

    expected_message = (rf'\(num_rois, num_classes \+ 1\) = \(12, 16\), but got '
                        rf'\({teacher_shape[0]}, {teacher_shape[1]}\)')
    with pytest.raises(ValueError, match=expected_message):
        head.loss(
            cls_score, bbox_pred, rois, *targets,
            teacher_cls_score=torch.zeros(teacher_shape))


def test_head_distill_without_cls_branch_raises():
    with pytest.raises(ValueError, match='with_cls=False'):
        build_lsknet_head(
            with_cls=False,
            loss_distill=dict(type='KnowledgeDistillationKLDivLoss', T=2))
