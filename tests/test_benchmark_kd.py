"""benchmark_kd.py on a tiny setting, and what the teacher's forward pass promises.

The smoke run checks that the tool's report is complete and finite, not its
numbers: timings of one iteration at 128 px mean nothing. The other tests pin
the teacher forward that the tool times: it builds no autograd graph, keeps no
memory across calls, and runs in bf16 or fp32 as ``teacher_fp16`` selects.
"""
import functools
import gc
import importlib.util
import json
import logging
import math
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import lsknet  # noqa: F401 (registers the lsknet modules)
from conftest import REPO_ROOT
from kd_helpers import KD_CONFIG, TEACHER_CONFIG, build, kd_model_cfg
from lsknet.models.detectors.kd_oriented_rcnn import teacher_autocast

TOOL = osp.join(REPO_ROOT, 'tools', 'analysis_tools', 'benchmark_kd.py')
# A tiny run: one image of 128 px, 64 sampled RoIs, 200 proposals, one
# iteration of everything, the three memory subprocesses side by side, and the
# operator counts.
SMOKE_ARGS = [
    '--img-size', '128', '--batch', '1', '--iters', '1', '--warmup', '0',
    '--mem-iters', '1', '--mem-jobs', '3', '--count-ops', '--cfg-options',
    'model.train_cfg.rcnn.sampler.num=64',
    'model.train_cfg.rpn_proposal.max_per_img=200',
    'model.test_cfg.rpn.max_per_img=200'
]
SMOKE_SAMPLED_ROIS = 64
SMOKE_TIMEOUT_S = 300
CASES = ('student_step', 'teacher_forward', 'kd_step')
# Their call counts do not depend on which pyramid level each RoI maps to.
DENSE_OPERATORS = ('aten::convolution', 'aten::convolution_backward',
                   'aten::addmm', 'aten::mm')
# Teacher inputs of the in-process tests.
IMAGE_SIZE = 128
NUM_ROIS = 64
# bf16 keeps 8 significant bits, so each rounded operation may add a relative
# error of 2**-8 (0.4 %). Through the teacher's layers the logits drift by about
# 1 % of their largest magnitude on this input. 4 % leaves room for that drift,
# while a wrong dtype path (fp16 overflow, a skipped layer) moves logits by
# their own size.
BF16_LOGIT_TOLERANCE = 0.04
# Ten extra teacher forwards at 256 px: leaking just their five feature levels
# would add 10 x 5.6 MB, and a kept autograd graph hundreds of MB. Allocator
# noise after malloc_trim stays under a few MB.
LEAK_CHECK_IMAGE_SIZE = 256
LEAK_CHECK_FORWARDS = 10
RSS_GROWTH_MARGIN_MIB = 24
FP16_CPU_WARNING = 'teacher_fp16=True has no effect on the CPU'


@functools.lru_cache(maxsize=None)
def load_tool():
    spec = importlib.util.spec_from_file_location('benchmark_kd', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_rois(img_size: int, count: int, seed: int = 0) -> torch.Tensor:
    """Return (count, 6) valid rotated RoIs on image 0."""
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand(count, 5, generator=generator)
    return torch.stack([
        torch.zeros(count), uniform[:, 0] * img_size, uniform[:, 1] * img_size,
        8 + uniform[:, 2] * img_size / 3, 8 + uniform[:, 3] * img_size / 6,
        (uniform[:, 4] - 0.5) * math.pi
    ], dim=1)


def teacher_logits(kd, img: torch.Tensor, rois: torch.Tensor):
    teacher_feats = kd.extract_teacher_feat(img)
    return teacher_feats, kd.teacher_cls_score(teacher_feats, rois)


def live_tensor_count() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))


def rss_mib() -> float:
    tool = load_tool()
    tool.release_free_memory()
    return tool.read_status_kib('VmRSS') / 1024.0


