"""Measure what knowledge distillation adds to the cost of training the student.

A distillation step cannot cost less than one student training step plus one
teacher forward pass (backbone, neck, and the RoI head on the sampled RoIs).
This tool times, in one process and on the same seeded inputs:

  (a) a plain student training step (forward, backward, optimizer step) of an
      ``OrientedRCNN`` built from the distillation config without its teacher,
      holding the distillation student's weights;
  (b) the teacher's forward pass as ``KDOrientedRCNN`` runs it:
      ``extract_teacher_feat`` plus ``teacher_cls_score`` on RoIs captured from a
      real distillation forward pass;
  (c) a full distillation training step.

It then measures (d) the peak memory of each case in a fresh subprocess, and
reports the ratios c / (a + b) and c / a, parameters and FLOPs of the student and
teacher detectors, and their inference speed. docs/en/benchmark.md explains
every number.

Example::

    python tools/analysis_tools/benchmark_kd.py \\
        configs/lsknet/lsk_distill_s_t_fpn_1x_dota_le90.py \\
        --img-size 512 --batch 2 --iters 10 --warmup 2
"""
import argparse
import copy
import ctypes
import functools
import gc
import json
import logging
import math
import os
import os.path as osp
import platform
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from mmcv import Config, DictAction
from mmcv.cnn import get_model_complexity_info
from mmcv.parallel import collate
from mmcv.runner import build_optimizer
from mmrotate.core import rbbox2roi
from mmrotate.datasets import build_dataset
from mmrotate.models import build_detector
from mmrotate.utils import get_root_logger

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import lsknet  # noqa: E402,F401 (registers KDOrientedRCNN and its parts)
from lsknet.utils import convert_syncbn_to_bn  # noqa: E402

# Keys of KDOrientedRCNN that a plain OrientedRCNN does not take.
TEACHER_KEYS = ('teacher_config', 'teacher_ckpt', 'allow_random_teacher',
                'teacher_fp16', 'teacher_config_dir')
CASES = ('student_step', 'teacher_forward', 'kd_step')
CASE_LABELS = {
    'student_step': '(a) student training step',
    'teacher_forward': '(b) teacher forward (feats + RoI logits)',
    'kd_step': '(c) KD training step',
}
# Targets: c <= TIME_TOLERANCE * (a + b), and the KD step's memory increment
# <= MEMORY_TOLERANCE * (student increment + teacher increment).
TIME_TOLERANCE = 1.05
MEMORY_TOLERANCE = 1.05
# The setting the time target is defined for.
TARGET_DEVICE, TARGET_IMG_SIZE, TARGET_BATCH = 'cpu', 512, 2
# Ground-truth boxes per generated image, and the shortest side in pixels.
GENERATED_BOXES_PER_IMAGE = 8
MIN_BOX_SIZE = 8
# Proposals of forward_dummy, as in mmrotate's two-stage detectors.
DUMMY_PROPOSALS = 1000
# The ImageNet mean and std of the DOTA configs, for configs without
# img_norm_cfg.
DEFAULT_IMG_NORM_CFG = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
# Names of the label folder beside images/, tried in this order.
ANNOTATION_DIRS = ('labelTxt', 'annfiles')
MIB = 1024.0 * 1024.0
# Writing this to /proc/self/clear_refs resets the process's VmHWM (Linux >= 4.0).
RESET_PEAK_RSS = '5'
# Operators that do the bulk of the arithmetic, compared by --count-ops.
COMPUTE_OPERATORS = ('aten::convolution', 'aten::convolution_backward',
                     'aten::addmm', 'aten::mm', 'RoIAlignRotatedFunction',
                     'RoIAlignRotatedFunctionBackward')
