"""Checkpoint reading that cannot run code hidden in a pickle.

``torch.load`` unpickles, and a crafted pickle can call any importable function
while it loads. Teacher, pretrained and resume checkpoints therefore go through
``load_checkpoint_file``: first torch's own ``weights_only`` loader, then, for mmcv
checkpoints whose ``meta`` contains NumPy values (``best_score`` of the eval hook, for
example), an unpickler that resolves only the names in ``ALLOWED_GLOBALS``.
"""
import os.path as osp
import pickle
import types
from typing import Any

import torch

# (module, name) pairs that ordinary mmcv/mmdet checkpoints contain beyond what
# torch's weights_only loader accepts, plus the ones it accepts itself.
ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'),
    ('collections', 'defaultdict'),
    ('builtins', 'set'),
    ('builtins', 'frozenset'),
    ('builtins', 'slice'),
    ('torch', 'Size'),
    ('torch._utils', '_rebuild_tensor'),
    ('torch._utils', '_rebuild_tensor_v2'),
    ('torch._utils', '_rebuild_parameter'),
    ('torch._utils', '_rebuild_parameter_with_state'),
    # NumPy pickles array bytes as _codecs.encode(str, 'latin1'), which only encodes.
    ('_codecs', 'encode'),
    ('numpy', 'dtype'),
    ('numpy', 'ndarray'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy.core.multiarray', '_reconstruct'),
}


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint refers to a Python object outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        # Dtype names (torch.float32, numpy.dtypes.Float64DType) are data, not code.
        if module == 'torch' and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == 'numpy.dtypes' and name.endswith('DType'):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f'checkpoint refers to {module}.{name}, which is not allowed in a '
            'checkpoint because unpickling it could run code')


# torch.load takes a module-like object providing Unpickler and load.
_restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler,
    load=lambda file, **kwargs: _RestrictedUnpickler(file, **kwargs).load(),
    __name__='lsknet_restricted_pickle')


def load_checkpoint_file(path: str, map_location: Any = 'cpu') -> Any:
    """Load a checkpoint without executing code from it.

    Args:
        path (str): a local checkpoint file.
        map_location: passed to ``torch.load``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file refers to objects outside the allow-list;
            nothing from it was executed.
        RuntimeError: the file is not a readable checkpoint (truncated, not a
            torch file).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass  # Maybe NumPy values in the meta: retry with the wider allow-list.
    except Exception as error:
        raise RuntimeError(
            f'failed to read checkpoint {path}: {error} (is the file complete '
            'and saved with torch.save?)') from error

    try:
        return torch.load(
            path, map_location=map_location, pickle_module=_restricted_pickle)
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(
            f'refusing to load {path}: {error}. Load it only if you trust its '
            'source, and re-save its state_dict with torch.save') from None
    except Exception as error:
        raise RuntimeError(
            f'failed to read checkpoint {path}: {error} (is the file complete '
            'and saved with torch.save?)') from error


def _load_from_local_safely(filename: str, map_location: Any = None) -> Any:
    return load_checkpoint_file(osp.expanduser(filename), map_location)


def install_safe_local_loader() -> None:
    """Make mmcv's ``load_checkpoint`` read local files with ``load_checkpoint_file``.

    This covers ``load_from``, ``resume_from`` and ``tools/test.py`` alike. Remote
    schemes (``http://``, ``torchvision://``, ``open-mmlab://``) keep mmcv's
    loaders, which call ``torch.load`` unrestricted; download such files first to
    load them safely.
    """
    from mmcv.runner import CheckpointLoader
    CheckpointLoader.register_scheme(
        prefixes='', loader=_load_from_local_safely, force=True)
