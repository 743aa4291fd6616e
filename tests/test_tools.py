"""Tests of the tool support code: SyncBN conversion, the DOTA split entry point,
argument errors of tools/train.py and tools/test.py, and CPU process groups."""
import argparse
import importlib.util
import json
import logging
import os.path as osp
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
from mmcv import Config
from mmcv.parallel import DataContainer
from torch import nn

from lsknet.apis import (CompatibleMMDistributedDataParallel, init_distributed,
                         train_detector)
from lsknet.utils import convert_syncbn_for_run, convert_syncbn_to_bn

SPLIT_SCRIPT = osp.join('tools', 'data', 'dota', 'split_dota.py')
PADDING_VALUE_BGR = [104, 116, 124]


def load_script(repo_root, relative_path, module_name):
    spec = importlib.util.spec_from_file_location(
        module_name, osp.join(repo_root, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nested_norm_config():
    return dict(
        model=dict(
            backbone=dict(norm_cfg=dict(type='SyncBN', requires_grad=True)),
            neck=dict(norm_cfg=dict(type='GN', num_groups=32)),
            heads=[
                dict(norm_cfg=dict(type='SyncBN')),
                dict(norm_cfg=dict(type='BN')),
            ],
            extra=(dict(layers=[dict(type='SyncBN', eps=1e-3)]), ),
        ))


# SyncBN conversion


def test_convert_syncbn_counts_nested_entries():
    cfg = nested_norm_config()

    assert convert_syncbn_to_bn(cfg) == 3

    model = cfg['model']
    assert model['backbone']['norm_cfg'] == dict(type='BN', requires_grad=True)
    assert model['heads'][0]['norm_cfg'] == dict(type='BN')
    assert model['extra'][0]['layers'][0] == dict(type='BN', eps=1e-3)


def test_convert_syncbn_leaves_other_norms():
    cfg = nested_norm_config()
    convert_syncbn_to_bn(cfg)

    assert cfg['model']['neck']['norm_cfg'] == dict(type='GN', num_groups=32)
    assert cfg['model']['heads'][1]['norm_cfg'] == dict(type='BN')


def test_convert_syncbn_is_idempotent():
    cfg = nested_norm_config()
    convert_syncbn_to_bn(cfg)
    converted = json.dumps(cfg, sort_keys=True)

    assert convert_syncbn_to_bn(cfg) == 0
    assert json.dumps(cfg, sort_keys=True) == converted


def test_convert_syncbn_in_lsk_t_config(repo_root):
    cfg = Config.fromfile(
        osp.join(repo_root, 'configs/lsknet/lsk_t_fpn_1x_dota_le90.py'))

    assert convert_syncbn_to_bn(cfg.model) == 1
    assert cfg.model.backbone.norm_cfg.type == 'BN'
    assert cfg.model.backbone.norm_cfg.requires_grad is True


@pytest.mark.parametrize('distributed, device, expected_reason', [
    (False, 'cpu', 'needs an initialised process group'),
    (False, 'cuda', 'needs an initialised process group'),
    (True, 'cpu', 'has no CPU kernel'),
])
def test_convert_syncbn_for_run_warns_once(caplog, distributed, device,
                                           expected_reason):
    cfg = nested_norm_config()
    logger = logging.getLogger('test_convert_syncbn_for_run')

    with caplog.at_level(logging.WARNING, logger=logger.name):
        num_converted = convert_syncbn_for_run(cfg['model'], distributed,
                                               device, logger)

    assert num_converted == 3
    assert len(caplog.records) == 1
    assert expected_reason in caplog.records[0].getMessage()
    assert 'converted to BN in 3 norm config(s)' in caplog.records[0].getMessage()


def test_convert_syncbn_for_run_keeps_distributed_cuda(caplog):
    cfg = nested_norm_config()
    logger = logging.getLogger('test_convert_syncbn_for_run')

    with caplog.at_level(logging.WARNING, logger=logger.name):
        num_converted = convert_syncbn_for_run(cfg['model'], True, 'cuda',
                                               logger)

    assert num_converted == 0
    assert cfg['model']['backbone']['norm_cfg']['type'] == 'SyncBN'
    assert caplog.records == []


def test_convert_syncbn_for_run_silent_without_syncbn(caplog):
    model_cfg = dict(backbone=dict(norm_cfg=dict(type='BN')))
    logger = logging.getLogger('test_convert_syncbn_for_run')

    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert convert_syncbn_for_run(model_cfg, False, 'cpu', logger) == 0
    assert caplog.records == []


# DOTA split entry point


def run_split(repo_root, *args):
    return subprocess.run([sys.executable, SPLIT_SCRIPT, *args],
                          cwd=repo_root,
                          capture_output=True,
                          text=True,
                          timeout=300)


def split_sample(repo_root, dota_sample_root, save_dir, *extra_args):
    completed = run_split(repo_root, '--config', 'ss_trainval', '--img-dirs',
                          osp.join(dota_sample_root, 'images'), '--ann-dirs',
                          osp.join(dota_sample_root, 'labelTxt'), '--save-dir',
                          str(save_dir), '--nproc', '1', *extra_args)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


def read_annfiles(save_dir, image_id):
    lines = []
    for annfile in sorted((save_dir / 'annfiles').glob(f'{image_id}__*.txt')):
        lines += annfile.read_text().splitlines()
    return lines


def test_split_512_patches_carry_real_labels(repo_root, dota_sample_root,
                                            tmp_path):
    save_dir = tmp_path / 'trainval'
    completed = split_sample(repo_root, dota_sample_root, save_dir, '--sizes',
                             '512', '--gaps', '100')

    # Windows of 512 px every 412 px: P0706 (1111 x 1182) gets 3 x 3,
    # P1888 (712 x 557) gets 2 x 2.
    patches = sorted(p.stem for p in (save_dir / 'images').glob('*.png'))
    assert len(patches) == 13
    assert sum(p.startswith('P0706__512__') for p in patches) == 9
    assert sum(p.startswith('P1888__512__') for p in patches) == 4
    assert 'P0706__512__599___670' in patches  # last window flush with the corner
    assert sorted(p.stem for p in (save_dir / 'annfiles').glob('*.txt')) == patches
    assert 'Wrote 13 patches' in completed.stdout

    ship_lines = [line for line in read_annfiles(save_dir, 'P0706')
                  if line.split()[8] == 'ship']
    vehicle_lines = [line for line in read_annfiles(save_dir, 'P1888')
                     if line.split()[8] in ('small-vehicle', 'large-vehicle')]
    # Overlapping windows repeat objects, so there are at least as many lines
    # as objects in the full images (531 ships, 64 vehicles).
    assert len(ship_lines) >= 531
    assert len(vehicle_lines) >= 64
    for line in ship_lines + vehicle_lines:
        fields = line.split()
        assert len(fields) == 10, line
        corners = np.array(fields[:8], dtype=np.float32)
        # Objects cut by a window edge keep corners outside the patch.
        assert corners.min() >= -512, line
        assert corners.max() <= 2 * 512, line
        assert fields[9] in ('0', '1', '2'), line

    patch = cv2.imread(str(save_dir / 'images' / f'{patches[0]}.png'))
    assert patch.shape == (512, 512, 3)


def test_split_default_size_pads_small_image(repo_root, dota_sample_root,
                                            tmp_path):
    save_dir = tmp_path / 'trainval'
    split_sample(repo_root, dota_sample_root, save_dir)

    # 1024 px windows every 824 px: P0706 gets 2 x 2, P1888 one padded window.
    patches = sorted(p.stem for p in (save_dir / 'images').glob('*.png'))
    assert patches == [
        'P0706__1024__0___0', 'P0706__1024__0___158', 'P0706__1024__87___0',
        'P0706__1024__87___158', 'P1888__1024__0___0'
    ]
    padded = cv2.imread(str(save_dir / 'images' / 'P1888__1024__0___0.png'))
    assert padded.shape == (1024, 1024, 3)
    assert padded[1023, 1023].tolist() == PADDING_VALUE_BGR
    assert padded[600, 100].tolist() == PADDING_VALUE_BGR  # below the 557 rows
    with open(save_dir / 'split_settings.json') as settings_file:
        assert json.load(settings_file)['gaps'] == [200]


def test_split_reports_missing_source_folders(repo_root, tmp_path):
    src_root = tmp_path / 'DOTA'
    (src_root / 'train' / 'images').mkdir(parents=True)

    completed = run_split(repo_root, '--config', 'ss_trainval', '--src-root',
                          str(src_root), '--save-dir', str(tmp_path / 'out'))

    assert completed.returncode != 0
    assert 'DOTA source folder not found' in completed.stderr
    assert str(src_root / 'train' / 'labelTxt') in completed.stderr
    assert str(src_root / 'val' / 'images') in completed.stderr
    assert f"{src_root / 'train' / 'images'}," not in completed.stderr
    assert 'tools/data/dota/README.md' in completed.stderr
    assert not (tmp_path / 'out').exists()


def test_split_rejects_existing_output(repo_root, dota_sample_root, tmp_path):
    completed = run_split(repo_root, '--config', 'ss_test', '--img-dirs',
                          osp.join(dota_sample_root, 'images'), '--save-dir',
                          str(tmp_path))

    assert completed.returncode != 0
    assert f'output folder already exists: {tmp_path}' in completed.stderr


def test_split_requires_ann_dirs_for_labelled_config(repo_root,
                                                    dota_sample_root,
                                                    tmp_path):
    completed = run_split(repo_root, '--config', 'ss_trainval', '--img-dirs',
                          osp.join(dota_sample_root, 'images'), '--save-dir',
                          str(tmp_path / 'out'))

    assert completed.returncode != 0
    assert '--img-dirs needs --ann-dirs' in completed.stderr


def test_split_reports_missing_shapely(repo_root, monkeypatch):
    split_dota = load_script(repo_root, SPLIT_SCRIPT, 'split_dota_under_test')
    real_find_spec = importlib.util.find_spec

    def find_spec_without_shapely(name, *args, **kwargs):
        if name == 'shapely':
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, 'find_spec', find_spec_without_shapely)
    with pytest.raises(split_dota.SplitError, match='pip install shapely'):
        split_dota.find_splitter()


def test_split_src_root_replaces_data_dota(repo_root):
    split_dota = load_script(repo_root, SPLIT_SCRIPT, 'split_dota_under_test')
    args = split_dota.parse_args(
        ['--config', 'ms_trainval', '--src-root', '/datasets/DOTA'])

    settings = split_dota.apply_overrides(
        split_dota.load_split_config(args.config), args)

    assert settings['img_dirs'] == [
        '/datasets/DOTA/train/images', '/datasets/DOTA/val/images'
    ]
    assert settings['ann_dirs'] == [
        '/datasets/DOTA/train/labelTxt', '/datasets/DOTA/val/labelTxt'
    ]
    assert settings['save_dir'] == 'data/split_ms_dota/trainval/'


@pytest.mark.parametrize('name, sizes, gaps, rates', [
    ('ss_trainval', [1024], [200], [1.0]),
    ('ss_val', [1024], [200], [1.0]),
    ('ss_test', [1024], [200], [1.0]),
    ('ms_trainval', [1024], [500], [0.5, 1.0, 1.5]),
    ('ms_test', [1024], [500], [0.5, 1.0, 1.5]),
])
def test_split_configs_windows(repo_root, name, sizes, gaps, rates):
    split_dota = load_script(repo_root, SPLIT_SCRIPT, 'split_dota_under_test')
    settings = split_dota.load_split_config(name)

    assert (settings['sizes'], settings['gaps'], settings['rates']) == (sizes,
                                                                       gaps,
                                                                       rates)
    assert settings['padding_value'] == PADDING_VALUE_BGR
    assert all(path.startswith('data/DOTA/') for path in settings['img_dirs'])
    assert (settings['ann_dirs'] is None) == name.endswith('_test')


def test_ss_split_configs_match_dataset_config(repo_root):
    split_dota = load_script(repo_root, SPLIT_SCRIPT, 'split_dota_under_test')
    data = Config.fromfile(
        osp.join(repo_root, 'configs/_base_/datasets/dotav1.py')).data

    for name, dataset_cfg in (('ss_trainval', data.train), ('ss_val', data.val),
                              ('ss_test', data.test)):
        save_dir = split_dota.load_split_config(name)['save_dir']
        assert dataset_cfg.img_prefix == osp.join(save_dir, 'images/'), name


# Argument errors of the tools


def test_train_rejects_missing_config(repo_root, capsys):
    train_tool = load_script(repo_root, 'tools/train.py', 'train_under_test')

    with pytest.raises(SystemExit) as exit_info:
        train_tool.parse_args(['configs/no_such_config.py'])

    assert exit_info.value.code == 2
    assert 'config file not found: configs/no_such_config.py' in (
        capsys.readouterr().err)


def test_test_rejects_missing_checkpoint(repo_root, capsys):
    test_tool = load_script(repo_root, 'tools/test.py', 'test_under_test')
    config = osp.join(repo_root, 'configs/lsknet/lsk_t_fpn_1x_dota_le90.py')

    with pytest.raises(SystemExit) as exit_info:
        test_tool.parse_args([config, 'work_dirs/missing.pth', '--eval', 'mAP'])

    assert exit_info.value.code == 2
    assert 'checkpoint file not found: work_dirs/missing.pth' in (
        capsys.readouterr().err)


def test_test_requires_an_action(repo_root, capsys):
    test_tool = load_script(repo_root, 'tools/test.py', 'test_under_test')
    config = osp.join(repo_root, 'configs/lsknet/lsk_t_fpn_1x_dota_le90.py')

    with pytest.raises(SystemExit):
        test_tool.parse_args([config, 'work_dirs/missing.pth'])

    assert 'nothing to do' in capsys.readouterr().err


def dota_patch_dataset(dota_patch_root, ann_dir):
    from mmrotate.datasets import DOTADataset
    return DOTADataset(
        ann_file=osp.join(dota_patch_root, ann_dir),
        img_prefix=osp.join(dota_patch_root, 'images'),
        pipeline=[],
        version='le90',
        test_mode=True)


def test_test_rejects_eval_without_labels(repo_root, dota_patch_root):
    test_tool = load_script(repo_root, 'tools/test.py', 'test_under_test')
    args = argparse.Namespace(eval=['mAP'], format_only=False)
    unlabelled = dota_patch_dataset(dota_patch_root, 'images')
    labelled = dota_patch_dataset(dota_patch_root, 'labelTxt')

    with pytest.raises(SystemExit, match='contains no .txt annotation files'):
        test_tool.check_dota_options(unlabelled, args, {})
    test_tool.check_dota_options(labelled, args, {})


def test_test_checks_submission_dir(repo_root, dota_patch_root, tmp_path):
    test_tool = load_script(repo_root, 'tools/test.py', 'test_under_test')
    args = argparse.Namespace(eval=None, format_only=True)
    dataset = dota_patch_dataset(dota_patch_root, 'images')

    with pytest.raises(SystemExit, match='needs --eval-options submission_dir=DIR'):
        test_tool.check_dota_options(dataset, args, {})
    with pytest.raises(SystemExit, match='submission_dir already exists'):
        test_tool.check_dota_options(dataset, args,
                                     {'submission_dir': str(tmp_path)})
    test_tool.check_dota_options(dataset, args,
                                 {'submission_dir': str(tmp_path / 'new')})


# CPU process groups


cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason='checks the path taken without CUDA')


