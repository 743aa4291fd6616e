"""Train a detector from a config, on GPUs or on the CPU.

One process:   python tools/train.py configs/lsknet/lsk_t_fpn_1x_dota_le90.py
Several:       tools/dist_train.sh CONFIG NUM_PROCESSES [options]
SLURM:         tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [options]

Without CUDA the run uses the CPU, and distributed runs use the gloo backend.
SyncBN is converted to BN (with one warning) unless the run is distributed on GPUs.
"""
import argparse
import copy
import os
import os.path as osp
import re
import sys
import time

# Put this checkout first on sys.path, so `import lsknet` and the configs'
# custom_imports work without `pip install -e .`.
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import mmcv  # noqa: E402
import mmrotate  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from mmcv import Config, DictAction  # noqa: E402
from mmcv.runner import get_dist_info  # noqa: E402
from mmdet.apis import init_random_seed, set_random_seed  # noqa: E402
from mmdet.utils import (get_device, replace_cfg_vals,  # noqa: E402
                         update_data_root)
from mmrotate.datasets import build_dataset  # noqa: E402
from mmrotate.models import build_detector  # noqa: E402
from mmrotate.utils import setup_multi_processes  # noqa: E402

import lsknet  # noqa: E402 (registers the LSKNet and distillation modules)
from lsknet.apis import init_distributed, train_detector  # noqa: E402
from lsknet.utils import (collect_env, convert_syncbn_for_run,  # noqa: E402
                          get_root_logger)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='config file path')
    parser.add_argument(
        '--work-dir',
        help='folder for logs and checkpoints (default: '
        'work_dirs/<config name>)')
    parser.add_argument(
        '--resume-from', help='checkpoint to resume training from')
    parser.add_argument(
        '--auto-resume',
        action='store_true',
        help='resume from the latest checkpoint in the work dir, if any')
    parser.add_argument(
        '--no-validate',
        action='store_true',
        help='skip the evaluation during training that cfg.evaluation sets')
    parser.add_argument(
        '--gpu-id',
        type=int,
        default=0,
        help='GPU to use in a non-distributed run (default: 0)')
    parser.add_argument(
        '--seed', type=int, default=None, help='random seed (default: random)')
    parser.add_argument(
        '--diff-seed',
        action='store_true',
        help='add the rank to the seed, so each process gets its own seed')
    parser.add_argument(
        '--deterministic',
        action='store_true',
        help='make cuDNN deterministic (slower)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. data.samples_per_gpu=1 '
        'optimizer.lr=0.0001; lists as key="[a,b]" with no spaces')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher (none: one process)')
    parser.add_argument(
        '--local_rank',
        '--local-rank',
        type=int,
        default=0,
        help='set by torch.distributed.launch; torchrun sets LOCAL_RANK instead')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the lr linearly with the total batch size against '
        'cfg.auto_scale_lr.base_batch_size')
    args = parser.parse_args(argv)

    if not osp.isfile(args.config):
        parser.error(f'config file not found: {args.config}')
    if args.resume_from and not osp.isfile(args.resume_from):
        parser.error(f'--resume-from checkpoint not found: {args.resume_from}')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(args: argparse.Namespace) -> Config:
    cfg = Config.fromfile(args.config)
    cfg = replace_cfg_vals(cfg)
    update_data_root(cfg)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    if args.auto_scale_lr:
        if cfg.get('auto_scale_lr', {}).get('base_batch_size') is None:
            raise SystemExit(
                'error: --auto-scale-lr needs auto_scale_lr.base_batch_size, the '
                "total batch size the config's lr is tuned for: add it to the "
                'config or pass --cfg-options auto_scale_lr.base_batch_size=16')
        cfg.auto_scale_lr.enable = True

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        config_name = osp.splitext(osp.basename(args.config))[0]
        cfg.work_dir = osp.join('./work_dirs', config_name)
    if args.resume_from is not None:
        cfg.resume_from = args.resume_from
    if cfg.model.get('type') == 'KDOrientedRCNN':
        # A relative teacher_config may also be written relative to this config.
        cfg.model.setdefault('teacher_config_dir',
                             osp.dirname(osp.abspath(args.config)))
    cfg.auto_resume = args.auto_resume
    cfg.gpu_ids = [args.gpu_id]
    cfg.device = get_device()
    return cfg


