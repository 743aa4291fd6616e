"""The distillation demo: its synthetic DOTA dataset, its overrides and a smoke run.

The smoke run starts tools/demo/run_demo.py --quick. It trains, distils and tests
three models for 2 iterations each through tools/train.py and tools/test.py,
which takes 1-2 minutes on 2 idle CPU cores.
"""
import filecmp
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
from mmcv import Config
from mmrotate.datasets import build_dataset
from mmrotate.datasets.dota import DOTADataset as MMRotateDOTADataset
from shapely.geometry import Polygon

from conftest import REPO_ROOT

DEMO_DIR = osp.join(REPO_ROOT, 'tools', 'demo')
sys.path.insert(0, DEMO_DIR)

import demo_config  # noqa: E402
import make_dataset  # noqa: E402
import run_demo  # noqa: E402

IMAGE_SIZE = 128
NUM_TRAIN = 5
NUM_VAL = 3
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def generate(out_dir, seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL, **kwargs):
    return make_dataset.generate_dataset(
        str(out_dir), seed=seed, num_train=num_train, num_val=num_val,
        image_size=IMAGE_SIZE, **kwargs)


def files_under(folder):
    return sorted(
        osp.relpath(osp.join(root, name), folder)
        for root, _, names in os.walk(folder) for name in names)


def read_labels(label_path):
    with open(label_path, encoding='utf-8') as label_file:
        return [line.split() for line in label_file]


@pytest.fixture(scope='module')
def dataset_dir(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('synthetic_dota')
    summary = generate(out_dir, seed=3)
    return str(out_dir), summary


def test_dataset_has_dota_layout(dataset_dir):
    out_dir, _ = dataset_dir
    for split, count in (('train', NUM_TRAIN), ('val', NUM_VAL)):
        images = sorted(os.listdir(osp.join(out_dir, split, 'images')))
        labels = sorted(os.listdir(osp.join(out_dir, split, 'labelTxt')))
        assert len(images) == count
        assert [name[:-4] for name in images] == [name[:-4] for name in labels]
        assert all(name.endswith('.png') for name in images)
        assert all(name.endswith('.txt') for name in labels)


def test_same_seed_gives_identical_bytes(tmp_path):
    generate(tmp_path / 'first', seed=7)
    generate(tmp_path / 'second', seed=7)

    names = files_under(tmp_path / 'first')
    assert names == files_under(tmp_path / 'second')
    assert len(names) == 2 * (NUM_TRAIN + NUM_VAL)
    _, mismatch, errors = filecmp.cmpfiles(
        tmp_path / 'first', tmp_path / 'second', names, shallow=False)
    assert mismatch == []
    assert errors == []


def test_other_seed_gives_other_images(tmp_path):
    generate(tmp_path / 'seed0', seed=0)
    generate(tmp_path / 'seed1', seed=1)

    image_name = osp.join('train', 'images', 'train_0000.png')
    assert not filecmp.cmp(tmp_path / 'seed0' / image_name,
                           tmp_path / 'seed1' / image_name, shallow=False)


def test_image_does_not_depend_on_image_count(tmp_path):
    generate(tmp_path / 'few', num_train=2, num_val=1)
    generate(tmp_path / 'many', num_train=4, num_val=2)

    for name in ('train/images/train_0001.png', 'train/labelTxt/train_0001.txt',
                 'val/images/val_0000.png'):
        assert filecmp.cmp(tmp_path / 'few' / name, tmp_path / 'many' / name,
                           shallow=False), name


def test_splits_do_not_share_images(dataset_dir):
    out_dir, _ = dataset_dir
    train_image = cv2.imread(osp.join(out_dir, 'train', 'images', 'train_0000.png'))
    val_image = cv2.imread(osp.join(out_dir, 'val', 'images', 'val_0000.png'))

    assert not np.array_equal(train_image, val_image)


def test_label_lines_are_dota_v1(dataset_dir):
    out_dir, summary = dataset_dir
    num_objects = 0
    for split in make_dataset.SPLITS:
        label_dir = osp.join(out_dir, split, 'labelTxt')
        for name in sorted(os.listdir(label_dir)):
            image = cv2.imread(osp.join(out_dir, split, 'images', name[:-4] + '.png'))
            assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
            for fields in read_labels(osp.join(label_dir, name)):
                assert len(fields) == 10, fields
                corners = np.array(fields[:8], dtype=float).reshape(4, 2)
                assert fields[8] in make_dataset.DEFAULT_CLASSES
                assert fields[8] in make_dataset.DOTA_V1_CLASSES
                assert fields[9] == '0'
                assert corners.min() >= 0, (name, fields)
                assert corners.max() <= IMAGE_SIZE - 1, (name, fields)
                num_objects += 1
        assert summary[split]['objects'] == sum(
            len(read_labels(osp.join(label_dir, name)))
            for name in os.listdir(label_dir))
    assert num_objects > 0


def test_boxes_are_rectangles_that_do_not_overlap(dataset_dir):
    out_dir, _ = dataset_dir
    label_dir = osp.join(out_dir, 'train', 'labelTxt')
    angles = set()
    for name in sorted(os.listdir(label_dir)):
        polygons = []
        for fields in read_labels(osp.join(label_dir, name)):
            corners = np.array(fields[:8], dtype=float).reshape(4, 2)
            sides = np.roll(corners, -1, axis=0) - corners
            # Adjacent sides are perpendicular, to the 0.1 pixel of the labels.
            dots = np.abs(np.sum(sides * np.roll(sides, -1, axis=0), axis=1))
            assert dots.max() < 0.5 * np.linalg.norm(sides, axis=1).max(), fields
            angles.add(round(float(np.degrees(np.arctan2(sides[0, 1], sides[0, 0])))))
            polygons.append(Polygon(corners))
        for first in range(len(polygons)):
            for second in range(first + 1, len(polygons)):
                assert not polygons[first].intersects(polygons[second]), name
    # Objects appear at many orientations, not only axis-aligned.
    assert len(angles) > 5


def test_generate_rejects_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match='not a DOTA-v1.0 class'):
        generate(tmp_path, classes=('plane', 'car'))
    with pytest.raises(ValueError, match='no synthetic style'):
        generate(tmp_path, classes=('plane', 'bridge'))
    with pytest.raises(ValueError, match='duplicates'):
        generate(tmp_path, classes=('plane', 'plane'))
    with pytest.raises(ValueError, match='image_size'):
        make_dataset.generate_dataset(str(tmp_path), image_size=32)
    with pytest.raises(ValueError, match='objects_per_image'):
        generate(tmp_path, objects_per_image=(4, 2))
    assert not os.listdir(tmp_path)