MAX_LISTED_OPERATORS = 12
# A load average above this fraction of the cores makes the report warn that
# other processes distort the timings.
BUSY_LOAD_PER_CORE = 0.6


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Benchmark a KDOrientedRCNN training step against a plain '
        'student step plus a teacher forward pass')
    parser.add_argument('config', help='distillation config (KDOrientedRCNN)')
    parser.add_argument('--img-size', type=int, default=512,
                        help='side of the square input in pixels (default: 512)')
    parser.add_argument('--batch', type=int, default=2,
                        help='images per step (default: 2)')
    parser.add_argument('--iters', type=int, default=10,
                        help='timed iterations per case (default: 10)')
    parser.add_argument('--warmup', type=int, default=2,
                        help='untimed iterations per case before those '
                        '(default: 2)')
    parser.add_argument('--mem-iters', type=int, default=2,
                        help='steps per case in the memory measurement. The '
                        'second training step is the first that starts with '
                        'the optimizer state allocated (default: 2)')
    parser.add_argument('--mem-jobs', type=int, default=1,
                        help='memory subprocesses run at a time. Each needs '
                        'the memory of a whole training run (default: 1)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                        help='where the models run (default: cpu)')
    parser.add_argument('--data-root',
                        help='folder of DOTA patches with images/ and '
                        'labelTxt/ (or annfiles/). Without it, generated images '
                        'with random rotated boxes are used')
    parser.add_argument('--teacher-ckpt',
                        help='teacher checkpoint. Without it the teacher keeps '
                        'random weights (allow_random_teacher=True), which does '
                        'not change the timings')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the weights, inputs and every step '
                        '(default: 0)')
    parser.add_argument('--count-ops', action='store_true',
                        help='also run each case once under torch.profiler '
                        'and compare operator call counts, which unlike '
                        'timings do not depend on the machine\'s load')
    parser.add_argument('--json', help='also write the report to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys in xxx=yyy form, e.g. '
                        'model.teacher_fp16=True')
    # Internal: measure one case's memory in this (fresh) process.
    parser.add_argument('--memory-case', choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument('--rois-file', help=argparse.SUPPRESS)
    parser.add_argument('--result-file', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    for name in ('img_size', 'batch', 'iters', 'mem_iters', 'mem_jobs'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1, got '
                         f'{getattr(args, name)}')
    if args.warmup < 0:
        parser.error(f'--warmup must be 0 or more, got {args.warmup}')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda was requested but torch finds no CUDA '
                     'device; run with --device cpu')
    if args.data_root is not None:
        if not osp.isdir(osp.join(args.data_root, 'images')):
            parser.error(f'--data-root {args.data_root} has no images/ folder; '
                         'pass a folder of DOTA patches with images/ and '
                         'labelTxt/ (or annfiles/)')
        if annotation_dir(args.data_root) is None:
            parser.error(f'--data-root {args.data_root} has neither labelTxt/ '
                         'nor annfiles/; pass a folder of DOTA patches with '
                         'images/ and one of them')
    return args


def annotation_dir(data_root: str) -> Optional[str]:
    """Return the folder of DOTA label files under ``data_root``, if any.

    DOTA itself names it labelTxt/, and tools/data/dota/split_dota.py annfiles/.
    """
    for name in ANNOTATION_DIRS:
        if osp.isdir(osp.join(data_root, name)):
            return osp.join(data_root, name)
    return None


# --------------------------------------------------------------------------
# Models, optimizers and inputs
# --------------------------------------------------------------------------


def load_config(args: argparse.Namespace) -> Config:
    """Load the distillation config, ready to build in one process."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.model.get('type') != 'KDOrientedRCNN':
        raise ValueError(
            f'{args.config} builds a {cfg.model.get("type")}, not a '
            'KDOrientedRCNN; pass a distillation config such as '
            'configs/lsknet/lsk_distill_s_t_fpn_1x_dota_le90.py')

    convert_syncbn_to_bn(cfg.model)
    cfg.model.backbone.init_cfg = None
    cfg.model.teacher_config_dir = osp.dirname(osp.abspath(args.config))
    cfg.model.teacher_ckpt = args.teacher_ckpt
    cfg.model.allow_random_teacher = args.teacher_ckpt is None
    return cfg


def student_model_config(kd_model_cfg: dict) -> dict:
    """Return the plain ``OrientedRCNN`` config of the distillation student."""
    model_cfg = copy.deepcopy(kd_model_cfg)
    model_cfg['type'] = 'OrientedRCNN'
    for key in TEACHER_KEYS:
        model_cfg.pop(key, None)
    model_cfg['roi_head']['type'] = 'OrientedStandardRoIHead'
    model_cfg['roi_head']['bbox_head'].pop('loss_distill', None)
    return model_cfg


def build_models(cfg: Config, device: str, seed: int):
    """Build the distillation detector and a plain student with its weights."""
    torch.manual_seed(seed)
    kd = build_detector(copy.deepcopy(cfg.model))
    kd.init_weights()
    student = build_detector(student_model_config(cfg.model))
    # The distillation state dict contains the student alone, under plain names.
    student.load_state_dict(kd.state_dict(), strict=True)
    kd.to(device).train()
    student.to(device).train()
    return kd, student


def load_dota_batch(data_root: str, cfg: Config, img_size: int,
                    batch_size: int) -> dict:
    """Load ``batch_size`` DOTA patches, resized and padded to ``img_size``."""
    version = cfg.get('angle_version', 'le90')
    dataset = build_dataset(
        dict(
            type='DOTADataset',
            ann_file=annotation_dir(data_root) + '/',
            img_prefix=osp.join(data_root, 'images') + '/',
            version=version,
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='LoadAnnotations', with_bbox=True),
                dict(type='RResize', img_scale=(img_size, img_size)),
                # Never flips; Collect needs the flip keys it sets.
                dict(type='RRandomFlip', flip_ratio=0.0, version=version),
                dict(
                    type='Normalize',
                    **cfg.get('img_norm_cfg', DEFAULT_IMG_NORM_CFG)),
                dict(type='Pad', size=(img_size, img_size)),
                dict(type='DefaultFormatBundle'),
                dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels'])
            ]))
    if len(dataset) == 0:
        raise ValueError(f'no annotated DOTA images found under {data_root}; '
                         'check that its label folder contains a label file '
                         'per image')

    # With fewer patches than the batch, patches repeat.
    samples = [dataset[index % len(dataset)] for index in range(batch_size)]
    batch = collate(samples, samples_per_gpu=batch_size)
    return dict(
        img=batch['img'].data[0],
        img_metas=batch['img_metas'].data[0],
        gt_bboxes=batch['gt_bboxes'].data[0],
        gt_labels=batch['gt_labels'].data[0])


def random_rotated_boxes(count: int, img_size: int,
                         generator: torch.Generator) -> torch.Tensor:
    """Return (count, 5) le90 boxes [cx, cy, w, h, angle] inside the image."""
    uniform = torch.rand(count, 5, generator=generator)
    centers = img_size * (0.1 + 0.8 * uniform[:, :2])
    max_width = max(img_size / 4, MIN_BOX_SIZE + 1)
    widths = MIN_BOX_SIZE + uniform[:, 2] * (max_width - MIN_BOX_SIZE)
    # le90 boxes keep the longer side as the width.
    heights = MIN_BOX_SIZE + uniform[:, 3] * (widths - MIN_BOX_SIZE)
    angles = (uniform[:, 4] - 0.5) * math.pi
    return torch.cat(
        [centers, widths[:, None], heights[:, None], angles[:, None]], dim=1)


def generate_batch(img_size: int, batch_size: int, num_classes: int,
                   seed: int) -> dict:
    """Return normalised noise images with random rotated ground truth."""
    generator = torch.Generator().manual_seed(seed)
    img = torch.randn(batch_size, 3, img_size, img_size, generator=generator)
    gt_bboxes, gt_labels, img_metas = [], [], []
    for _ in range(batch_size):
        gt_bboxes.append(
            random_rotated_boxes(GENERATED_BOXES_PER_IMAGE, img_size,
                                 generator))
        gt_labels.append(
            torch.randint(
                num_classes, (GENERATED_BOXES_PER_IMAGE, ),
                generator=generator))
        img_metas.append(
            dict(
                filename=None,
                ori_shape=(img_size, img_size, 3),
                img_shape=(img_size, img_size, 3),
                pad_shape=(img_size, img_size, 3),
                scale_factor=np.ones(4, dtype=np.float32),
                flip=False,
                flip_direction=None))
    return dict(
        img=img, img_metas=img_metas, gt_bboxes=gt_bboxes, gt_labels=gt_labels)


def make_batch(args: argparse.Namespace, cfg: Config) -> dict:
    """Return the benchmark batch on ``args.device``."""
    if args.data_root is not None:
        batch = load_dota_batch(args.data_root, cfg, args.img_size, args.batch)
    else:
        num_classes = cfg.model.roi_head.bbox_head.num_classes
        batch = generate_batch(args.img_size, args.batch, num_classes,
                               args.seed)

    batch['img'] = batch['img'].to(args.device)
    batch['gt_bboxes'] = [boxes.to(args.device) for boxes in batch['gt_bboxes']]
    batch['gt_labels'] = [
        labels.to(args.device) for labels in batch['gt_labels']
    ]
    input_shape = tuple(batch['img'].shape[-2:])
    for img_meta in batch['img_metas']:
        img_meta['batch_input_shape'] = input_shape
    return batch


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def capture_sampled_rois(kd, batch: dict, seed: int) -> torch.Tensor:
    """Run one distillation forward pass and return the RoIs the teacher got.

    Returns:
        Tensor: (num_rois, 6) RoIs as [batch_idx, cx, cy, w, h, angle].
    """
    captured = []
    teacher_cls_score = kd.teacher_cls_score

    def recording_teacher_cls_score(teacher_feats, rois):
        captured.append(rois.detach().clone())
        return teacher_cls_score(teacher_feats, rois)

    kd.teacher_cls_score = recording_teacher_cls_score
    try:
        seed_everything(seed)
        kd(**batch)
    finally:
        del kd.teacher_cls_score
    if len(captured) != 1:
        raise RuntimeError(
            'expected one call of teacher_cls_score per distillation step, '
            f'got {len(captured)}')
    return captured[0]


def train_step(model, optimizer, batch: dict,
               grad_clip: Optional[dict]) -> None:
    """Run forward, backward and the optimizer step as mmcv's OptimizerHook."""
    losses = model(**batch)
    loss, _ = model._parse_losses(losses)
    optimizer.zero_grad()
    loss.backward()
    if grad_clip is not None:
        params = [
            param for param in model.parameters()
            if param.requires_grad and param.grad is not None
        ]
        torch.nn.utils.clip_grad_norm_(params, **grad_clip)
    optimizer.step()


class BenchmarkSetup:
    """Everything the cases need: models, optimizers, inputs and sampled RoIs.

    Building it from the same arguments gives the same weights and inputs, in
    this process and in the memory subprocesses.
    """

    def __init__(self, args: argparse.Namespace,
                 rois: Optional[torch.Tensor] = None):
        self.args = args
        self.cfg = load_config(args)
        self.kd, self.student = build_models(self.cfg, args.device, args.seed)
        self.kd_optimizer = build_optimizer(self.kd, self.cfg.optimizer)
        self.student_optimizer = build_optimizer(self.student,
                                                 self.cfg.optimizer)
        optimizer_config = self.cfg.get('optimizer_config') or {}
        self.grad_clip = optimizer_config.get('grad_clip')
        self.batch = make_batch(args, self.cfg)
        if rois is None:
            rois = capture_sampled_rois(self.kd, self.batch, args.seed)
        self.rois = rois.to(args.device)

    def student_step(self) -> None:
        train_step(self.student, self.student_optimizer, self.batch,
                   self.grad_clip)

    def teacher_forward(self) -> None:
        teacher_feats = self.kd.extract_teacher_feat(self.batch['img'])
        self.kd.teacher_cls_score(teacher_feats, self.rois)

    def kd_step(self) -> None:
        train_step(self.kd, self.kd_optimizer, self.batch, self.grad_clip)

    def case(self, name: str) -> Callable[[], None]:
        return getattr(self, name)


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


def time_interleaved(cases: Dict[str, Callable[[], None]], iters: int,
                     warmup: int, device: str,
                     seed: int) -> Dict[str, List[float]]:
    """Time each case ``iters`` times in turns, so load changes hit all alike.

    Every case of round ``i`` runs after the same seed, so dropout, drop-path
    and the samplers draw alike in the student and distillation steps.

    Returns:
        dict[str, list[float]]: wall-clock seconds per timed iteration.
    """
    seconds = {name: [] for name in cases}
    for round_index in range(warmup + iters):
        for name, run_case in cases.items():
            seed_everything(seed + round_index)
            synchronize(device)
            start = time.perf_counter()
            run_case()
            synchronize(device)
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                seconds[name].append(elapsed)
    return seconds


def summarize(samples: List[float]) -> dict:
    """Return the median, min, max and quartiles of ``samples``."""
    values = np.asarray(samples, dtype=np.float64)
    return dict(
        median=float(np.median(values)),
        min=float(values.min()),
        max=float(values.max()),
        q1=float(np.percentile(values, 25)),
        q3=float(np.percentile(values, 75)),
        samples=[float(value) for value in values])


# --------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------


def read_status_kib(field: str) -> int:
    """Return a field of ``/proc/self/status`` (VmRSS, VmHWM) in KiB."""
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'/proc/self/status has no {field} field')


