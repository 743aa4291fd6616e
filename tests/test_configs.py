"""Every config under configs/ builds its model and runs on a real DOTA patch (CPU)."""
import glob
import os.path as osp

import numpy as np
import pytest
import torch
from mmcv import Config
from mmcv.parallel import collate
from mmrotate.datasets import build_dataset
from mmrotate.models import build_detector

import lsknet  # noqa: F401 (registers the modules)
from conftest import REPO_ROOT
from lsknet.utils import convert_syncbn_to_bn

CONFIGS = sorted(
    path for path in glob.glob(osp.join(REPO_ROOT, 'configs', '**', '*.py'),
                               recursive=True)
    if '_base_' not in path)


def test_configs_found():
    names = {osp.basename(path) for path in CONFIGS}

    assert {
        'lsk_t_fpn_1x_dota_le90.py', 'lsk_s_fpn_1x_dota_le90.py',
        'lsk_distill_s_t_fpn_1x_dota_le90.py'
    } <= names


def load_for_cpu(path: str, patch_root: str) -> Config:
    """Load a config with its data pointed at the DOTA patch, runnable on the CPU."""
    cfg = Config.fromfile(path)
    convert_syncbn_to_bn(cfg.model)
    cfg.model.backbone.init_cfg = None
    if cfg.model.type == 'KDOrientedRCNN':
        cfg.model.teacher_ckpt = None
        cfg.model.allow_random_teacher = True
    # The configs' own pipelines at half scale, with fewer proposals, to keep
    # the CPU run short.
    for transform in cfg.data.train.pipeline:
        if transform.type == 'RResize':
            transform.img_scale = (512, 512)
    cfg.data.test.pipeline[1].img_scale = (512, 512)
    cfg.model.train_cfg.rpn_proposal.update(nms_pre=500, max_per_img=300)
    cfg.model.test_cfg.rpn.update(nms_pre=500, max_per_img=300)
    for split in ('train', 'test'):
        cfg.data[split].ann_file = osp.join(patch_root, 'labelTxt') + '/'
        cfg.data[split].img_prefix = osp.join(patch_root, 'images') + '/'
    return cfg


def first_batch(dataset_cfg) -> dict:
    dataset = build_dataset(dataset_cfg)
    return collate([dataset[0]], samples_per_gpu=1)


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_config_builds_and_runs_on_dota_patch(path, dota_patch_root):
    cfg = load_for_cpu(path, dota_patch_root)
    torch.manual_seed(0)
    np.random.seed(0)
    model = build_detector(cfg.model)
    model.init_weights()

    train_batch = first_batch(cfg.data.train)
    model.train()
    losses = model.forward_train(
        img=train_batch['img'].data[0],
        img_metas=train_batch['img_metas'].data[0],
        gt_bboxes=train_batch['gt_bboxes'].data[0],
        gt_labels=train_batch['gt_labels'].data[0])
    loss, log_vars = model._parse_losses(losses)
    loss.backward()

    assert torch.isfinite(loss)
    assert {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox'} <= set(log_vars)
    if cfg.model.type == 'KDOrientedRCNN':
        assert log_vars['loss_distill'] > 0

    test_batch = first_batch(cfg.data.test)
    model.eval()
    with torch.no_grad():
        results = model(
            return_loss=False,
            rescale=True,
            img=[test_batch['img'][0].data[0]],
            img_metas=[test_batch['img_metas'][0].data[0]])
    assert len(results) == 1
    assert len(results[0]) == 15
    assert all(boxes.shape[1] == 6 for boxes in results[0])
