"""The ``--cfg-options`` overrides that shrink the DOTA configs to a CPU demo.

The demo trains the repository's configs unchanged and passes every change on the
command line of tools/train.py and tools/test.py, so a user can rerun any step by
hand. ``format_cfg_options`` writes the values in the syntax of mmcv's
``DictAction``, and ``parse_cfg_options`` reads them back with ``DictAction``
itself, so a config merged in-process (the teacher config handed to the
distillation run) gets exactly the values the command line gives.
"""
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Sequence

from mmcv import Config, DictAction

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TEACHER_CONFIG = osp.join(REPO_ROOT, 'configs', 'lsknet',
                          'lsk_s_fpn_1x_dota_le90.py')
STUDENT_CONFIG = osp.join(REPO_ROOT, 'configs', 'lsknet',
                          'lsk_t_fpn_1x_dota_le90.py')
DISTILL_CONFIG = osp.join(REPO_ROOT, 'configs', 'lsknet',
                          'lsk_distill_s_t_fpn_1x_dota_le90.py')
# Classes whose boxes PolyRandomRotate keeps axis-aligned: it rotates an image
# that contains one of them by a multiple of 90 degrees only. The DOTA configs
# give their indices among the 15 classes, which the demo maps to its classes.
RECT_CLASSES = ('storage-tank', 'roundabout')
# Characters that mmcv's DictAction strips or splits a value at.
UNSAFE_PATH_CHARACTERS = (' ', ',', '"', "'", '[', ']', '(', ')')


@dataclass(frozen=True)
class DemoData:
    """Folders of the demo's train and val splits, and their class names.

    ``*_ann_dir`` are folders of DOTA label files, as ``DOTADataset`` takes them.
    """
    train_img_dir: str
    train_ann_dir: str
    val_img_dir: str
    val_ann_dir: str
    classes: Sequence[str]


@dataclass(frozen=True)
class DemoSchedule:
    """A short iteration-based AdamW schedule.

    The lr drops tenfold at ``lr_step`` and warms up linearly from
    ``lr * 0.1`` over the first ``warmup_iters`` iterations.
    """
    max_iters: int
    lr: float
    warmup_iters: int
    lr_step: int
    samples_per_gpu: int = 2
    log_interval: int = 5


@dataclass(frozen=True)
class DemoModelSize:
    """Image scale and proposal and sampling counts, smaller than DOTA's."""
    image_size: int = 256
    rpn_proposals_train: int = 300
    rpn_proposals_test: int = 300
    rcnn_samples: int = 128
    max_detections: int = 100


def check_option_path(path: str) -> str:
    """Return ``path`` absolute, or raise if ``--cfg-options`` cannot carry it."""
    path = osp.abspath(path)
    unsafe = [char for char in UNSAFE_PATH_CHARACTERS if char in path]
    if unsafe:
        raise ValueError(
            f'path {path!r} contains {" ".join(repr(c) for c in unsafe)}, which '
            "mmcv's --cfg-options parser removes or splits at; choose an "
            'output folder or data root without them')
    return path


def find_pipeline_step(pipeline: List[dict], step_type: str) -> int:
    """Return the index of the first step of ``step_type`` in a pipeline."""
    for index, step in enumerate(pipeline):
        if step['type'] == step_type:
            return index
    types = ', '.join(step['type'] for step in pipeline)
    raise ValueError(f'the pipeline has no {step_type} step (it has {types}); '
                     'the demo overrides would not apply to this config')


