"""Build, load and check the frozen teacher of a distillation run.

Everything here runs while the student is being built, so a wrong path, a checkpoint
of another architecture or a class-count mismatch stops the run before its first
iteration instead of after hours of training against a random teacher.
"""
import copy
import os
import os.path as osp
from typing import Dict, Optional, Union

import torch
from mmcv import Config, ConfigDict
from mmcv.cnn.utils import revert_sync_batchnorm
from mmrotate.models.builder import ROTATED_DETECTORS
from mmrotate.utils import get_root_logger
from torch import nn

from ...utils.checkpoint import load_checkpoint_file

# The repository root (the folder holding configs/), for configs named relative to it.
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
# How many names an error lists before it shortens the list.
MAX_LISTED_KEYS = 5
EMA_PREFIX = 'ema_'


def resolve_config_path(path: str, config_dir: Optional[str] = None) -> str:
    """Find a config named by ``path``.

    Absolute paths are used as they are. A relative path is looked up in the
    current directory, then against the repository root, then against
    ``config_dir`` (the folder of the config that names it).

    Raises:
        FileNotFoundError: if no candidate exists; the message lists the candidates.
    """
    if osp.isabs(path):
        candidates = [path]
    else:
        candidates = [osp.abspath(path), osp.join(REPO_ROOT, path)]
        if config_dir is not None:
            candidates.append(osp.join(config_dir, path))
    for candidate in candidates:
        if osp.isfile(candidate):
            return osp.normpath(candidate)
    raise FileNotFoundError(
        f'teacher config not found: {path} (looked for '
        f'{", ".join(dict.fromkeys(candidates))}); set model.teacher_config to '
        'an existing config file, e.g. configs/lsknet/lsk_s_fpn_1x_dota_le90.py')


def load_teacher_model_config(teacher_config: Union[str, dict, Config],
                              config_dir: Optional[str] = None) -> ConfigDict:
    """Return the teacher's model config.

    ``teacher_config`` is a config file, a whole config (a dict or mmcv Config
    with a ``model`` section) or the model section itself (a dict with ``type``).
    """
    if isinstance(teacher_config, str):
        teacher_config = Config.fromfile(
            resolve_config_path(teacher_config, config_dir))
    if isinstance(teacher_config, Config):
        teacher_config = dict(teacher_config.items())
    if not isinstance(teacher_config, dict):
        raise TypeError('teacher_config must be a config path, a dict or an '
                        f'mmcv Config, got {type(teacher_config).__name__}')

    if 'model' in teacher_config:
        model_cfg = ConfigDict(copy.deepcopy(dict(teacher_config['model'])))
    elif 'type' in teacher_config:
        model_cfg = ConfigDict(copy.deepcopy(dict(teacher_config)))
    else:
        raise ValueError(
            'teacher_config has neither a "model" section nor a model "type"; '
            'pass the teacher\'s config file or its model dict')
    if model_cfg.get('type') == 'KDOrientedRCNN':
        raise ValueError(
            'the teacher config describes a KDOrientedRCNN; point '
            'teacher_config at the plain detector config the teacher was '
            'trained with, e.g. configs/lsknet/lsk_s_fpn_1x_dota_le90.py')
    return model_cfg


def build_teacher(teacher_config: Union[str, dict, Config],
                  teacher_ckpt: Optional[str],
                  num_classes: int,
                  allow_random_teacher: bool = False,
                  config_dir: Optional[str] = None) -> nn.Module:
    """Build the teacher detector, load its weights and freeze it.

    Args:
        teacher_config (str | dict | Config): the teacher's config file or config.
        teacher_ckpt (str, optional): its trained checkpoint (mmcv format or a
            plain state dict; EMA entries are used when present).
        num_classes (int): the student's number of classes, which the teacher's
            must equal.
        allow_random_teacher (bool): accept ``teacher_ckpt=None`` and keep the
            random initial weights. Only tests should set it.
        config_dir (str, optional): folder of the student's config, for relative
            teacher config paths.

    Returns:
        nn.Module: the teacher in eval mode, with ``requires_grad=False`` on every
        parameter and SyncBN layers converted to BN.
    """
    logger = get_root_logger()
    model_cfg = load_teacher_model_config(teacher_config, config_dir)
    teacher = ROTATED_DETECTORS.build(model_cfg)
    # SyncBN cannot run outside a process group, and a frozen teacher never
    # needs synchronised statistics.
    teacher = revert_sync_batchnorm(teacher)

    teacher_num_classes = _detector_num_classes(teacher)
    if teacher_num_classes != num_classes:
        raise ValueError(
            f'the teacher predicts {teacher_num_classes} classes but the student '
            f'{num_classes}; train the teacher on the same dataset and classes '
            'as the student, or fix num_classes in one of the two configs')

    if teacher_ckpt is None:
        if not allow_random_teacher:
            raise ValueError(
                'teacher_ckpt is None, which would distil from a randomly '
                'initialised teacher; set model.teacher_ckpt to the trained '
                'teacher checkpoint (docs/en/knowledge_distillation.md explains '
                'how to get one)')
        logger.warning('distilling from a RANDOMLY initialised teacher '
                       '(allow_random_teacher=True); use this only in tests')
    else:
        load_teacher_weights(teacher, teacher_ckpt)

    freeze(teacher)
    return teacher


