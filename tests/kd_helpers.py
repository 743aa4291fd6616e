"""Builders shared by the distillation tests: configs, a real DOTA batch, models."""
import copy
import os.path as osp

import torch
from mmcv import Config, ConfigDict
from mmcv.parallel import collate
from mmrotate.datasets import build_dataset
from mmrotate.models import build_detector

from conftest import REPO_ROOT

STUDENT_CONFIG = osp.join(REPO_ROOT, 'configs/lsknet/lsk_t_fpn_1x_dota_le90.py')
TEACHER_CONFIG = osp.join(REPO_ROOT, 'configs/lsknet/lsk_s_fpn_1x_dota_le90.py')
KD_CONFIG = osp.join(REPO_ROOT,
                     'configs/lsknet/lsk_distill_s_t_fpn_1x_dota_le90.py')
# Small images and fewer proposals keep a CPU training step near one second.
IMAGE_SIZE = 256


def cpu_config(path: str) -> Config:
    """Load a config, ready for the CPU: BN, no pretrained weights, small sizes."""
    cfg = Config.fromfile(path)
    cfg.model.backbone.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.backbone.init_cfg = None
    proposal_cfg = ConfigDict(
        nms_pre=300,
        max_per_img=200,
        nms=dict(type='nms', iou_threshold=0.8),
        min_bbox_size=0)
    cfg.model.train_cfg.rpn_proposal = copy.deepcopy(proposal_cfg)
    cfg.model.test_cfg.rpn = copy.deepcopy(proposal_cfg)
    cfg.model.train_cfg.rcnn.sampler.num = 128
    return cfg


def plain_model_cfg(path: str = STUDENT_CONFIG) -> dict:
    """Return the ``model`` section of a plain detector config, CPU-ready."""
    return cpu_config(path).model


def kd_model_cfg(teacher_config, teacher_ckpt=None, **overrides) -> dict:
    """Return the distillation config's model with the given teacher."""
    model = cpu_config(KD_CONFIG).model
    model.teacher_config = teacher_config
    model.teacher_ckpt = teacher_ckpt
    model.update(overrides)
    return model


def build(model_cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    model = build_detector(copy.deepcopy(model_cfg))
    model.init_weights()
    return model


def dota_patch_batch(patch_root: str) -> dict:
    """Load the real DOTA patch as one training batch (no random augmentation)."""
    img_norm_cfg = dict(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
    dataset = build_dataset(
        dict(
            type='DOTADataset',
            ann_file=osp.join(patch_root, 'labelTxt') + '/',
            img_prefix=osp.join(patch_root, 'images') + '/',
            version='le90',
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=True),
                dict(type='RResize', img_scale=(IMAGE_SIZE, IMAGE_SIZE)),
                dict(type='RRandomFlip', flip_ratio=0.0, version='le90'),
                dict(type='Normalize', **img_norm_cfg),
                dict(type='Pad', size_divisor=32),
                dict(type='DefaultFormatBundle'),
                dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels'])
            ]))
    batch = collate([dataset[0]], samples_per_gpu=1)
    return dict(
        img=batch['img'].data[0],
        img_metas=batch['img_metas'].data[0],
        gt_bboxes=batch['gt_bboxes'].data[0],
        gt_labels=batch['gt_labels'].data[0])
