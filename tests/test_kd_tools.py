"""The distillation config through tools/train.py and tools/test.py on real patches.

The teacher is the shipped LSKNet-S config with freshly initialised weights saved
as its checkpoint, so the run exercises loading exactly as users do, minus the
hours of teacher training. Images are resized to 256 px to keep CPU steps short.
"""
import math
import os.path as osp

import pytest
import torch

from kd_helpers import KD_CONFIG, STUDENT_CONFIG, TEACHER_CONFIG, build, plain_model_cfg
from tool_runner import run_tool, train_records

SMALL_RUN_OPTIONS = [
    'model.backbone.init_cfg=None',
    'model.train_cfg.rpn_proposal.nms_pre=200',
    'model.train_cfg.rpn_proposal.max_per_img=100',
    'model.train_cfg.rcnn.sampler.num=64',
    'model.test_cfg.rpn.nms_pre=200',
    'model.test_cfg.rpn.max_per_img=100',
    'model.test_cfg.rcnn.score_thr=0.0',
    'data.samples_per_gpu=1',
    'data.workers_per_gpu=0',
    'data.train.pipeline.2.img_scale=(256,256)',
    'data.test.pipeline.1.img_scale=(256,256)',
    'log_config.interval=1',
]


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp('teacher') / 'lsk_s.pth'
    teacher = build(plain_model_cfg(TEACHER_CONFIG), seed=3)
    torch.save({'state_dict': teacher.state_dict(), 'meta': {}}, path)
    return str(path)


@pytest.fixture(scope='module')
def data_options(dota_patch_root):
    labels = osp.join(dota_patch_root, 'labelTxt') + '/'
    images = osp.join(dota_patch_root, 'images') + '/'
    return [
        f'data.train.ann_file={labels}', f'data.train.img_prefix={images}',
        f'data.test.ann_file={labels}', f'data.test.img_prefix={images}'
    ]


@pytest.fixture(scope='module')
def distilled(tmp_path_factory, repo_root, teacher_ckpt, data_options):
    """Two epochs of one iteration each with the shipped distillation config."""
    work_dir = tmp_path_factory.mktemp('kd_work_dir')
    output = run_tool(repo_root, 'tools/train.py', KD_CONFIG, '--work-dir',
                      str(work_dir), '--no-validate', '--seed', '0',
                      '--cfg-options', f'model.teacher_ckpt={teacher_ckpt}',
                      'runner.max_epochs=2', *data_options, *SMALL_RUN_OPTIONS)
    return work_dir, output


def test_distillation_trains_with_finite_losses(distilled, teacher_ckpt):
    work_dir, output = distilled
    records = train_records(work_dir)

    assert [record['epoch'] for record in records] == [1, 2]
    for record in records:
        for key in ('loss_cls', 'loss_bbox', 'loss_distill', 'loss'):
            assert math.isfinite(record[key]), (key, record)
    assert records[0]['loss_distill'] > 0
    assert f'loaded teacher weights from {teacher_ckpt}' in output


def test_distillation_checkpoint_holds_student_only(distilled):
    work_dir, _ = distilled
    checkpoint = torch.load(work_dir / 'latest.pth', map_location='cpu')
    plain_keys = set(build(plain_model_cfg(STUDENT_CONFIG)).state_dict())

    assert set(checkpoint['state_dict']) == plain_keys
    assert checkpoint['meta']['epoch'] == 2


def test_distillation_checkpoint_tests_with_plain_config(distilled, repo_root,
                                                          data_options):
    work_dir, _ = distilled
    output = run_tool(repo_root, 'tools/test.py', STUDENT_CONFIG,
                      str(work_dir / 'latest.pth'), '--eval', 'mAP',
                      '--cfg-options', *data_options, *SMALL_RUN_OPTIONS)

    assert '| ship ' in output or '| ship' in output
    assert 'mAP' in output


def test_resume_continues_distillation(distilled, repo_root, teacher_ckpt,
                                       data_options, tmp_path):
    work_dir, _ = distilled
    resumed_dir = tmp_path / 'resumed'
    run_tool(repo_root, 'tools/train.py', KD_CONFIG, '--work-dir',
             str(resumed_dir), '--no-validate', '--seed', '0',
             '--resume-from', str(work_dir / 'epoch_1.pth'), '--cfg-options',
             f'model.teacher_ckpt={teacher_ckpt}', 'runner.max_epochs=2',
             *data_options, *SMALL_RUN_OPTIONS)

    records = train_records(resumed_dir)
    assert [record['epoch'] for record in records] == [2]
    assert math.isfinite(records[0]['loss_distill'])
    checkpoint = torch.load(resumed_dir / 'latest.pth', map_location='cpu')
    assert checkpoint['meta']['epoch'] == 2
    assert checkpoint['meta']['iter'] == 2