def release_free_memory() -> None:
    """Collect garbage and return glibc's free heap pages to the system.

    Without the trim, heap pages freed after building would count in the
    baseline RSS, and the step would reuse them without raising its peak.
    """
    gc.collect()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS, or return False where Linux forbids it."""
    try:
        with open('/proc/self/clear_refs', 'w') as clear_refs:
            clear_refs.write(RESET_PEAK_RSS)
        return True
    except OSError:
        return False


def measure_case_memory(setup: BenchmarkSetup, name: str,
                        mem_iters: int) -> dict:
    """Return the memory before the case and its peak while the case runs.

    On the CPU this must run in a process that has run no other case, because
    the allocator keeps freed pages. There the baseline is the RSS after
    building everything and the peak is VmHWM. On CUDA both count the memory
    allocated to tensors.
    """
    device = setup.args.device
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        baseline_mib = torch.cuda.memory_allocated() / MIB
        peak_was_reset = True
    else:
        release_free_memory()
        peak_was_reset = reset_peak_rss()
        baseline_mib = read_status_kib('VmRSS') / 1024.0

    for step in range(mem_iters):
        seed_everything(setup.args.seed + step)
        setup.case(name)()

    result = dict(baseline_mib=baseline_mib, peak_was_reset=peak_was_reset)
    if device == 'cuda':
        torch.cuda.synchronize()
        result['peak_mib'] = torch.cuda.max_memory_allocated() / MIB
    else:
        # Not getrusage's ru_maxrss: it cannot be reset, and Linux carries it
        # over from the parent through fork and exec, so a subprocess of a
        # 3 GiB parent reports at least 3 GiB.
        result['peak_mib'] = read_status_kib('VmHWM') / 1024.0
    return result


def memory_case_command(args: argparse.Namespace, name: str, rois_file: str,
                        result_file: str) -> List[str]:
    """Return the command line that measures case ``name`` in a new process."""
    command = [
        sys.executable,
        osp.abspath(__file__), args.config, '--img-size',
        str(args.img_size), '--batch',
        str(args.batch), '--mem-iters',
        str(args.mem_iters), '--device', args.device, '--seed',
        str(args.seed), '--memory-case', name, '--rois-file', rois_file,
        '--result-file', result_file
    ]
    if args.data_root is not None:
        command += ['--data-root', args.data_root]
    if args.teacher_ckpt is not None:
        command += ['--teacher-ckpt', args.teacher_ckpt]
    if args.cfg_options:
        command.append('--cfg-options')
        command += [f'{key}={value}' for key, value in args.cfg_options.items()]
    return command


def measure_memory(args: argparse.Namespace,
                   rois: torch.Tensor) -> Dict[str, dict]:
    """Measure each case's memory in a fresh subprocess of this tool.

    ``--mem-jobs`` subprocesses run at a time. The memory of one process does
    not depend on the others, but the machine's free memory must hold them all.
    """
    results = {}
    with tempfile.TemporaryDirectory(prefix='benchmark_kd_') as work_dir:
        rois_file = osp.join(work_dir, 'rois.pth')
        torch.save(rois.cpu(), rois_file)

        pending = list(CASES)
        while pending:
            running = []
            for name in pending[:args.mem_jobs]:
                result_file = osp.join(work_dir, f'{name}.json')
                command = memory_case_command(args, name, rois_file,
                                              result_file)
                process = subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True)
                running.append((name, process, result_file))
            pending = pending[args.mem_jobs:]

            for name, process, result_file in running:
                output, _ = process.communicate()
                if process.returncode != 0:
                    raise RuntimeError(
                        f'memory measurement of {name} failed with exit code '
                        f'{process.returncode}; its output ends with:\n'
                        f'{output[-3000:]}')
                with open(result_file) as result:
                    results[name] = json.load(result)
    return results


def run_memory_case(args: argparse.Namespace) -> None:
    """Build everything, run one case and write its memory to a JSON file."""
    rois = torch.load(args.rois_file, weights_only=True)
    setup = BenchmarkSetup(args, rois=rois)
    result = measure_case_memory(setup, args.memory_case, args.mem_iters)
    with open(args.result_file, 'w') as result_file:
        json.dump(result, result_file)


def memory_report(results: Dict[str, dict], device: str) -> dict:
    """Turn per-case baselines and peaks into increments and the bound."""
    increments = {
        name: results[name]['peak_mib'] - results[name]['baseline_mib']
        for name in CASES
    }
    bound = MEMORY_TOLERANCE * (
        increments['student_step'] + increments['teacher_forward'])
    if device == 'cuda':
        kind = 'CUDA max allocated, one fresh subprocess per case'
    else:
        kind = 'peak RSS (VmHWM), one fresh subprocess per case'
    return dict(
        kind=kind,
        unit='MiB',
        baseline={name: results[name]['baseline_mib'] for name in CASES},
        peak={name: results[name]['peak_mib'] for name in CASES},
        increment=increments,
        kd_minus_student_increment=(increments['kd_step'] -
                                    increments['student_step']),
        kd_minus_student_peak=(results['kd_step']['peak_mib'] -
                               results['student_step']['peak_mib']),
        kd_bound=bound,
        subprocesses=results)


# --------------------------------------------------------------------------
# Complexity and inference speed
# --------------------------------------------------------------------------


def forward_dummy(model, img: torch.Tensor) -> tuple:
    """Run ``OrientedRCNN.forward_dummy``'s graph on valid random proposals.

    mmrotate 0.3.4 draws the dummy proposals with ``torch.randn``, whose
    negative widths and heights the CPU kernel of RoIAlignRotated rejects. The
    FLOPs depend only on the number of proposals, which stays 1000.
    """
    feats = model.extract_feat(img)
    rpn_outs = model.rpn_head(feats)
    generator = torch.Generator().manual_seed(0)
    proposals = random_rotated_boxes(DUMMY_PROPOSALS, img.shape[-1],
                                     generator).to(img.device)
    roi_outs = model.roi_head.forward_dummy(feats, proposals)
    return rpn_outs, roi_outs


def count_flops(model, forward: Callable, img_size: int) -> float:
    """Return mmcv's FLOPs count (multiply-adds) of ``forward`` on one image."""
    model = copy.deepcopy(model).eval()
    model.forward = functools.partial(forward, model)
    with torch.no_grad():
        flops, _ = get_model_complexity_info(
            model, (3, img_size, img_size),
            print_per_layer_stat=False,
            as_strings=False)
    return float(flops)