def build_model(cfg: Config):
    """Build the detector, turning an unknown ``type`` into a short error."""
    try:
        return build_detector(
            cfg.model, train_cfg=cfg.get('train_cfg'), test_cfg=cfg.get('test_cfg'))
    except KeyError as error:
        # mmcv nests the registry's message in one layer of quotes per parent
        # module, so pick out the innermost "X is not in the Y registry".
        unknown = re.search(r'([\w.]+) is not in the (\w+) registry', str(error))
        if unknown is None:
            raise
        raise SystemExit(
            f"error: unknown type '{unknown[1]}' in the config (not in the "
            f'{unknown[2]} registry). Check its spelling, and that the config '
            "imports lsknet with custom_imports = dict(imports=['lsknet'], "
            'allow_failed_imports=False)') from error


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args)
    setup_multi_processes(cfg)
    if cfg.get('cudnn_benchmark', False):
        torch.backends.cudnn.benchmark = True

    distributed = args.launcher != 'none'
    if distributed:
        init_distributed(args.launcher, **cfg.dist_params)
        cfg.gpu_ids = range(get_dist_info()[1])
    rank, _ = get_dist_info()

    mmcv.mkdir_or_exist(osp.abspath(cfg.work_dir))
    timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    logger = get_root_logger(
        log_file=osp.join(cfg.work_dir, f'{timestamp}.log'),
        log_level=cfg.log_level)
    convert_syncbn_for_run(cfg.model, distributed, cfg.device, logger)
    if rank == 0:
        cfg.dump(osp.join(cfg.work_dir, osp.basename(args.config)))

    env_info = '\n'.join(f'{key}: {value}' for key, value in collect_env().items())
    dash_line = '-' * 60
    logger.info(f'Environment info:\n{dash_line}\n{env_info}\n{dash_line}')
    backend = f' ({dist.get_backend()} backend)' if distributed else ''
    logger.info(f'Device: {cfg.device}, distributed training: '
                f'{distributed}{backend}')
    logger.info(f'Config:\n{cfg.pretty_text}')

    seed = init_random_seed(args.seed, device=cfg.device)
    if args.diff_seed:
        seed += rank
    logger.info(f'Set random seed to {seed}, deterministic: {args.deterministic}')
    set_random_seed(seed, deterministic=args.deterministic)
    cfg.seed = seed
    meta = dict(
        env_info=env_info,
        config=cfg.pretty_text,
        seed=seed,
        exp_name=osp.basename(args.config))

    model = build_model(cfg)
    model.init_weights()

    datasets = [build_dataset(cfg.data.train)]
    if len(cfg.workflow) == 2:
        # The val phase of the workflow computes losses, so it needs annotations
        # loaded by the train pipeline.
        val_dataset_cfg = copy.deepcopy(cfg.data.val)
        val_dataset_cfg.pipeline = cfg.data.train.pipeline
        datasets.append(build_dataset(val_dataset_cfg))
    if cfg.checkpoint_config is not None:
        cfg.checkpoint_config.meta = dict(
            mmrotate_version=mmrotate.__version__,
            lsknet_version=lsknet.__version__,
            CLASSES=datasets[0].CLASSES)
    model.CLASSES = datasets[0].CLASSES

    train_detector(
        model,
        datasets,
        cfg,
        distributed=distributed,
        validate=not args.no_validate,
        timestamp=timestamp,
        meta=meta)


if __name__ == '__main__':
    main()
