"""``train_detector`` for the CPU and GPUs, in one process or distributed.

It follows mmdet 2.28's ``train_detector`` step by step and reuses its pieces.
The differences: models of distributed runs are wrapped with
``build_distributed_model`` (mmdet's ``build_ddp`` accepts accelerators only),
and distributed CPU runs evaluate with ``CPUDistEvalHook``.
"""
from typing import Optional, Sequence, Union

from mmcv import Config
from mmcv.runner import (DistSamplerSeedHook, EpochBasedRunner,
                         Fp16OptimizerHook, OptimizerHook, build_runner)
from mmdet.apis.train import auto_scale_lr
from mmdet.core import DistEvalHook, EvalHook, build_optimizer
from mmdet.datasets import (build_dataloader, build_dataset,
                            replace_ImageToTensor)
from mmdet.utils import build_dp, compat_cfg, find_latest_checkpoint, get_device
from torch import nn
from torch.utils.data import Dataset

from ..core import NonFiniteLossHook
from ..utils import get_root_logger
from .distributed import build_distributed_model
from .test import CPUDistEvalHook


def train_detector(model: nn.Module,
                   dataset: Union[Dataset, Sequence[Dataset]],
                   cfg: Config,
                   distributed: bool = False,
                   validate: bool = False,
                   timestamp: Optional[str] = None,
                   meta: Optional[dict] = None) -> None:
    """Train ``model`` on ``cfg.device`` with mmcv's runner.

    Args:
        model (nn.Module): The detector, not yet wrapped.
        dataset (Dataset | list[Dataset]): One dataset per workflow phase.
        cfg (Config): The full config. ``cfg.device`` defaults to mmdet's
            ``get_device()`` and ``cfg.gpu_ids`` to ``[0]``.
        distributed (bool): Whether a process group is initialised
            (``init_distributed``).
        validate (bool): Whether to register an evaluation hook (``cfg.evaluation``).
        timestamp (str, optional): Names the json log like the text log.
        meta (dict, optional): Stored in the runner and in checkpoints.

    Raises:
        NotImplementedError: For an ``IterBasedRunner`` in a distributed CPU run.
    """
    cfg = compat_cfg(cfg)
    logger = get_root_logger(log_level=cfg.log_level)
    device = cfg.get('device') or get_device()
    gpu_ids = cfg.get('gpu_ids') or [0]
    runner_type = cfg.runner['type'] if 'runner' in cfg else 'EpochBasedRunner'
    if distributed and device == 'cpu' and runner_type == 'IterBasedRunner':
        raise NotImplementedError(
            'IterBasedRunner cannot train in a distributed CPU run, because '
            "mmdet 2.28's InfiniteGroupBatchSampler broadcasts its seed through "
            'a CUDA tensor. Use EpochBasedRunner, or train in one process.')

    datasets = dataset if isinstance(dataset, (list, tuple)) else [dataset]
    train_loader_args = {
        'samples_per_gpu': 2,
        'workers_per_gpu': 2,
        'num_gpus': len(gpu_ids),  # ignored by distributed runs
        'dist': distributed,
        'seed': cfg.get('seed'),
        'runner_type': runner_type,
        'persistent_workers': False,
        **cfg.data.get('train_dataloader', {})
    }
    data_loaders = [build_dataloader(ds, **train_loader_args) for ds in datasets]

    if distributed:
        model = build_distributed_model(
            model,
            device,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    else:
        model = build_dp(model, device, device_ids=gpu_ids)

    auto_scale_lr(cfg, distributed, logger)
    optimizer = build_optimizer(model, cfg.optimizer)
    runner = build_runner(
        cfg.runner,
        default_args=dict(
            model=model,
            optimizer=optimizer,
            work_dir=cfg.work_dir,
            logger=logger,
            meta=meta))
    # Names the .log.json file like the .log file of tools/train.py.
    runner.timestamp = timestamp

    runner.register_training_hooks(
        cfg.lr_config,
        _optimizer_hook_config(cfg, distributed),
        cfg.checkpoint_config,
        cfg.log_config,
        cfg.get('momentum_config', None),
        custom_hooks_config=cfg.get('custom_hooks', None))
    # Before OptimizerHook, so a NaN loss stops training before any weight update.
    runner.register_hook(NonFiniteLossHook(), priority='VERY_HIGH')
    if distributed and isinstance(runner, EpochBasedRunner):
        runner.register_hook(DistSamplerSeedHook())
    if validate:
        # LOW, as in mmdet's train_detector: evaluation runs after IterTimerHook.
        runner.register_hook(
            _build_eval_hook(cfg, distributed, device), priority='LOW')

    if cfg.resume_from is None and cfg.get('auto_resume'):
        cfg.resume_from = find_latest_checkpoint(cfg.work_dir)
    if cfg.resume_from:
        runner.resume(cfg.resume_from)
    elif cfg.load_from:
        runner.load_checkpoint(cfg.load_from)
    runner.run(data_loaders, cfg.workflow)


def _optimizer_hook_config(cfg: Config, distributed: bool):
    fp16_cfg = cfg.get('fp16', None)
    if fp16_cfg is not None:
        return Fp16OptimizerHook(
            **cfg.optimizer_config, **fp16_cfg, distributed=distributed)
    if distributed and 'type' not in cfg.optimizer_config:
        return OptimizerHook(**cfg.optimizer_config)
    return cfg.optimizer_config


def _build_eval_hook(cfg: Config, distributed: bool, device: str):
    val_loader_args = {
        'samples_per_gpu': 1,
        'workers_per_gpu': 2,
        'dist': distributed,
        'shuffle': False,
        'persistent_workers': False,
        **cfg.data.get('val_dataloader', {})
    }
    if val_loader_args['samples_per_gpu'] > 1:
        # Batched inference needs DefaultFormatBundle instead of ImageToTensor.
        cfg.data.val.pipeline = replace_ImageToTensor(cfg.data.val.pipeline)
    val_dataset = build_dataset(cfg.data.val, dict(test_mode=True))
    val_loader = build_dataloader(val_dataset, **val_loader_args)

    eval_cfg = cfg.get('evaluation', {})
    eval_cfg['by_epoch'] = cfg.runner['type'] != 'IterBasedRunner'
    if not distributed:
        return EvalHook(val_loader, **eval_cfg)
    if device == 'cpu':
        return CPUDistEvalHook(val_loader, **eval_cfg)
    return DistEvalHook(val_loader, **eval_cfg)