def complexity(model, img_size: int) -> dict:
    """Count all parameters (frozen included) and the FLOPs of ``model``."""
    return dict(
        params=float(sum(param.numel() for param in model.parameters())),
        gflops=count_flops(model, forward_dummy, img_size) / 1e9,
        backbone_neck_gflops=count_flops(
            model, lambda detector, img: detector.extract_feat(img),
            img_size) / 1e9)


def detect_without_final_nms(model, img: torch.Tensor,
                             img_metas: List[dict]) -> torch.Tensor:
    """Run ``simple_test`` up to the RoI head's outputs on all proposals.

    The per-class rotated NMS after the RoI head is left out, because its cost
    grows with the number of boxes above ``score_thr``, which random weights
    inflate far beyond a trained detector's.

    Returns:
        Tensor: (num_proposals, num_classes + 1) RoI logits.
    """
    feats = model.extract_feat(img)
    proposal_list = model.rpn_head.simple_test_rpn(feats, img_metas)
    rois = rbbox2roi(proposal_list)
    return model.roi_head._bbox_forward(feats, rois)['cls_score']


def time_inference(models: Dict[str, torch.nn.Module], batch: dict,
                   iters: int, warmup: int, device: str,
                   seed: int) -> Dict[str, dict]:
    """Time ``detect_without_final_nms`` of each model on the batch, in turns."""
    img, img_metas = batch['img'], batch['img_metas']

    def inference(model) -> Callable[[], None]:

        def run_model() -> None:
            with torch.no_grad():
                detect_without_final_nms(model, img, img_metas)

        return run_model

    for model in models.values():
        model.eval()
    seconds = time_interleaved(
        {name: inference(model)
         for name, model in models.items()}, iters, warmup, device, seed)

    results = {}
    for name, samples in seconds.items():
        summary = summarize(samples)
        summary['images_per_s'] = img.shape[0] / summary['median']
        results[name] = summary
    return results


