"""Test a checkpoint: evaluate it, save its raw results or write a DOTA submission.

One process:   python tools/test.py CONFIG CHECKPOINT --eval mAP
Several:       tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCESSES --eval mAP
Submission:    python tools/test.py CONFIG CHECKPOINT --format-only \
                   --eval-options submission_dir=work_dirs/Task1_results

Without CUDA the run uses the CPU, and distributed runs use the gloo backend.
"""
import argparse
import glob
import os
import os.path as osp
import sys
import time

# Put this checkout first on sys.path, so `import lsknet` and the configs'
# custom_imports work without `pip install -e .`.
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import mmcv  # noqa: E402
import torch  # noqa: E402
from mmcv import Config, DictAction  # noqa: E402
from mmcv.cnn import fuse_conv_bn  # noqa: E402
from mmcv.runner import (get_dist_info, load_checkpoint,  # noqa: E402
                         wrap_fp16_model)
from mmdet.apis import multi_gpu_test, single_gpu_test  # noqa: E402
from mmdet.datasets import (build_dataloader,  # noqa: E402
                            replace_ImageToTensor)
from mmdet.utils import (build_dp, compat_cfg, get_device,  # noqa: E402
                         replace_cfg_vals, update_data_root)
from mmrotate.datasets import DOTADataset, build_dataset  # noqa: E402
from mmrotate.models import build_detector  # noqa: E402
from mmrotate.utils import setup_multi_processes  # noqa: E402

import lsknet  # noqa: E402,F401 (registers the LSKNet and distillation modules)
from lsknet.apis import (build_distributed_model,  # noqa: E402
                         init_distributed, multi_process_cpu_test)
from lsknet.utils import convert_syncbn_for_run, get_root_logger  # noqa: E402

# Keys of cfg.evaluation that configure EvalHook, not dataset.evaluate().
EVAL_HOOK_KEYS = ('interval', 'tmpdir', 'start', 'gpu_collect', 'save_best',
                  'rule', 'dynamic_intervals')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Test (and evaluate) a detector checkpoint')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='folder for a JSON file with the evaluation metrics')
    parser.add_argument('--out', help='write the raw results to this .pkl file')
    parser.add_argument(
        '--fuse-conv-bn',
        action='store_true',
        help='fuse BN into the preceding convolutions (slightly faster)')
    parser.add_argument(
        '--gpu-id',
        type=int,
        default=0,
        help='GPU to use in a non-distributed run (default: 0)')
    parser.add_argument(
        '--format-only',
        action='store_true',
        help='only write the results in the dataset\'s submission format; '
        'DOTA needs --eval-options submission_dir=DIR')
    parser.add_argument(
        '--eval',
        type=str,
        nargs='+',
        help='metrics to evaluate, e.g. mAP for DOTA')
    parser.add_argument(
        '--show',
        action='store_true',
        help='display each image with its detections in a window')
    parser.add_argument(
        '--show-dir', help='folder to save images with the detections drawn')
    parser.add_argument(
        '--show-score-thr',
        type=float,
        default=0.3,
        help='minimum score of a drawn detection (default: 0.3)')
    parser.add_argument(
        '--gpu-collect',
        action='store_true',
        help='gather the results of distributed GPU runs through GPU memory '
        'instead of --tmpdir')
    parser.add_argument(
        '--tmpdir',
        help='folder for gathering the results of distributed GPU runs '
        '(without --gpu-collect)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. model.test_cfg.rcnn.score_thr=0.1; '
        'lists as key="[a,b]" with no spaces')
    parser.add_argument(
        '--eval-options',
        nargs='+',
        action=DictAction,
        help='keyword arguments of dataset.evaluate() and '
        'dataset.format_results(), e.g. nproc=4 or submission_dir=DIR')
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
    args = parser.parse_args(argv)

    if not (args.out or args.eval or args.format_only or args.show
            or args.show_dir):
        parser.error('nothing to do: pass --out, --eval, --format-only, --show '
                     'or --show-dir')
    if args.eval and args.format_only:
        parser.error('--eval and --format-only exclude each other')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must end with .pkl or .pickle, got {args.out}')
    if not osp.isfile(args.config):
        parser.error(f'config file not found: {args.config}')
    # load_checkpoint also reads URLs such as https:// and open-mmlab://.
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        parser.error(f'checkpoint file not found: {args.checkpoint}')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(args: argparse.Namespace) -> Config:
    cfg = Config.fromfile(args.config)
    cfg = replace_cfg_vals(cfg)
    update_data_root(cfg)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg = compat_cfg(cfg)

    cfg.device = get_device()
    cfg.gpu_ids = [args.gpu_id]
    cfg.model.train_cfg = None
    if args.format_only and cfg.device == 'cuda':
        # DOTA merges patch results in worker processes that use CUDA, which
        # forked workers of a CUDA process cannot.
        cfg.mp_start_method = 'spawn'
    return cfg