def data_options(cfg: Config, data: DemoData, size: DemoModelSize,
                 workers_per_gpu: int = 0) -> Dict[str, object]:
    """Return overrides pointing the dataset at ``data`` at a smaller scale.

    ``cfg`` is the config the overrides are for, and its pipelines determine the
    indices of the overridden steps.
    Val and test both read the val split, because tools/test.py evaluates
    ``data.test``.
    """
    classes = tuple(data.classes)
    scale = (size.image_size, size.image_size)
    options = {
        'data.workers_per_gpu': workers_per_gpu,
        'data.test_dataloader.workers_per_gpu': workers_per_gpu,
        'data.train.ann_file': check_option_path(data.train_ann_dir),
        'data.train.img_prefix': check_option_path(data.train_img_dir),
        'data.train.classes': classes,
    }
    for split in ('val', 'test'):
        options[f'data.{split}.ann_file'] = check_option_path(data.val_ann_dir)
        options[f'data.{split}.img_prefix'] = check_option_path(data.val_img_dir)
        options[f'data.{split}.classes'] = classes

    train_pipeline = cfg.data.train.pipeline
    resize_index = find_pipeline_step(train_pipeline, 'RResize')
    options[f'data.train.pipeline.{resize_index}.img_scale'] = scale
    rotate_index = find_pipeline_step(train_pipeline, 'PolyRandomRotate')
    rect_class_indices = [
        classes.index(name) for name in RECT_CLASSES if name in classes
    ]
    # None, not [], because --cfg-options cannot carry an empty list.
    options[f'data.train.pipeline.{rotate_index}.rect_classes'] = (
        rect_class_indices or None)
    for split in ('val', 'test'):
        test_pipeline = cfg.data[split].pipeline
        augment_index = find_pipeline_step(test_pipeline, 'MultiScaleFlipAug')
        options[f'data.{split}.pipeline.{augment_index}.img_scale'] = scale
    return options


def model_options(num_classes: int, size: DemoModelSize) -> Dict[str, object]:
    """Return overrides for a detector trained from scratch on the CPU.

    There is no ImageNet-pretrained backbone to download, so ``init_cfg`` is
    None. BN replaces SyncBN, which needs a process group.
    """
    return {
        'model.backbone.init_cfg': None,
        'model.backbone.norm_cfg.type': 'BN',
        'model.roi_head.bbox_head.num_classes': num_classes,
        'model.train_cfg.rpn_proposal.nms_pre': size.rpn_proposals_train * 2,
        'model.train_cfg.rpn_proposal.max_per_img': size.rpn_proposals_train,
        'model.train_cfg.rcnn.sampler.num': size.rcnn_samples,
        'model.test_cfg.rpn.nms_pre': size.rpn_proposals_test * 2,
        'model.test_cfg.rpn.max_per_img': size.rpn_proposals_test,
        'model.test_cfg.rcnn.max_per_img': size.max_detections,
    }


def schedule_options(schedule: DemoSchedule) -> Dict[str, object]:
    """Return overrides for an iteration-based run that saves one checkpoint.

    mmcv's IterBasedRunner makes the lr, checkpoint and logger hooks count
    iterations, and the JSON log then numbers iterations from the start.
    """
    return {
        'runner.type': 'IterBasedRunner',
        'runner.max_epochs': None,
        'runner.max_iters': schedule.max_iters,
        'data.samples_per_gpu': schedule.samples_per_gpu,
        'optimizer.lr': schedule.lr,
        'lr_config.warmup_iters': schedule.warmup_iters,
        'lr_config.warmup_ratio': 0.1,
        'lr_config.step': [schedule.lr_step],
        'checkpoint_config.interval': schedule.max_iters,
        'log_config.interval': schedule.log_interval,
    }


def format_option_value(value) -> str:
    """Write ``value`` in the syntax that mmcv's DictAction parses back to it."""
    if isinstance(value, tuple):
        return '(' + ','.join(format_option_value(item) for item in value) + ')'
    if isinstance(value, list):
        return '[' + ','.join(format_option_value(item) for item in value) + ']'
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    raise TypeError(f'cannot write a {type(value).__name__} as a --cfg-options '
                    f'value: {value!r}')


def format_cfg_options(options: Dict[str, object]) -> List[str]:
    """Return ``KEY=VALUE`` arguments for ``--cfg-options``."""
    arguments = []
    for key, value in options.items():
        text = format_option_value(value)
        # DictAction would turn '[]' into [''] and '()' into ('',).
        if text in ('[]', '()'):
            raise ValueError(f'--cfg-options cannot carry an empty list: {key}')
        arguments.append(f'{key}={text}')
    return arguments


def parse_cfg_options(arguments: Sequence[str]) -> Dict[str, object]:
    """Parse ``KEY=VALUE`` arguments as tools/train.py's DictAction does."""
    options = {}
    for argument in arguments:
        key, value = argument.split('=', maxsplit=1)
        options[key] = DictAction._parse_iterable(value)
    return options


def merged_config(config_path: str, arguments: Sequence[str]) -> Config:
    """Load a config and apply ``--cfg-options`` arguments, as tools/train.py does."""
    cfg = Config.fromfile(config_path)
    cfg.merge_from_dict(parse_cfg_options(arguments))
    return cfg
