"""Atomic checkpoints and the non-finite loss guard, on a small mmcv runner."""
import logging
import math
import os

import pytest
import torch
from mmcv.runner import build_runner
from torch import nn

import lsknet  # noqa: F401 (registers the runners and the hook)
from lsknet.core import AtomicEpochBasedRunner, NonFiniteLossHook
from lsknet.utils.checkpoint import load_checkpoint_file


class LinearRegression(nn.Module):
    """A model with mmcv's train_step API; ``nan_at`` makes one step's loss NaN."""

    def __init__(self, nan_at=None):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.nan_at = nan_at
        self.steps = 0

    def train_step(self, data, optimizer=None, **kwargs):
        self.steps += 1
        loss_mse = ((self.linear(data) - 1.0)**2).mean()
        if self.steps == self.nan_at:
            loss_mse = loss_mse * float('nan')
        return dict(
            loss=loss_mse,
            log_vars=dict(loss_mse=loss_mse.item(), loss=loss_mse.item()),
            num_samples=data.shape[0])


def make_runner(model, work_dir, max_epochs=2):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runner = build_runner(
        dict(type='EpochBasedRunner', max_epochs=max_epochs),
        default_args=dict(
            model=model,
            optimizer=optimizer,
            work_dir=str(work_dir),
            logger=logging.getLogger('test_training_safety'),
            meta=dict()))
    runner.register_training_hooks(
        lr_config=dict(policy='fixed'),
        optimizer_config=dict(grad_clip=None),
        checkpoint_config=dict(interval=1))
    runner.register_hook(NonFiniteLossHook(), priority='VERY_HIGH')
    return runner


def batches(count=3):
    torch.manual_seed(0)
    return [torch.randn(4, 2) for _ in range(count)]


def test_registry_builds_atomic_runner(tmp_path):
    runner = make_runner(LinearRegression(), tmp_path)

    assert isinstance(runner, AtomicEpochBasedRunner)


def test_checkpoints_are_complete_and_latest_points_to_newest(tmp_path):
    model = LinearRegression()
    runner = make_runner(model, tmp_path)

    runner.run([batches()], [('train', 1)])

    checkpoint_files = sorted(
        name for name in os.listdir(tmp_path) if not name.endswith('.log'))
    assert checkpoint_files == ['epoch_1.pth', 'epoch_2.pth', 'latest.pth']
    assert os.readlink(tmp_path / 'latest.pth') == 'epoch_2.pth'
    checkpoint = load_checkpoint_file(str(tmp_path / 'latest.pth'))
    assert checkpoint['meta']['epoch'] == 2
    assert checkpoint['meta']['iter'] == 6
    assert torch.equal(checkpoint['state_dict']['linear.weight'],
                       model.linear.weight)


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    runner = make_runner(LinearRegression(), tmp_path, max_epochs=1)
    runner.run([batches()], [('train', 1)])
    first = load_checkpoint_file(str(tmp_path / 'latest.pth'))

    real_save = torch.save

    def save_half_then_crash(obj, file, *args, **kwargs):
        file.write(b'PK\x03\x04 half a checkpoint')
        raise OSError('disk quota exceeded')

    monkeypatch.setattr(torch, 'save', save_half_then_crash)
    runner._max_epochs = 2
    with pytest.raises(OSError, match='disk quota exceeded'):
        runner.run([batches()], [('train', 1)])
    monkeypatch.setattr(torch, 'save', real_save)

    assert not (tmp_path / 'epoch_2.pth').exists()
    assert os.readlink(tmp_path / 'latest.pth') == 'epoch_1.pth'
    reloaded = load_checkpoint_file(str(tmp_path / 'latest.pth'))
    assert torch.equal(reloaded['state_dict']['linear.weight'],
                       first['state_dict']['linear.weight'])


def test_nan_loss_stops_before_optimizer_step(tmp_path):
    model = LinearRegression(nan_at=5)
    runner = make_runner(model, tmp_path)
    weights_by_step = []
    original_train_step = model.train_step

    def recording_train_step(data, optimizer=None, **kwargs):
        weights_by_step.append(model.linear.weight.detach().clone())
        return original_train_step(data, optimizer, **kwargs)

    model.train_step = recording_train_step

    with pytest.raises(FloatingPointError) as error:
        runner.run([batches()], [('train', 1)])

    message = str(error.value)
    assert 'epoch 2, iteration 2 (global iteration 5)' in message
    assert 'loss_mse=nan' in message
    assert 'epoch_1.pth' in message
    assert torch.equal(model.linear.weight, weights_by_step[-1])
    assert torch.isfinite(model.linear.weight).all()
    saved = load_checkpoint_file(str(tmp_path / 'latest.pth'))
    assert os.readlink(tmp_path / 'latest.pth') == 'epoch_1.pth'
    assert all(
        math.isfinite(value)
        for value in saved['state_dict']['linear.weight'].flatten().tolist())