def count_operators(setup: BenchmarkSetup) -> Dict[str, Dict[str, int]]:
    """Run each case once under torch.profiler and count its operator calls.

    Returns:
        dict[str, dict[str, int]]: calls per operator name, for each case.
    """
    counts = {}
    for name in CASES:
        seed_everything(setup.args.seed)
        with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            setup.case(name)()
        counts[name] = {
            event.key: event.count
            for event in profiler.key_averages()
        }
    return counts


def operator_report(counts: Dict[str, Dict[str, int]]) -> dict:
    """Compare the distillation step's operator calls with (a) plus (b).

    Returns:
        dict: ``compute``, the calls of COMPUTE_OPERATORS per case, and
        ``extra``, the operators that (c) calls more often than (a) and (b)
        together, with the excess, most frequent first.
    """
    compute = {
        operator: {name: counts[name].get(operator, 0)
                   for name in CASES}
        for operator in COMPUTE_OPERATORS
    }
    excess = {}
    for operator, kd_calls in counts['kd_step'].items():
        floor_calls = (counts['student_step'].get(operator, 0) +
                       counts['teacher_forward'].get(operator, 0))
        if kd_calls > floor_calls:
            excess[operator] = kd_calls - floor_calls
    extra = sorted(excess.items(), key=lambda item: -item[1])
    return dict(compute=compute, extra=extra[:MAX_LISTED_OPERATORS])


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def cpu_model_name() -> str:
    try:
        with open('/proc/cpuinfo') as cpuinfo:
            for line in cpuinfo:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def machine_info(device: str) -> dict:
    import mmcv
    import mmdet
    import mmrotate
    info = dict(
        cpu=cpu_model_name(),
        cpu_cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        mmcv=mmcv.__version__,
        mmdet=mmdet.__version__,
        mmrotate=mmrotate.__version__,
        python=platform.python_version(),
        device=device,
        load_average_at_start=list(os.getloadavg()),
        date=time.strftime('%Y-%m-%d %H:%M %Z'))
    if device == 'cuda':
        info['gpu'] = torch.cuda.get_device_name()
    return info