def test_command_line_writes_dataset(tmp_path):
    completed = subprocess.run(
        [sys.executable, osp.join(DEMO_DIR, 'make_dataset.py'), str(tmp_path),
         '--num-train', '2', '--num-val', '1', '--image-size', '128',
         '--classes', 'ship', 'harbor'],
        capture_output=True, text=True, check=False)

    assert completed.returncode == 0, completed.stderr
    assert 'train: 2 images' in completed.stdout
    labels = [fields[8] for name in os.listdir(tmp_path / 'train' / 'labelTxt')
              for fields in read_labels(tmp_path / 'train' / 'labelTxt' / name)]
    assert set(labels) <= {'ship', 'harbor'}
    assert labels


def test_mmrotate_dota_dataset_loads_every_box(dataset_dir):
    out_dir, summary = dataset_dir
    for split in make_dataset.SPLITS:
        dataset = MMRotateDOTADataset(
            ann_file=osp.join(out_dir, split, 'labelTxt') + '/',
            img_prefix=osp.join(out_dir, split, 'images') + '/',
            pipeline=[],
            version='le90',
            test_mode=True)
        boxes = [dataset.get_ann_info(index)['bboxes'] for index in range(len(dataset))]
        labels = np.concatenate(
            [dataset.get_ann_info(index)['labels'] for index in range(len(dataset))])

        assert len(dataset) == summary[split]['images']
        assert sum(len(box) for box in boxes) == summary[split]['objects']
        assert {dataset.CLASSES[label] for label in labels} <= set(
            make_dataset.DEFAULT_CLASSES)
        assert min(box[:, 2:4].min() for box in boxes if len(box)) > 2


def demo_data(out_dir):
    return demo_config.DemoData(
        train_img_dir=osp.join(out_dir, 'train', 'images'),
        train_ann_dir=osp.join(out_dir, 'train', 'labelTxt'),
        val_img_dir=osp.join(out_dir, 'val', 'images'),
        val_ann_dir=osp.join(out_dir, 'val', 'labelTxt'),
        classes=make_dataset.DEFAULT_CLASSES)


