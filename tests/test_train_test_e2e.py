"""End to end on the real DOTA sample: split, train, evaluate, write a submission.

Runs tools/data/dota/split_dota.py, tools/train.py and tools/test.py as
subprocesses on the CPU, so it checks what a user runs. The two full images are
split into 512 px patches, resized to 256 px, and the model trains for three
iterations, so the accuracy is meaningless and only the plumbing is checked.
"""
import json
import math
import os.path as osp
import re

import pytest
import torch

from tool_runner import run_tool

CONFIG = 'configs/lsknet/lsk_t_fpn_1x_dota_le90.py'
NUM_TRAIN_ITERS = 3
DOTA_CLASSES = ('plane', 'baseball-diamond', 'bridge', 'ground-track-field',
                'small-vehicle', 'large-vehicle', 'ship', 'tennis-court',
                'basketball-court', 'storage-tank', 'soccer-ball-field',
                'roundabout', 'harbor', 'swimming-pool', 'helicopter')
SYNCBN_WARNING = 'SyncBN was converted to BN'

# Small inputs and fewer proposals and samples keep a CPU iteration to seconds
# (3 to 10 s measured on 2 busy cores).
SPEED_OPTIONS = [
    'model.train_cfg.rpn_proposal.nms_pre=200',
    'model.train_cfg.rpn_proposal.max_per_img=100',
    'model.train_cfg.rcnn.sampler.num=64',
    'model.test_cfg.rpn.nms_pre=200',
    'model.test_cfg.rpn.max_per_img=100',
    'model.test_cfg.rcnn.max_per_img=100',
    # A barely trained model scores low, so keep every detection.
    'model.test_cfg.rcnn.score_thr=0.0',
    'data.samples_per_gpu=1',
    'data.workers_per_gpu=0',
    'data.train.pipeline.2.img_scale=(256,256)',
    'data.test.pipeline.1.img_scale=(256,256)',
]


@pytest.fixture(scope='module')
def split_root(tmp_path_factory, repo_root, dota_sample_root):
    save_dir = tmp_path_factory.mktemp('split') / 'trainval'
    run_tool(repo_root, 'tools/data/dota/split_dota.py', '--config',
             'ss_trainval',
             '--img-dirs', osp.join(dota_sample_root, 'images'), '--ann-dirs',
             osp.join(dota_sample_root, 'labelTxt'), '--save-dir',
             str(save_dir), '--sizes', '512', '--gaps', '100', '--nproc', '1')
    return save_dir


@pytest.fixture(scope='module')
def trained(tmp_path_factory, repo_root, split_root):
    """Train for a few iterations; return the work dir and the tool's output."""
    work_dir = tmp_path_factory.mktemp('work_dir')
    output = run_tool(
        repo_root, 'tools/train.py', CONFIG, '--work-dir', str(work_dir),
        '--no-validate', '--seed', '0', '--cfg-options',
        'model.backbone.init_cfg=None',
        f'data.train.ann_file={split_root}/annfiles/',
        f'data.train.img_prefix={split_root}/images/',
        'runner.type=IterBasedRunner', 'runner.max_epochs=None',
        f'runner.max_iters={NUM_TRAIN_ITERS}',
        f'checkpoint_config.interval={NUM_TRAIN_ITERS}',
        'log_config.interval=1', *SPEED_OPTIONS)
    return work_dir, output


def test_train_logs_finite_losses(trained):
    work_dir, _ = trained
    json_logs = list(work_dir.glob('*.log.json'))
    assert len(json_logs) == 1
    with open(json_logs[0]) as log_file:
        records = [json.loads(line) for line in log_file]
    train_records = [r for r in records if r.get('mode') == 'train']

    assert [r['iter'] for r in train_records] == list(
        range(1, NUM_TRAIN_ITERS + 1))
    for record in train_records:
        for key in ('loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls',
                    'loss_bbox'):
            assert math.isfinite(record[key]), (key, record)


def test_train_writes_checkpoint_with_classes(trained):
    work_dir, _ = trained
    checkpoint_path = work_dir / f'iter_{NUM_TRAIN_ITERS}.pth'
    assert checkpoint_path.exists()
    assert (work_dir / 'latest.pth').exists()

    checkpoint = torch.load(checkpoint_path, map_location='cpu')
    assert tuple(checkpoint['meta']['CLASSES']) == DOTA_CLASSES
    norm_keys = [k for k in checkpoint['state_dict'] if 'running_mean' in k]
    assert norm_keys, 'the converted BN layers should store running statistics'


def test_train_warns_about_syncbn_once(trained):
    work_dir, output = trained
    (text_log, ) = work_dir.glob('*[0-9].log')

    assert output.count(SYNCBN_WARNING) == 1
    assert text_log.read_text().count(SYNCBN_WARNING) == 1


def test_test_prints_per_class_ap_and_map(trained, repo_root, split_root):
    work_dir, _ = trained
    output = run_tool(
        repo_root, 'tools/test.py', CONFIG, str(work_dir / 'latest.pth'),
        '--eval', 'mAP', '--eval-options', 'nproc=1', '--work-dir',
        str(work_dir / 'eval'), '--cfg-options',
        f'data.test.ann_file={split_root}/annfiles/',
        f'data.test.img_prefix={split_root}/images/', *SPEED_OPTIONS)

    for class_name in DOTA_CLASSES:
        assert re.search(rf'^\| {re.escape(class_name)} +\|', output,
                         re.MULTILINE), class_name
    ship_row = re.search(r'^\| ship +\| +(\d+) +\| +(\d+) +\|', output,
                         re.MULTILINE)
    assert int(ship_row.group(1)) > 500, 'ground-truth ships of P0706'
    map_value = re.search(r"'mAP': ([0-9.e-]+)", output)
    assert map_value is not None, output[-2000:]
    assert 0.0 <= float(map_value.group(1)) <= 1.0
    assert len(list((work_dir / 'eval').glob('eval_*.json'))) == 1


def test_test_writes_task1_files_for_full_images(trained, repo_root,
                                                 split_root, tmp_path):
    work_dir, _ = trained
    submission_dir = tmp_path / 'Task1_results'
    # An image folder as ann_file loads the patches unlabelled, like DOTA's test split.
    run_tool(repo_root, 'tools/test.py', CONFIG, str(work_dir / 'latest.pth'),
             '--format-only', '--eval-options',
             f'submission_dir={submission_dir}', 'nproc=1', '--cfg-options',
             f'data.test.ann_file={split_root}/images/',
             f'data.test.img_prefix={split_root}/images/', *SPEED_OPTIONS)

    image_ids = set()
    for class_name in DOTA_CLASSES:
        task1_file = submission_dir / f'Task1_{class_name}.txt'
        assert task1_file.exists(), task1_file
        for line in task1_file.read_text().splitlines():
            fields = line.split()
            assert len(fields) == 10, line  # image id, score, 4 corner points
            image_ids.add(fields[0])
    # Patches such as P0706__512__0___412 are merged back into their full images.
    assert image_ids == {'P0706', 'P1888'}
    assert (submission_dir / 'Task1_results.zip').exists()
