"""Checkpoints are loaded without running code hidden in their pickles."""
import os
import pathlib

import numpy as np
import pytest
import torch
from mmcv.runner import load_checkpoint, save_checkpoint
from torch import nn

import lsknet  # noqa: F401 (installs the safe loader into mmcv)
from lsknet.utils.checkpoint import UnsafeCheckpointError, load_checkpoint_file


class CreatesFileWhenUnpickled:
    """Unpickling an instance calls ``Path.touch`` on the stored path."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path), )


def crafted_checkpoint(tmp_path):
    marker = tmp_path / 'created_by_unpickling'
    path = tmp_path / 'crafted.pth'
    torch.save(
        {
            'state_dict': nn.Linear(2, 2).state_dict(),
            'meta': {
                'payload': CreatesFileWhenUnpickled(str(marker))
            }
        }, path)
    return path, marker


def test_crafted_checkpoint_refused_without_side_effect(tmp_path):
    path, marker = crafted_checkpoint(tmp_path)

    with pytest.raises(UnsafeCheckpointError) as error:
        load_checkpoint_file(str(path))

    assert not marker.exists()
    assert str(path) in str(error.value)
    assert 'not allowed in a checkpoint' in str(error.value)


def test_crafted_checkpoint_refused_by_mmcv_load_checkpoint(tmp_path):
    path, marker = crafted_checkpoint(tmp_path)

    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(nn.Linear(2, 2), str(path), map_location='cpu')

    assert not marker.exists()


def test_mmcv_checkpoint_with_numpy_meta_loads(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / 'epoch_1.pth'
    meta = dict(epoch=1, iter=10, CLASSES=('plane', 'ship'),
                hook_msgs=dict(best_score=np.float64(0.5), last_ckpt=str(path)),
                array=np.arange(3))
    save_checkpoint(model, str(path), optimizer=optimizer, meta=meta)

    checkpoint = load_checkpoint_file(str(path))

    assert torch.equal(checkpoint['state_dict']['weight'], model.weight)
    assert checkpoint['meta']['hook_msgs']['best_score'] == 0.5
    assert checkpoint['meta']['array'].tolist() == [0, 1, 2]
    assert checkpoint['meta']['CLASSES'] == ('plane', 'ship')
    assert 'momentum_buffer' in checkpoint['optimizer']['state'][0]


def test_plain_state_dict_loads(tmp_path):
    model = nn.Conv2d(3, 4, 3)
    path = tmp_path / 'plain.pth'
    torch.save(model.state_dict(), path)

    state_dict = load_checkpoint_file(str(path))

    assert torch.equal(state_dict['weight'], model.weight)


def test_truncated_checkpoint_raises_clear_error(tmp_path):
    path = tmp_path / 'truncated.pth'
    torch.save(nn.Linear(50, 50).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])

    with pytest.raises(RuntimeError, match='failed to read checkpoint'):
        load_checkpoint_file(str(path))


def test_missing_checkpoint_raises_file_not_found(tmp_path):
    missing = os.path.join(str(tmp_path), 'absent.pth')

    with pytest.raises(FileNotFoundError, match='absent.pth'):
        load_checkpoint_file(missing)
