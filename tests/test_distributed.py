"""Multi-process distillation on the CPU (gloo): torchrun, SLURM and crash recovery.

Each test trains the shipped distillation config on the real DOTA patch at 256 px,
with a randomly initialised LSKNet-T teacher, through the shell scripts users run.
``probe_hooks.StateProbeHook`` records what every rank holds.
"""
import json
import os
import os.path as osp
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from kd_helpers import KD_CONFIG, STUDENT_CONFIG
from tool_runner import run_tool, train_records

TESTS_DIR = osp.dirname(osp.abspath(__file__))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def write_config(tmp_path, patch_root, probe_dir, max_epochs=2, repeat=1):
    """Write a small distillation config that inherits the shipped one."""
    images = osp.join(patch_root, 'images') + '/'
    labels = osp.join(patch_root, 'labelTxt') + '/'
    config = tmp_path / 'kd_small.py'
    config.write_text(f'''
_base_ = ['{KD_CONFIG}']
custom_imports = dict(imports=['lsknet', 'probe_hooks'], allow_failed_imports=False)
custom_hooks = [dict(type='StateProbeHook', out_dir='{probe_dir}')]
model = dict(
    teacher_config='{STUDENT_CONFIG}',
    teacher_ckpt=None,
    allow_random_teacher=True,
    backbone=dict(init_cfg=None),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=200, max_per_img=100),
        rcnn=dict(sampler=dict(num=64))))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RResize', img_scale=(256, 256)),
    dict(type='RRandomFlip', flip_ratio=0.0, version='le90'),
    dict(type='Normalize', mean=[123.675, 116.28, 103.53],
         std=[58.395, 57.12, 57.375], to_rgb=True),
    dict(type='Pad', size_divisor=32),
    dict(type='DefaultFormatBundle'),
    dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels'])
]
data = dict(
    samples_per_gpu=1,
    workers_per_gpu=0,
    train=dict(
        _delete_=True,
        type='RepeatDataset',
        times={repeat},
        dataset=dict(type='DOTADataset', ann_file='{labels}',
                     img_prefix='{images}', version='le90',
                     pipeline=train_pipeline)))
runner = dict(max_epochs={max_epochs})
log_config = dict(interval=1)
''')
    return str(config)


def script_env(**extra):
    env = dict(os.environ)
    env['PYTHON'] = sys.executable
    env['PYTHONPATH'] = TESTS_DIR + os.pathsep + env.get('PYTHONPATH', '')
    env.update(extra)
    return env


def assert_same_state(first, second):
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.fixture(scope='module')
def torchrun_run(tmp_path_factory, repo_root, dota_patch_root):
    tmp_path = tmp_path_factory.mktemp('torchrun')
    probe_dir = tmp_path / 'probe'
    probe_dir.mkdir()
    work_dir = tmp_path / 'work_dir'
    config = write_config(tmp_path, dota_patch_root, probe_dir)
    run_tool(
        repo_root,
        'bash', 'tools/dist_train.sh', config, '2', '--work-dir',
        str(work_dir), '--no-validate', '--seed', '0',
        env=script_env(PORT=str(free_port())))
    return work_dir, probe_dir


def test_torchrun_teacher_outside_ddp(torchrun_run):
    _, probe_dir = torchrun_run
    for rank in (0, 1):
        facts = json.loads((probe_dir / f'facts_rank{rank}.json').read_text())
        assert 'DistributedDataParallel' in facts['wrapper']
        assert facts['find_unused_parameters'] is False
        assert facts['teacher_parameters'] > 0
        assert facts['teacher_parameters_in_wrapper'] == 0


def test_torchrun_student_identical_on_ranks(torchrun_run):
    _, probe_dir = torchrun_run
    rank0 = torch.load(probe_dir / 'end_rank0.pth')
    rank1 = torch.load(probe_dir / 'end_rank1.pth')
    start = torch.load(probe_dir / 'start_rank0.pth')

    assert_same_state(rank0['state_dict'], rank1['state_dict'])
    changed = [
        name for name, value in rank0['state_dict'].items()
        if not torch.equal(value, start['state_dict'][name])
    ]
    assert changed, 'training should change the student'


def test_torchrun_only_rank0_writes(torchrun_run):
    work_dir, probe_dir = torchrun_run

    assert torch.load(probe_dir / 'end_rank0.pth')['wrote_checkpoint']
    assert not torch.load(probe_dir / 'end_rank1.pth')['wrote_checkpoint']
    assert len(list(work_dir.glob('*.log.json'))) == 1
    records = train_records(work_dir)
    assert [(r['epoch'], r['iter']) for r in records] == [(1, 1), (2, 1)]
    assert (work_dir / 'epoch_2.pth').exists()


FAKE_SRUN = '''#!{python}
"""Stand-in for srun: records its arguments and runs each task locally."""
import json, os, subprocess, sys

args = sys.argv[1:]
with open(os.environ['FAKE_SRUN_LOG'], 'w') as log:
    json.dump(args, log)
index, ntasks = 0, 1
while args[index].startswith('-'):
    if args[index] in ('-p', '--partition'):
        index += 1
    elif args[index].startswith('--ntasks='):
        ntasks = int(args[index].split('=')[1])
    index += 1
tasks = [
    subprocess.Popen(args[index:], env=dict(
        os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
        SLURM_NTASKS=str(ntasks), SLURM_NODELIST='127.0.0.1'))
    for rank in range(ntasks)
]
sys.exit(max(task.wait() for task in tasks))
'''