def check_dota_options(dataset, args: argparse.Namespace,
                       eval_options: dict) -> None:
    """Exit before inference if DOTA's evaluate or format_results would fail."""
    if not isinstance(dataset, DOTADataset):
        return
    # DOTADataset reads a folder without .txt files as the unlabelled test split.
    if args.eval and not glob.glob(osp.join(dataset.ann_file, '*.txt')):
        raise SystemExit(
            f'error: --eval needs labels, but data.test.ann_file '
            f'({dataset.ann_file}) contains no .txt annotation files. Evaluate '
            'on val with --cfg-options '
            'data.test.ann_file=data/split_ss_dota/val/annfiles/ '
            'data.test.img_prefix=data/split_ss_dota/val/images/, or write a '
            'submission for the test split with --format-only.')
    if not args.format_only:
        return

    submission_dir = eval_options.get('submission_dir')
    if submission_dir is None:
        raise SystemExit(
            'error: --format-only on a DOTA dataset needs --eval-options '
            'submission_dir=DIR, a folder that does not exist yet, for the '
            'Task1_<class>.txt files')
    if osp.exists(submission_dir):
        raise SystemExit(f'error: submission_dir already exists: {submission_dir} '
                         '(remove it or choose a new folder)')


def run_inference(model, data_loader, cfg: Config, args: argparse.Namespace,
                  distributed: bool) -> list:
    if not distributed:
        model = build_dp(model, cfg.device, device_ids=cfg.gpu_ids)
        return single_gpu_test(model, data_loader, args.show, args.show_dir,
                               args.show_score_thr)
    if cfg.device == 'cpu':
        return multi_process_cpu_test(build_dp(model, 'cpu'), data_loader)
    model = build_distributed_model(model, cfg.device, broadcast_buffers=False)
    return multi_gpu_test(model, data_loader, args.tmpdir, args.gpu_collect)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = load_config(args)
    eval_options = args.eval_options or {}
    setup_multi_processes(cfg)
    if cfg.get('cudnn_benchmark', False):
        torch.backends.cudnn.benchmark = True

    distributed = args.launcher != 'none'
    if distributed:
        init_distributed(args.launcher, **cfg.dist_params)
    rank, _ = get_dist_info()
    logger = get_root_logger(log_level=cfg.log_level)
    convert_syncbn_for_run(cfg.model, distributed, cfg.device, logger)

    test_loader_args = {
        'samples_per_gpu': 1,
        'workers_per_gpu': 2,
        'dist': distributed,
        'shuffle': False,
        **cfg.data.get('test_dataloader', {})
    }
    test_dataset_cfgs = cfg.data.test if isinstance(cfg.data.test,
                                                    list) else [cfg.data.test]
    for dataset_cfg in test_dataset_cfgs:
        dataset_cfg.test_mode = True
        if test_loader_args['samples_per_gpu'] > 1:
            # Batched inference needs DefaultFormatBundle instead of ImageToTensor.
            dataset_cfg.pipeline = replace_ImageToTensor(dataset_cfg.pipeline)
    dataset = build_dataset(cfg.data.test)
    check_dota_options(dataset, args, eval_options)
    data_loader = build_dataloader(dataset, **test_loader_args)

    model = build_detector(cfg.model, test_cfg=cfg.get('test_cfg'))
    if cfg.get('fp16', None) is not None:
        wrap_fp16_model(model)
    checkpoint = load_checkpoint(model, args.checkpoint, map_location='cpu')
    if args.fuse_conv_bn:
        model = fuse_conv_bn(model)
    # Checkpoints written by tools/train.py store the class names in their meta.
    model.CLASSES = checkpoint.get('meta', {}).get('CLASSES', dataset.CLASSES)

    outputs = run_inference(model, data_loader, cfg, args, distributed)
    if rank != 0:
        return

    if args.out:
        print(f'\nwriting results to {args.out}')
        mmcv.dump(outputs, args.out)
    if args.format_only:
        dataset.format_results(outputs, **eval_options)
        if 'submission_dir' in eval_options:
            print(f'\nwrote the submission files to {eval_options["submission_dir"]}')
    if args.eval:
        eval_kwargs = {
            key: value
            for key, value in cfg.get('evaluation', {}).items()
            if key not in EVAL_HOOK_KEYS
        }
        eval_kwargs.update(metric=args.eval, **eval_options)
        metric = dataset.evaluate(outputs, **eval_kwargs)
        print(metric)
        if args.work_dir is not None:
            mmcv.mkdir_or_exist(osp.abspath(args.work_dir))
            timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
            mmcv.dump(
                dict(config=args.config, checkpoint=args.checkpoint, metric=metric),
                osp.join(args.work_dir, f'eval_{timestamp}.json'))


if __name__ == '__main__':
    main()