def test_demo_overrides_load_dataset_in_train_pipeline(dataset_dir):
    out_dir, summary = dataset_dir
    size = demo_config.DemoModelSize(image_size=IMAGE_SIZE)
    base = Config.fromfile(demo_config.STUDENT_CONFIG)
    options = demo_config.data_options(base, demo_data(out_dir), size)
    cfg = demo_config.merged_config(demo_config.STUDENT_CONFIG,
                                    demo_config.format_cfg_options(options))

    train_dataset = build_dataset(cfg.data.train)
    val_dataset = build_dataset(dict(cfg.data.test, test_mode=True))
    sample = train_dataset[0]

    assert train_dataset.CLASSES == make_dataset.DEFAULT_CLASSES
    assert len(train_dataset) == summary['train']['images']
    assert len(val_dataset) == summary['val']['images']
    assert sample['img'].data.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE)
    assert sample['gt_bboxes'].data.shape[1] == 5
    # storage-tank is index 2 of the demo classes; PolyRandomRotate keeps it upright.
    assert cfg.data.train.pipeline[4].rect_classes == [2]


def test_cfg_options_survive_dictaction_round_trip():
    options = {
        'a.path': '/tmp/demo/train/labelTxt',
        'a.none': None,
        'a.int': 300,
        'a.float': 4e-4,
        'a.tuple': ('plane', 'ship', 'storage-tank'),
        'a.scale': (256, 256),
        'a.list': [160],
        'a.flag': True,
    }

    arguments = demo_config.format_cfg_options(options)

    assert demo_config.parse_cfg_options(arguments) == options


def test_cfg_options_reject_unsafe_values():
    with pytest.raises(ValueError, match='empty list'):
        demo_config.format_cfg_options({'a.list': []})
    with pytest.raises(ValueError, match='removes or splits'):
        demo_config.check_option_path('/tmp/my outputs')
    with pytest.raises(ValueError, match='removes or splits'):
        demo_config.check_option_path('/tmp/a,b')


def test_training_line_summary():
    line = ('2026-01-01 00:00:00,000 - mmrotate - INFO - Iter [25/200]\tlr: '
            '4.000e-04, eta: 0:03:10, time: 1.2, loss_rpn_cls: 0.3, loss_cls: '
            '0.4391, acc: 90.0, loss_bbox: 0.4815, loss_distill: 0.0123, loss: '
            '1.3703, grad_norm: 5.0')

    assert run_demo.summarise_training_line(line) == (
        'iter 25/200 (eta 0:03:10): loss 1.3703, loss_cls 0.4391, loss_bbox '
        '0.4815, loss_distill 0.0123')
    assert run_demo.summarise_training_line(line.replace('[25/', '[20/')) is None
    assert run_demo.summarise_training_line('Saving checkpoint') is None


def run_demo_process(*arguments):
    return subprocess.run(
        [sys.executable, osp.join(DEMO_DIR, 'run_demo.py'), *arguments],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False)


def test_demo_rejects_foreign_output_folder(tmp_path):
    (tmp_path / 'notes.txt').write_text('keep me')

    completed = run_demo_process('--quick', '--out-dir', str(tmp_path))

    assert completed.returncode == 1
    assert 'not written by the demo' in completed.stderr
    assert (tmp_path / 'notes.txt').read_text() == 'keep me'


def test_quick_demo_writes_table_and_figures(tmp_path):
    out_dir = tmp_path / 'demo'

    completed = run_demo_process('--quick', '--out-dir', str(out_dir))

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for step in range(1, run_demo.NUM_STEPS + 1):
        assert f'step {step}/{run_demo.NUM_STEPS}' in completed.stdout
    with open(out_dir / 'results.json', encoding='utf-8') as results_file:
        models = json.load(results_file)['models']
    assert [model['name'] for model in models] == ['teacher', 'distilled', 'baseline']
    for model in models:
        assert list(model['class_ap']) == list(make_dataset.DEFAULT_CLASSES)
        assert 0 <= model['map'] <= 1
        assert model['iterations'] == 2
    # LSKNet-S is larger than LSKNet-T; the distilled checkpoint is the student alone.
    assert models[0]['params'] > models[1]['params'] == models[2]['params']
    table = (out_dir / 'results.md').read_text()
    for description in ('LSKNet-S teacher', 'LSKNet-T distilled', 'LSKNet-T baseline'):
        assert description in table
    for figure in ('loss_curves.png', 'detections.png'):
        assert (out_dir / figure).read_bytes()[:8] == PNG_SIGNATURE
    for run in ('teacher', 'distilled', 'baseline'):
        assert (out_dir / 'work_dirs' / run / 'iter_2.pth').is_file()
        assert (out_dir / 'work_dirs' / run / 'val_results.pkl').is_file()
    teacher_cfg = Config.fromfile(str(out_dir / 'configs' / 'teacher_lsk_s_demo.py'))
    assert teacher_cfg.model.roi_head.bbox_head.num_classes == 4
    assert teacher_cfg.model.backbone.embed_dims == [64, 128, 320, 512]
    distill_log = (out_dir / 'logs' / '3_train_distilled.log').read_text()
    assert 'loss_distill' in distill_log
