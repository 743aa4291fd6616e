"""Shared fixtures: where the real DOTA sample and the reference fixtures live.

The data is never copied into the repository. ``LSKNET_DATA_ROOT`` points at it and
defaults to ``../shared/data`` beside the repository root. Outside CI a missing folder
skips the tests that need it; under ``CI=true`` it fails them, so CI cannot pass
without having run them.
"""
import os
import os.path as osp

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def shared_data_root() -> str:
    return os.environ.get('LSKNET_DATA_ROOT',
                          osp.join(REPO_ROOT, '..', 'shared', 'data'))


def require_shared_path(*parts: str) -> str:
    """Return the path under the data root, or fail (CI) or skip (local) if absent."""
    path = osp.abspath(osp.join(shared_data_root(), *parts))
    if not osp.exists(path):
        message = (f'shared test data not found: {path} (set LSKNET_DATA_ROOT to '
                   'the folder holding dota_sample/ and fixtures/)')
        if os.environ.get('CI', '').lower() == 'true':
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope='session')
def dota_sample_root() -> str:
    """Folder with the two full DOTA images (``images/``, ``labelTxt/``) and ``patches/``."""
    return require_shared_path('dota_sample')


@pytest.fixture(scope='session')
def dota_patch_root() -> str:
    """Folder with one already-split DOTA patch (``images/``, ``labelTxt/``)."""
    return require_shared_path('dota_sample', 'patches')


@pytest.fixture(scope='session')
def tiny_reference_path() -> str:
    """Numerical reference for a small LSKNet (weights, input, outputs)."""
    return require_shared_path('fixtures', 'lsknet_tiny_reference.pth')


@pytest.fixture(scope='session')
def repo_root() -> str:
    return REPO_ROOT