@pytest.fixture(scope='module')
def fake_srun_bin(tmp_path_factory):
    bin_dir = tmp_path_factory.mktemp('bin')
    srun = bin_dir / 'srun'
    srun.write_text(FAKE_SRUN.format(python=sys.executable))
    srun.chmod(0o755)
    return bin_dir


def test_slurm_scripts_build_srun_commands_and_run(tmp_path, repo_root,
                                                   dota_patch_root,
                                                   fake_srun_bin):
    probe_dir = tmp_path / 'probe'
    probe_dir.mkdir()
    work_dir = tmp_path / 'work_dir'
    config = write_config(tmp_path, dota_patch_root, probe_dir, max_epochs=1)
    srun_log = tmp_path / 'srun_args.json'
    env = script_env(
        PATH=f'{fake_srun_bin}{os.pathsep}{os.environ["PATH"]}',
        FAKE_SRUN_LOG=str(srun_log),
        MASTER_PORT=str(free_port()),
        GPUS='2',
        GPUS_PER_NODE='2',
        CPUS_PER_TASK='3',
        SRUN_ARGS='--quotatype=auto --time=10')

    run_tool(
        repo_root,
        'bash', 'tools/slurm_train.sh', 'gpu_partition', 'lsk_kd', config,
        str(work_dir), '--no-validate', '--seed', '0',
        env=env)

    srun_args = json.loads(srun_log.read_text())
    assert srun_args[:2] == ['-p', 'gpu_partition']
    for expected in ('--job-name=lsk_kd', '--gres=gpu:2', '--ntasks=2',
                     '--ntasks-per-node=2', '--cpus-per-task=3',
                     '--quotatype=auto', '--time=10', '--launcher=slurm',
                     f'--work-dir={work_dir}'):
        assert expected in srun_args
    rank0 = torch.load(probe_dir / 'end_rank0.pth')
    rank1 = torch.load(probe_dir / 'end_rank1.pth')
    assert_same_state(rank0['state_dict'], rank1['state_dict'])
    assert (work_dir / 'epoch_1.pth').exists()

    env.update(GPUS='1', GPUS_PER_NODE='1', MASTER_PORT=str(free_port()))
    output = run_tool(
        repo_root,
        'bash', 'tools/slurm_test.sh', 'gpu_partition', 'lsk_test',
        STUDENT_CONFIG,
        str(work_dir / 'epoch_1.pth'), '--format-only', '--eval-options',
        f'submission_dir={tmp_path / "submission"}', '--cfg-options',
        f'data.test.ann_file={dota_patch_root}/images/',
        f'data.test.img_prefix={dota_patch_root}/images/',
        'data.test.pipeline.1.img_scale=(256,256)',
        'model.test_cfg.rcnn.score_thr=0.0',
        env=env)
    srun_args = json.loads(srun_log.read_text())
    assert '--job-name=lsk_test' in srun_args
    assert '--launcher=slurm' in srun_args
    assert (tmp_path / 'submission').is_dir(), output[-3000:]


def test_sigkill_mid_epoch_then_auto_resume(tmp_path, repo_root,
                                            dota_patch_root):
    probe_dir = tmp_path / 'probe'
    probe_dir.mkdir()
    work_dir = tmp_path / 'work_dir'
    # Three iterations per epoch, so the kill lands inside epoch 2.
    config = write_config(tmp_path, dota_patch_root, probe_dir, max_epochs=3,
                          repeat=3)
    command = [
        sys.executable, 'tools/train.py', config, '--work-dir',
        str(work_dir), '--no-validate', '--seed', '0', '--auto-resume'
    ]
    env = script_env()
    with open(tmp_path / 'first_run.txt', 'w') as first_output:
        process = subprocess.Popen(command, cwd=repo_root, env=env,
                                   stdout=first_output, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while time.time() < deadline and process.poll() is None:
            if any(r['epoch'] == 2 for r in train_records(work_dir)):
                break
            time.sleep(0.2)
        assert process.poll() is None, (tmp_path / 'first_run.txt').read_text()
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert os.readlink(work_dir / 'latest.pth') == 'epoch_1.pth'
    assert not (work_dir / 'epoch_2.pth').exists()
    saved = torch.load(work_dir / 'epoch_1.pth', map_location='cpu')

    run_tool(repo_root, *command[1:], env=env)

    resumed = torch.load(probe_dir / 'start_rank0.pth')
    assert resumed['epoch'] == saved['meta']['epoch'] == 1
    assert resumed['iter'] == saved['meta']['iter'] == 3
    assert_same_state(resumed['state_dict'], saved['state_dict'])
    # The lr hook has already reset 'lr' for the new epoch; 'initial_lr' and
    # AdamW's moments come from the checkpoint.
    assert resumed['optimizer']['param_groups'][0]['initial_lr'] == pytest.approx(
        saved['optimizer']['param_groups'][0]['initial_lr'])
    assert saved['optimizer']['state']
    for index, state in saved['optimizer']['state'].items():
        for name, value in state.items():
            assert torch.equal(resumed['optimizer']['state'][index][name],
                               value), (index, name)
    final = torch.load(work_dir / 'latest.pth', map_location='cpu')
    assert final['meta']['epoch'] == 3
    assert final['meta']['iter'] == 9