def format_time(summary: dict) -> str:
    return (f'median {summary["median"]:8.3f} s   min {summary["min"]:8.3f}   '
            f'max {summary["max"]:8.3f}   IQR {summary["q1"]:.3f}-'
            f'{summary["q3"]:.3f}')


def verdict(passed: bool) -> str:
    return 'PASS' if passed else 'FAIL'


def header_lines(report: dict) -> List[str]:
    machine, settings = report['machine'], report['settings']
    gpu = f' ({machine["gpu"]})' if 'gpu' in machine else ''
    load_start = ', '.join(
        f'{value:.2f}' for value in machine['load_average_at_start'])
    load_end = ', '.join(
        f'{value:.2f}' for value in machine['load_average_at_end'])
    lines = ['', '=' * 78, 'KD benchmark', '=' * 78]
    lines.append(f'machine: {machine["cpu"]}, {machine["cpu_cores"]} cores, '
                 f'{machine["torch_threads"]} torch threads; torch '
                 f'{machine["torch"]}, mmcv {machine["mmcv"]}, mmdet '
                 f'{machine["mmdet"]}, mmrotate {machine["mmrotate"]}')
    lines.append(f'device: {machine["device"]}{gpu}   date: '
                 f'{machine["date"]}')
    lines.append(f'load average (1, 5, 15 min): {load_start} at start, '
                 f'{load_end} at end')
    if machine['busy']:
        lines.append('NOTE: other processes kept the CPUs busy; the timings '
                     'include waiting for them')
    lines.append(f'config: {settings["config"]}')
    lines.append(f'input: {settings["batch"]} x 3 x {settings["img_size"]} x '
                 f'{settings["img_size"]}, {settings["inputs"]}; '
                 f'{settings["sampled_rois"]} sampled RoIs; teacher weights: '
                 f'{settings["teacher_weights"]}; teacher_fp16='
                 f'{settings["teacher_fp16"]}')
    lines.append(f'timing: {settings["iters"]} iterations after '
                 f'{settings["warmup"]} warm-up, cases interleaved')
    return lines