def freeze(module: nn.Module) -> None:
    """Put ``module`` in eval mode and turn off gradients of its parameters."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def load_teacher_weights(teacher: nn.Module, checkpoint_path: str) -> None:
    """Load a checkpoint strictly into ``teacher``, with messages naming the fix.

    Raises:
        FileNotFoundError: the file does not exist.
        RuntimeError: the file cannot be read, or its keys or shapes do not match
            the teacher's (the first few are listed).
    """
    logger = get_root_logger()
    if not osp.isfile(checkpoint_path):
        raise FileNotFoundError(
            f'teacher checkpoint not found: {checkpoint_path} (set '
            'model.teacher_ckpt to the trained teacher, e.g. '
            'work_dirs/lsk_s_fpn_1x_dota_le90/latest.pth)')
    checkpoint = load_checkpoint_file(checkpoint_path)
    state_dict = extract_state_dict(checkpoint, checkpoint_path)

    expected = teacher.state_dict()
    ema_state_dict = select_ema_weights(state_dict, expected)
    if ema_state_dict is not None:
        logger.info(f'teacher checkpoint {checkpoint_path} contains EMA weights; '
                    'loading the EMA copy')
        state_dict = ema_state_dict
    else:
        state_dict = {
            key: value
            for key, value in state_dict.items()
            if not key.startswith(EMA_PREFIX)
        }

    check_state_dict_matches(state_dict, expected, checkpoint_path)
    teacher.load_state_dict(state_dict, strict=True)
    logger.info(f'loaded teacher weights from {checkpoint_path}')


def extract_state_dict(checkpoint: dict, checkpoint_path: str) -> Dict[str, torch.Tensor]:
    """Return the state dict of an mmcv checkpoint or a plain state dict."""
    if not isinstance(checkpoint, dict):
        raise RuntimeError(
            f'invalid teacher checkpoint {checkpoint_path}: expected a dict, got '
            f'{type(checkpoint).__name__}')
    state_dict = checkpoint.get('state_dict', checkpoint)
    # Checkpoints saved from a DataParallel/DDP wrapper carry a "module." prefix.
    return {
        key[len('module.'):] if key.startswith('module.') else key: value
        for key, value in state_dict.items()
    }


def select_ema_weights(state_dict: Dict[str, torch.Tensor],
                       expected: Dict[str, torch.Tensor]
                       ) -> Optional[Dict[str, torch.Tensor]]:
    """Return the EMA copy of every expected entry, or None without EMA entries.

    mmdet's EMA hooks store ``backbone.block1.0.norm1.weight`` as
    ``ema_backbone_block1_0_norm1_weight``. Entries without an EMA copy (BN
    counters, for instance) keep their ordinary value.
    """
    if not any(key.startswith(EMA_PREFIX) for key in state_dict):
        return None
    ema_state_dict = {}
    for name in expected:
        ema_name = EMA_PREFIX + name.replace('.', '_')
        if ema_name in state_dict:
            ema_state_dict[name] = state_dict[ema_name]
        elif name in state_dict:
            ema_state_dict[name] = state_dict[name]
    return ema_state_dict


def check_state_dict_matches(state_dict: Dict[str, torch.Tensor],
                             expected: Dict[str, torch.Tensor],
                             checkpoint_path: str) -> None:
    """Raise if keys or shapes differ between a checkpoint and the teacher."""
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f'{key}: checkpoint {tuple(state_dict[key].shape)} vs teacher '
        f'{tuple(expected[key].shape)}' for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing keys ({_first(missing)})')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected keys ({_first(unexpected)})')
    if mismatched:
        problems.append(f'{len(mismatched)} shape mismatches ({_first(mismatched)})')
    if problems:
        raise RuntimeError(
            f'teacher checkpoint {checkpoint_path} does not match the teacher '
            f'config: {"; ".join(problems)}. Check that model.teacher_config is '
            'the config this checkpoint was trained with (same backbone, '
            'neck, heads and num_classes)')


def _first(items: list) -> str:
    listed = ', '.join(str(item) for item in items[:MAX_LISTED_KEYS])
    return listed + (', ...' if len(items) > MAX_LISTED_KEYS else '')


def _detector_num_classes(detector: nn.Module) -> int:
    """Return the class count of a two-stage detector's bbox head."""
    try:
        return detector.roi_head.bbox_head.num_classes
    except AttributeError:
        raise NotImplementedError(
            f'the teacher {type(detector).__name__} has no roi_head.bbox_head; '
            'RoI-logit distillation needs a two-stage detector such as '
            'OrientedRCNN') from None