class RecordingHandler(logging.Handler):

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def one_thread():
    """Run torch on one thread, because on a busy 2-core machine two threads wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def kd():
    """A KD detector with the LSKNet-S teacher at random weights."""
    return build(kd_model_cfg(TEACHER_CONFIG, None, allow_random_teacher=True))


@pytest.fixture
def kd_fp16():
    """A fresh KD detector configured with teacher_fp16=True, not yet warned."""
    return build(
        kd_model_cfg(TEACHER_CONFIG, None, allow_random_teacher=True,
                     teacher_fp16=True))


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory, dota_patch_root):
    json_path = tmp_path_factory.mktemp('benchmark') / 'report.json'
    # One thread keeps the run near 30 s even while other tests load the CPUs.
    env = dict(os.environ, OMP_NUM_THREADS='1')
    completed = subprocess.run(
        [sys.executable, TOOL, KD_CONFIG, '--data-root', dota_patch_root,
         '--json', str(json_path)] + SMOKE_ARGS,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=SMOKE_TIMEOUT_S)
    assert completed.returncode == 0, completed.stdout[-4000:]
    with open(json_path) as json_file:
        report = json.load(json_file)
    return completed.stdout, report


def test_smoke_prints_every_section(smoke_run):
    output, _ = smoke_run
    for heading in ('machine: ', 'Time per step', '(a) student training step',
                    '(b) teacher forward', '(c) KD training step',
                    'c / (a + b) = ', 'c / a       = ', '(d) Peak memory',
                    'KD minus student', 'Parameters and FLOPs', 'images/s',
                    'student speed-up over teacher', 'Targets'):
        assert heading in output, heading


def test_smoke_prints_a_verdict_per_target(smoke_run):
    output, _ = smoke_run
    time_line = next(line for line in output.splitlines()
                     if line.strip().startswith('time:'))
    memory_line = next(line for line in output.splitlines()
                       if line.strip().startswith('memory:'))
    assert 'PASS' in time_line or 'FAIL' in time_line
    assert 'PASS' in memory_line or 'FAIL' in memory_line


def test_smoke_report_numbers_are_finite(smoke_run):
    _, report = smoke_run
    assert report['all_finite'] is True
    for name in CASES:
        assert report['timing'][name]['median'] > 0, name
        assert len(report['timing'][name]['samples']) == 1, name
        assert report['memory']['peak'][name] > report['memory']['baseline'][
            name] > 0, name
    assert report['ratios']['kd_over_student_plus_teacher'] > 0
    assert report['ratios']['kd_over_student'] > 0


def test_smoke_report_describes_the_run(smoke_run):
    _, report = smoke_run
    assert report['settings']['sampled_rois'] == SMOKE_SAMPLED_ROIS
    assert report['settings']['inputs'].startswith('DOTA patches')
    assert report['machine']['torch_threads'] == 1
    assert report['machine']['cpu_cores'] == os.cpu_count()


def test_smoke_report_counts_student_below_teacher(smoke_run):
    _, report = smoke_run
    student = report['complexity']['student']
    teacher = report['complexity']['teacher']
    # Parameters are counted frozen or not: LSKNet-T and LSKNet-S Oriented
    # R-CNN have about 21.0 M and 31.0 M.
    assert 20.5e6 < student['params'] < 21.5e6
    assert 30.5e6 < teacher['params'] < 31.5e6
    assert 0 < student['backbone_neck_gflops'] < teacher[
        'backbone_neck_gflops']
    assert student['gflops'] < teacher['gflops']
    assert report['inference']['student']['images_per_s'] > 0
    assert report['inference']['teacher']['images_per_s'] > 0


def test_smoke_kd_step_adds_no_dense_operators(smoke_run):
    output, report = smoke_run
    compute = report['operators']['compute']

    assert 'Operator calls' in output
    for operator in DENSE_OPERATORS:
        calls = compute[operator]
        assert calls['student_step'] > 0, operator
        assert calls['kd_step'] == (calls['student_step'] +
                                    calls['teacher_forward']), operator


def test_generated_batch_holds_valid_le90_boxes():
    tool = load_tool()
    batch = tool.generate_batch(64, 2, 15, seed=3)
    again = tool.generate_batch(64, 2, 15, seed=3)

    assert batch['img'].shape == (2, 3, 64, 64)
    assert torch.equal(batch['img'], again['img'])
    for boxes, labels in zip(batch['gt_bboxes'], batch['gt_labels']):
        assert boxes.shape == (tool.GENERATED_BOXES_PER_IMAGE, 5)
        assert ((boxes[:, :2] > 0) & (boxes[:, :2] < 64)).all()
        assert (boxes[:, 2] >= boxes[:, 3]).all()
        assert (boxes[:, 3] >= tool.MIN_BOX_SIZE).all()
        assert ((boxes[:, 4] >= -math.pi / 2) & (boxes[:, 4] < math.pi / 2)).all()
        assert ((labels >= 0) & (labels < 15)).all()


def test_student_config_drops_every_teacher_key():
    tool = load_tool()
    kd_model = kd_model_cfg(TEACHER_CONFIG, None, allow_random_teacher=True,
                            teacher_fp16=True)

    student_model = tool.student_model_config(kd_model)

    assert student_model['type'] == 'OrientedRCNN'
    assert student_model['roi_head']['type'] == 'OrientedStandardRoIHead'
    assert 'loss_distill' not in student_model['roi_head']['bbox_head']
    for key in tool.TEACHER_KEYS:
        assert key not in student_model, key
    assert kd_model['type'] == 'KDOrientedRCNN'


def test_teacher_outputs_have_no_autograd_graph(kd, one_thread):
    img = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, requires_grad=True)
    rois = random_rois(IMAGE_SIZE, NUM_ROIS)

    with torch.enable_grad():
        teacher_feats, logits = teacher_logits(kd, img, rois)

    for level, feat in enumerate(teacher_feats):
        assert not feat.requires_grad, f'level {level}'
        assert feat.grad_fn is None, f'level {level}'
    assert not logits.requires_grad
    assert logits.grad_fn is None
    assert logits.shape == (NUM_ROIS, 16)


def test_teacher_forwards_do_not_accumulate_memory(kd, one_thread):
    img = torch.randn(1, 3, LEAK_CHECK_IMAGE_SIZE, LEAK_CHECK_IMAGE_SIZE)
    rois = random_rois(LEAK_CHECK_IMAGE_SIZE, NUM_ROIS)
    # Warm-up: the allocator and oneDNN fill their caches on the first calls.
    for _ in range(2):
        teacher_logits(kd, img, rois)
    tensors_before = live_tensor_count()
    rss_before = rss_mib()

    for _ in range(LEAK_CHECK_FORWARDS):
        teacher_logits(kd, img, rois)

    assert live_tensor_count() <= tensors_before
    assert rss_mib() - rss_before < RSS_GROWTH_MARGIN_MIB


def test_teacher_bf16_logits_close_to_fp32(kd, one_thread, monkeypatch):
    with teacher_autocast('cpu', True, torch.bfloat16):
        supported = (torch.is_autocast_cpu_enabled()
                     and torch.get_autocast_cpu_dtype() == torch.bfloat16)
    if not supported:
        pytest.skip('torch reports CPU bf16 autocast as unsupported')
    img = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    rois = torch.cat([
        random_rois(IMAGE_SIZE, NUM_ROIS, seed=1),
        random_rois(IMAGE_SIZE, NUM_ROIS, seed=2)
    ])
    rois[NUM_ROIS:, 0] = 1
    _, fp32_logits = teacher_logits(kd, img, rois)

    monkeypatch.setattr(
        kd, '_teacher_autocast',
        lambda device: teacher_autocast(device.type, True, torch.bfloat16))
    bf16_feats, bf16_logits = teacher_logits(kd, img, rois)

    assert all(feat.dtype == torch.bfloat16 for feat in bf16_feats)
    assert bf16_logits.dtype == torch.float32
    scale = fp32_logits.abs().max().item()
    assert scale > 0.1, 'logits too small for a relative tolerance'
    max_error = (bf16_logits - fp32_logits).abs().max().item()
    assert max_error <= BF16_LOGIT_TOLERANCE * scale, (max_error, scale)


def test_cpu_teacher_fp16_warns_once(kd_fp16, one_thread):
    img = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    rois = random_rois(IMAGE_SIZE, NUM_ROIS)
    handler = RecordingHandler()
    logger = logging.getLogger('mmrotate')
    logger.addHandler(handler)
    try:
        teacher_logits(kd_fp16, img, rois)
        teacher_logits(kd_fp16, img, rois)
    finally:
        logger.removeHandler(handler)

    warnings = [msg for msg in handler.messages if FP16_CPU_WARNING in msg]
    assert len(warnings) == 1


def test_cpu_teacher_fp16_keeps_fp32_logits(kd_fp16, one_thread, monkeypatch):
    img = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    rois = random_rois(IMAGE_SIZE, NUM_ROIS)
    teacher_feats, fp16_mode_logits = teacher_logits(kd_fp16, img, rois)

    monkeypatch.setattr(kd_fp16, 'teacher_fp16', False)
    _, fp32_mode_logits = teacher_logits(kd_fp16, img, rois)

    assert all(feat.dtype == torch.float32 for feat in teacher_feats)
    assert fp16_mode_logits.dtype == torch.float32
    torch.testing.assert_close(
        fp16_mode_logits, fp32_mode_logits, rtol=0, atol=0)