def timing_lines(report: dict) -> List[str]:
    lines = ['', 'Time per step']
    for name in CASES:
        lines.append(f'  {CASE_LABELS[name]:42s} '
                     f'{format_time(report["timing"][name])}')
    ratios = report['ratios']
    lines += ['', 'Ratios (of medians)']
    lines.append(f'  c / (a + b) = {ratios["kd_over_student_plus_teacher"]:.3f}'
                 f'   (c - (a + b) = {ratios["overhead_s"]:+.3f} s)')
    lines.append(f'  c / a       = {ratios["kd_over_student"]:.3f}')
    return lines


def memory_lines(report: dict) -> List[str]:
    memory = report['memory']
    lines = ['', f'(d) Peak memory, MiB: {memory["kind"]}']
    lines.append(f'  {"case":42s} {"baseline":>9s} {"peak":>9s} '
                 f'{"increment":>10s}')
    for name in CASES:
        lines.append(f'  {CASE_LABELS[name]:42s} '
                     f'{memory["baseline"][name]:9.1f} '
                     f'{memory["peak"][name]:9.1f} '
                     f'{memory["increment"][name]:10.1f}')
    lines.append('  baseline: after importing and building everything, before '
                 'the first step; increment = peak - baseline')
    lines.append(f'  KD minus student: increment '
                 f'{memory["kd_minus_student_increment"]:+.1f} MiB, peak '
                 f'{memory["kd_minus_student_peak"]:+.1f} MiB')
    return lines


def model_lines(report: dict) -> List[str]:
    complexity_report = report['complexity']
    lines = [
        '', 'Parameters and FLOPs (mmcv get_model_complexity_info, input '
        f'{complexity_report["input_shape"]}; forward_dummy: backbone, neck, '
        f'RPN head, RoI head on {DUMMY_PROPOSALS} proposals)'
    ]
    for name in ('student', 'teacher'):
        entry = complexity_report[name]
        lines.append(f'  {name:8s} {entry["detector"]:6s} params '
                     f'{entry["params"] / 1e6:6.2f} M   FLOPs '
                     f'{entry["gflops"]:7.2f} G   of which backbone + neck '
                     f'{entry["backbone_neck_gflops"]:7.2f} G')

    inference = report['inference']
    lines += [
        '', f'Inference, batch {report["settings"]["batch"]} (simple_test '
        'without the final per-class NMS)'
    ]
    for name in ('student', 'teacher'):
        entry = inference[name]
        lines.append(f'  {name:8s} {entry["images_per_s"]:8.2f} images/s   '
                     f'{format_time(entry)}')
    lines.append(f'  student speed-up over teacher: '
                 f'{inference["student_speedup"]:.2f}x')
    return lines


def operator_lines(report: dict) -> List[str]:
    if 'operators' not in report:
        return []
    operators = report['operators']
    lines = ['', 'Operator calls, one run of each case (torch.profiler)']
    lines.append(f'  {"operator":34s} {"(a)":>6s} {"(b)":>6s} {"(c)":>6s} '
                 f'{"c-a-b":>6s}')
    for operator, calls in operators['compute'].items():
        difference = (calls['kd_step'] - calls['student_step'] -
                      calls['teacher_forward'])
        lines.append(f'  {operator:34s} {calls["student_step"]:6d} '
                     f'{calls["teacher_forward"]:6d} {calls["kd_step"]:6d} '
                     f'{difference:+6d}')
    extra = ', '.join(f'{operator} +{count}'
                      for operator, count in operators['extra'])
    lines.append(f'  called more often in (c) than in (a) + (b): '
                 f'{extra or "none"}')
    return lines