@cpu_only
def test_init_distributed_rejects_mpi_without_cuda():
    with pytest.raises(NotImplementedError, match='--launcher mpi needs CUDA'):
        init_distributed('mpi')


def test_init_distributed_slurm_needs_srun_variables(monkeypatch):
    for name in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'):
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(RuntimeError, match='SLURM_PROCID, SLURM_NTASKS'):
        init_distributed('slurm')


@cpu_only
def test_init_distributed_names_missing_torchrun_variables(monkeypatch):
    for name in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(RuntimeError,
                       match='RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT'):
        init_distributed('pytorch')


def test_train_detector_rejects_iter_runner_on_cpu_group():
    cfg = Config(
        dict(
            runner=dict(type='IterBasedRunner', max_iters=1),
            data=dict(train=dict(), val=dict(), test=dict()),
            log_level='INFO',
            device='cpu'))

    with pytest.raises(NotImplementedError, match='Use EpochBasedRunner'):
        train_detector(nn.Linear(1, 1), [], cfg, distributed=True)


class RecordingDetector(nn.Module):
    """Stand-in for a detector that records the input types it receives."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, img, img_metas):
        return [self.linear(img).sum(), img_metas]

    def train_step(self, data_batch, optimizer):
        loss = self.linear(data_batch['img']).sum()
        return dict(loss=loss, img_metas=data_batch['img_metas'])


def free_local_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@cpu_only
def test_cpu_ddp_unwraps_data_containers(monkeypatch):
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_local_port()))
    img = DataContainer([torch.ones(1, 2)], stack=True)
    img_metas = DataContainer([[dict(filename='P0706.png')]], cpu_only=True)

    init_distributed('pytorch', backend='nccl')
    try:
        assert dist.get_backend() == 'gloo'
        model = CompatibleMMDistributedDataParallel(RecordingDetector())
        outputs = model.train_step(dict(img=img, img_metas=img_metas), None)
        with torch.no_grad():
            forward_loss, forward_metas = model(img=img, img_metas=img_metas)
    finally:
        dist.destroy_process_group()

    assert isinstance(outputs['loss'], torch.Tensor)
    assert outputs['img_metas'] == [dict(filename='P0706.png')]
    assert isinstance(forward_loss, torch.Tensor)
    assert forward_metas == [dict(filename='P0706.png')]