def target_lines(report: dict) -> List[str]:
    time_target = report['targets']['time']
    memory_target = report['targets']['memory']
    setting_note = ('' if time_target['at_target_setting'] else
                    f'  (the target is set for {TARGET_DEVICE}, '
                    f'{TARGET_IMG_SIZE} px, batch {TARGET_BATCH})')
    return [
        '', 'Targets',
        f'  time:   c <= {TIME_TOLERANCE:.2f} x (a + b): '
        f'{time_target["value"]:.3f} s <= {time_target["limit"]:.3f} s  '
        f'{verdict(time_target["passed"])}{setting_note}',
        f'  memory: KD increment <= {MEMORY_TOLERANCE:.2f} x (student '
        f'increment + teacher increment): {memory_target["value"]:.1f} MiB '
        f'<= {memory_target["limit"]:.1f} MiB  '
        f'{verdict(memory_target["passed"])}', '=' * 78
    ]


def format_report(report: dict) -> str:
    return '\n'.join(
        header_lines(report) + timing_lines(report) + memory_lines(report) +
        model_lines(report) + operator_lines(report) + target_lines(report))


def all_finite(value) -> bool:
    """Return whether every float inside a nested report is finite."""
    if isinstance(value, dict):
        return all(all_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(item) for item in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def run_benchmark(args: argparse.Namespace) -> dict:
    """Run every measurement and return the report as a dict."""
    machine = machine_info(args.device)
    setup = BenchmarkSetup(args)

    timing_samples = time_interleaved(
        {name: setup.case(name)
         for name in CASES}, args.iters, args.warmup, args.device, args.seed)
    timing = {name: summarize(timing_samples[name]) for name in CASES}
    student_time = timing['student_step']['median']
    teacher_time = timing['teacher_forward']['median']
    kd_time = timing['kd_step']['median']

    # Before the inference timing, which puts the student in eval mode.
    operators = None
    if args.count_ops:
        operators = operator_report(count_operators(setup))

    memory = memory_report(measure_memory(args, setup.rois), args.device)

    complexity_report = dict(
        input_shape=f'(1, 3, {args.img_size}, {args.img_size})',
        student=dict(
            detector='lsk_t', **complexity(setup.student, args.img_size)),
        teacher=dict(
            detector='lsk_s', **complexity(setup.kd.teacher, args.img_size)))
    inference = time_inference(
        dict(student=setup.student, teacher=setup.kd.teacher), setup.batch,
        args.iters, args.warmup, args.device, args.seed)
    inference['student_speedup'] = (
        inference['student']['images_per_s'] /
        inference['teacher']['images_per_s'])

    machine['load_average_at_end'] = list(os.getloadavg())
    machine['busy'] = args.device == 'cpu' and max(
        machine['load_average_at_start'][0],
        machine['load_average_at_end'][0]) > BUSY_LOAD_PER_CORE * (
            os.cpu_count() or 1)
    time_limit = TIME_TOLERANCE * (student_time + teacher_time)
    report = dict(
        machine=machine,
        settings=dict(
            config=args.config,
            img_size=args.img_size,
            batch=args.batch,
            iters=args.iters,
            warmup=args.warmup,
            mem_iters=args.mem_iters,
            seed=args.seed,
            inputs=(f'DOTA patches from {args.data_root}'
                    if args.data_root else 'generated images'),
            sampled_rois=int(setup.rois.shape[0]),
            teacher_weights=args.teacher_ckpt or 'random',
            teacher_fp16=bool(setup.kd.teacher_fp16)),
        timing=timing,
        ratios=dict(
            kd_over_student_plus_teacher=kd_time /
            (student_time + teacher_time),
            kd_over_student=kd_time / student_time,
            overhead_s=kd_time - (student_time + teacher_time)),
        memory=memory,
        complexity=complexity_report,
        inference=inference,
        targets=dict(
            time=dict(
                value=kd_time,
                limit=time_limit,
                passed=kd_time <= time_limit,
                at_target_setting=(args.device, args.img_size,
                                   args.batch) == (TARGET_DEVICE,
                                                   TARGET_IMG_SIZE,
                                                   TARGET_BATCH)),
            memory=dict(
                value=memory['increment']['kd_step'],
                limit=memory['kd_bound'],
                passed=memory['increment']['kd_step'] <= memory['kd_bound'])))
    if operators is not None:
        report['operators'] = operators
    report['all_finite'] = all_finite(report)
    return report


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    # The first call sets the level. Warnings stay, and the INFO line that
    # init_weights logs per parameter goes.
    get_root_logger(log_level=logging.WARNING)
    logging.getLogger('mmcv').setLevel(logging.WARNING)

    if args.memory_case is not None:
        run_memory_case(args)
        return

    report = run_benchmark(args)
    print(format_report(report), flush=True)
    if args.json:
        with open(args.json, 'w') as json_file:
            json.dump(report, json_file, indent=2)


if __name__ == '__main__':
    main()
