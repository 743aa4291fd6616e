"""Bad DOTA inputs: how label lines, label files and images are handled.

Each test writes the bad input under ``tmp_path`` (the real sample is read-only and
never copied into the repository) and checks what ``lsknet``'s ``DOTADataset`` and
``LoadImageFromFile`` load, skip, log or raise.
"""
import logging
import os.path as osp
import shutil
from collections import Counter

import cv2
import mmcv
import numpy as np
import pytest
import torch
from mmcv.image import io as mmcv_image_io
from mmcv.parallel import collate
from mmcv.utils import build_from_cfg
from mmdet.datasets import DATASETS, PIPELINES
from mmrotate.datasets import build_dataset

import lsknet  # noqa: F401 (registers the modules)
from kd_helpers import IMAGE_SIZE, build, plain_model_cfg
from lsknet.datasets import DOTADataset, LoadImageFromFile
from lsknet.datasets.dota import polygon_to_rbox

CLASSES = DOTADataset.CLASSES
# A 30 x 20 pixel axis-aligned rectangle inside a 64 x 64 image.
GOOD_POLYGON = '10 10 40 10 40 30 10 30'
IMG_NORM_CFG = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def write_image(path, height=64, width=64, channels=3):
    shape = (height, width) if channels == 1 else (height, width, channels)
    image = np.random.RandomState(0).randint(0, 256, shape, dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return str(path)


def make_dataset(tmp_path, labels, extra_images=(), newline='\n',
                 image_size=(64, 64), pipeline=(), **kwargs):
    """Write label files ``{stem: [line, ...]}``, one image per stem, and build.

    ``labels`` values may also be ``bytes``, written as they are.
    """
    label_dir = tmp_path / 'labelTxt'
    image_dir = tmp_path / 'images'
    label_dir.mkdir(exist_ok=True)
    image_dir.mkdir(exist_ok=True)
    for stem, lines in labels.items():
        content = lines if isinstance(lines, bytes) else newline.join(
            lines).encode()
        (label_dir / f'{stem}.txt').write_bytes(content)
        write_image(image_dir / f'{stem}.png', *image_size)
    for name in extra_images:
        write_image(image_dir / name)
    config = dict(
        type='DOTADataset',
        ann_file=str(label_dir) + '/',
        img_prefix=str(image_dir) + '/',
        version='le90',
        pipeline=list(pipeline))
    config.update(kwargs)
    return build_dataset(config)


def warnings_of(caplog):
    return [
        record.getMessage() for record in caplog.records
        if record.name == 'mmrotate' and record.levelno == logging.WARNING
    ]


@pytest.fixture
def warnings_log(caplog):
    caplog.set_level(logging.WARNING, logger='mmrotate')
    return caplog


def label_path(tmp_path, stem='P0001'):
    return str(tmp_path / 'labelTxt' / f'{stem}.txt')


# Registration.


def test_registry_names_resolve_to_lsknet_classes():
    assert DATASETS.get('DOTADataset') is DOTADataset
    assert PIPELINES.get('LoadImageFromFile') is LoadImageFromFile


# Label lines.


def test_header_lines_skipped_silently(tmp_path, warnings_log):
    dataset = make_dataset(tmp_path, {
        'P0001': [
            'imagesource:GoogleEarth', 'gsd:0.146343590398', 'gsd: 0.5',
            f'{GOOD_POLYGON} plane 0', f'{GOOD_POLYGON} ship 1'
        ]
    })

    ann = dataset.get_ann_info(0)
    assert ann['labels'].tolist() == [CLASSES.index('plane'), CLASSES.index('ship')]
    assert warnings_of(warnings_log) == []


def test_crlf_and_blank_lines_accepted(tmp_path, warnings_log):
    lines = ['imagesource:GoogleEarth', '', f'{GOOD_POLYGON} plane 0', '   ',
             f'{GOOD_POLYGON} harbor 0', '']
    dataset = make_dataset(tmp_path, {'P0001': lines}, newline='\r\n')

    assert b'\r\n' in open(label_path(tmp_path), 'rb').read()
    assert dataset.get_ann_info(0)['labels'].tolist() == [
        CLASSES.index('plane'), CLASSES.index('harbor')
    ]
    assert warnings_of(warnings_log) == []


def test_utf8_byte_order_mark_ignored(tmp_path, warnings_log):
    content = ('\ufeffimagesource:GoogleEarth\n' + f'{GOOD_POLYGON} plane 0\n').encode()
    dataset = make_dataset(tmp_path, {'P0001': content})

    assert len(dataset.get_ann_info(0)['labels']) == 1
    assert warnings_of(warnings_log) == []


def test_short_line_skipped_with_warning(tmp_path, warnings_log):
    dataset = make_dataset(tmp_path, {
        'P0001': [f'{GOOD_POLYGON} plane 0', '10 10 40 10 40 30 plane 0',
                  f'{GOOD_POLYGON} ship 0']
    })

    assert dataset.get_ann_info(0)['labels'].tolist() == [
        CLASSES.index('plane'), CLASSES.index('ship')
    ]
    messages = warnings_of(warnings_log)
    assert len(messages) == 1
    assert f'{label_path(tmp_path)}:2: 8 fields, expected 9 or 10' in messages[0]
    assert 'skipped 1 line(s); fix or delete them' in messages[0]


def test_line_without_class_name_skipped(tmp_path, warnings_log):
    dataset = make_dataset(tmp_path, {
        'P0001': [f'{GOOD_POLYGON} 0', f'{GOOD_POLYGON} 5 0', f'{GOOD_POLYGON} ship']
    })

    assert dataset.get_ann_info(0)['labels'].tolist() == [CLASSES.index('ship')]
    message = warnings_of(warnings_log)[0]
    assert f'{label_path(tmp_path)}:1: 9 fields' not in message  # 9 fields is valid
    assert f"{label_path(tmp_path)}:1: class name expected after the 8 coordinates, found '0'" in message
    assert f"{label_path(tmp_path)}:2: class name expected" in message


@pytest.mark.parametrize('bad_value, reason', [
    ('abc', "non-numeric coordinate 'abc'"),
    ('1,5', "non-numeric coordinate '1,5'"),
    ('nan', "non-finite coordinate 'nan'"),
    ('inf', "non-finite coordinate 'inf'"),
    ('-Infinity', "non-finite coordinate '-Infinity'"),
])
def test_non_numeric_or_non_finite_coordinate_skipped(tmp_path, warnings_log,
                                                       bad_value, reason):
    dataset = make_dataset(tmp_path, {
        'P0001': [f'{GOOD_POLYGON} plane 0', f'10 10 40 10 {bad_value} 30 10 30 ship 0']
    })

    ann = dataset.get_ann_info(0)
    assert ann['labels'].tolist() == [CLASSES.index('plane')]
    assert np.isfinite(ann['bboxes']).all()
    messages = warnings_of(warnings_log)
    assert len(messages) == 1
    assert f'{label_path(tmp_path)}:2: {reason}' in messages[0]


def test_undecodable_bytes_skip_only_their_line(tmp_path, warnings_log):
    content = f'{GOOD_POLYGON} plane 0\n10 10 4\xff0 10 40 30 10 30 ship 0\n'.encode(
        'latin-1')
    dataset = make_dataset(tmp_path, {'P0001': content})

    assert dataset.get_ann_info(0)['labels'].tolist() == [CLASSES.index('plane')]
    assert (f"{label_path(tmp_path)}:2: non-numeric coordinate '4\ufffd0'"
            in warnings_of(warnings_log)[0])


@pytest.mark.parametrize('flag', ['x', '-1', '1.0'])
def test_invalid_difficult_flag_skipped(tmp_path, warnings_log, flag):
    dataset = make_dataset(tmp_path, {'P0001': [f'{GOOD_POLYGON} plane {flag}']},
                           filter_empty_gt=False)

    assert len(dataset.get_ann_info(0)['labels']) == 0
    assert (f"{label_path(tmp_path)}:1: invalid difficult flag '{flag}', "
            'expected an integer >= 0 (DOTA uses 0, 1 and 2)') in warnings_of(warnings_log)[0]


def test_unknown_class_raises_with_location(tmp_path):
    with pytest.raises(ValueError) as error:
        make_dataset(
            tmp_path, {
                'P0001': [f'{GOOD_POLYGON} plane 0', f'{GOOD_POLYGON} container-crane 0'],
                'P0002': [f'{GOOD_POLYGON} container-crane 0']
            })

    message = str(error.value)
    assert ("'container-crane' (2 line(s), first at "
            f'{label_path(tmp_path, "P0001")}:2)') in message
    assert 'DOTA-v1.5' in message
    assert ', '.join(CLASSES) in message
    assert 'skip_unknown_classes=True' in message


def test_unknown_class_skipped_when_enabled(tmp_path, warnings_log):
    dataset = make_dataset(
        tmp_path, {'P0001': [f'{GOOD_POLYGON} plane 0', f'{GOOD_POLYGON} container-crane 0']},
        skip_unknown_classes=True)

    assert dataset.get_ann_info(0)['labels'].tolist() == [CLASSES.index('plane')]
    messages = warnings_of(warnings_log)
    assert len(messages) == 1
    assert "'container-crane' (1 line(s), first at" in messages[0]
    assert f'{label_path(tmp_path)}:2' in messages[0]


def test_classes_subset_rejects_other_classes(tmp_path):
    with pytest.raises(ValueError, match="'plane' .*knows 1 classes: ship"):
        make_dataset(tmp_path,
                     {'P0001': [f'{GOOD_POLYGON} ship 0', f'{GOOD_POLYGON} plane 0']},
                     classes=('ship', ))


@pytest.mark.parametrize('difficulty, kept, ignored', [
    (100, ['flag0', 'flag1', 'flag2', 'missing'], []),
    (1, ['flag0', 'flag1', 'missing'], ['flag2']),
    (0, ['flag0', 'missing'], ['flag1', 'flag2']),
])
def test_difficult_flags_split_into_ignore(tmp_path, difficulty, kept, ignored):
    # Each line has its own class, so the labels show where each line went.
    line_class = {'flag0': 'plane', 'flag1': 'ship', 'flag2': 'harbor',
                  'missing': 'bridge'}
    dataset = make_dataset(tmp_path, {
        'P0001': [
            f'{GOOD_POLYGON} plane 0', f'{GOOD_POLYGON} ship 1',
            f'{GOOD_POLYGON} harbor 2', f'{GOOD_POLYGON} bridge'
        ]
    }, difficulty=difficulty)

    ann = dataset.get_ann_info(0)
    assert ann['labels'].tolist() == [CLASSES.index(line_class[k]) for k in kept]
    assert ann['labels_ignore'].tolist() == [
        CLASSES.index(line_class[k]) for k in ignored
    ]
    assert ann['bboxes'].shape == (len(kept), 5)
    assert ann['bboxes_ignore'].shape == (len(ignored), 5)
    assert ann['polygons_ignore'].shape == (len(ignored), 8)


def test_all_bad_lines_give_one_warning_per_file(tmp_path, warnings_log):
    make_dataset(tmp_path, {
        'P0001': ['1 2 3', 'a b c d e f g h plane 0', f'{GOOD_POLYGON} plane 0',
                  '0 0 0 0 0 0 0 0 plane 0', '1 1 2 2 3 3 4 4 ship 0',
                  'nan 0 1 0 1 1 0 1 ship 0', '1 2 3 4 5', '0 0 1 0 1 1 0 1 ship 0'],
        'P0002': ['9 9', f'{GOOD_POLYGON} ship 0'],
        'P0003': [f'{GOOD_POLYGON} ship 0'],
    })

    messages = warnings_of(warnings_log)
    path = label_path(tmp_path, 'P0001')
    assert len(messages) == 3  # P0001, P0002 and the dataset total
    assert messages[0].startswith(f'{path}: skipped 7 line(s)')
    for line_number in (1, 2, 4, 5, 6):
        assert f'{path}:{line_number}:' in messages[0]
    assert f'{path}:7:' not in messages[0]
    assert '... and 2 more' in messages[0]
    assert messages[1].startswith(f'{label_path(tmp_path, "P0002")}: skipped 1 line(s)')
    assert messages[2].startswith('2 of 3 label files')


# Empty label files and label files without images.


def test_empty_label_file_respects_filter_empty_gt(tmp_path):
    labels = {'P0001': [], 'P0002': ['imagesource:GoogleEarth', 'gsd:0.1'],
              'P0003': [f'{GOOD_POLYGON} plane 0']}

    training = make_dataset(tmp_path, labels)
    assert [info['filename'] for info in training.data_infos] == ['P0003.png']

    unfiltered = make_dataset(tmp_path, labels, filter_empty_gt=False)
    assert [info['filename'] for info in unfiltered.data_infos] == [
        'P0001.png', 'P0002.png', 'P0003.png'
    ]
    assert unfiltered.get_ann_info(0)['bboxes'].shape == (0, 5)
    assert unfiltered.get_ann_info(0)['labels'].dtype == np.int64

    testing = make_dataset(tmp_path, labels, test_mode=True)
    assert len(testing) == 3


def test_missing_image_raises_with_both_paths(tmp_path):
    label_dir = tmp_path / 'labelTxt'
    image_dir = tmp_path / 'images'
    label_dir.mkdir()
    image_dir.mkdir()
    (label_dir / 'P0001.txt').write_text(f'{GOOD_POLYGON} plane 0\n')
    (label_dir / 'P0002.txt').write_text(f'{GOOD_POLYGON} plane 0\n')
    write_image(image_dir / 'P0001.png')
    write_image(image_dir / 'P0002.jpg')

    with pytest.raises(FileNotFoundError) as error:
        build_dataset(
            dict(type='DOTADataset', ann_file=str(label_dir), img_prefix=str(image_dir),
                 pipeline=[]))

    message = str(error.value)
    assert (f'{label_dir / "P0002.txt"} needs {image_dir / "P0002.png"}') in message
    assert 'the folder has P0002.jpg' in message


def test_missing_image_folder_raises(tmp_path):
    (tmp_path / 'labelTxt').mkdir()
    (tmp_path / 'labelTxt' / 'P0001.txt').write_text(f'{GOOD_POLYGON} plane 0\n')

    with pytest.raises(FileNotFoundError, match='image folder not found: .*imgs'):
        build_dataset(
            dict(type='DOTADataset', ann_file=str(tmp_path / 'labelTxt'),
                 img_prefix=str(tmp_path / 'imgs'), pipeline=[]))


def test_missing_label_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match='DOTA label folder not found: .*annfiles'):
        build_dataset(
            dict(type='DOTADataset', ann_file=str(tmp_path / 'annfiles'),
                 img_prefix=str(tmp_path), pipeline=[]))


def test_image_without_label_file_warned_once(tmp_path, warnings_log):
    extra = [f'P10{index:02d}.png' for index in range(7)]
    dataset = make_dataset(tmp_path, {'P0001': [f'{GOOD_POLYGON} plane 0']},
                           extra_images=extra)

    assert [info['filename'] for info in dataset.data_infos] == ['P0001.png']
    messages = warnings_of(warnings_log)
    assert len(messages) == 1
    assert messages[0].startswith(f'7 image(s) in {tmp_path / "images"}/ have no label file')
    assert 'P1000.png, P1001.png, P1002.png, P1003.png, P1004.png, ... (2 more)' in messages[0]


def test_image_folder_as_ann_file_lists_test_images(tmp_path):
    write_image(tmp_path / 'P0002.png')
    write_image(tmp_path / 'P0001.png')

    dataset = build_dataset(
        dict(type='DOTADataset', ann_file=str(tmp_path), img_prefix=str(tmp_path),
             pipeline=[], test_mode=True))

    assert dataset.img_ids == ['P0001', 'P0002']
    assert dataset.get_ann_info(0)['bboxes'].shape == (0, 5)


def test_folder_without_labels_or_images_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'no label files \(\*.txt\) or images'):
        build_dataset(
            dict(type='DOTADataset', ann_file=str(tmp_path), img_prefix=str(tmp_path),
                 pipeline=[]))


# Polygons.


@pytest.mark.parametrize('polygon, reason', [
    ('10 10 20 10 30 10 40 10', 'zero area, the vertices are collinear'),
    ('10 10 20 20 30 30 40 40', 'zero area, the vertices are collinear'),
    ('10 10 10 10 10 10 10 10', 'repeated vertex'),
    ('10 10 40 10 40 10 10 30', 'repeated vertex'),
    ('10 10 40 10 40 11 10 11', 'box side 1.00 px is shorter than 2 px'),
])
def test_degenerate_polygon_skipped_with_warning(tmp_path, warnings_log, polygon,
                                                 reason):
    dataset = make_dataset(tmp_path, {
        'P0001': [f'{GOOD_POLYGON} plane 0', f'{polygon} ship 0']
    })

    ann = dataset.get_ann_info(0)
    assert ann['labels'].tolist() == [CLASSES.index('plane')]
    assert f'{label_path(tmp_path)}:2: degenerate polygon: {reason}' in warnings_of(
        warnings_log)[0]


@pytest.mark.parametrize('version', ['oc', 'le90', 'le135'])
def test_self_intersecting_polygon_becomes_min_area_rectangle(version):
    # The rectangle 10,10 .. 40,30 with its last two vertices swapped (a bow tie).
    bow_tie = np.array([10, 10, 40, 10, 10, 30, 40, 30], dtype=np.float32)

    rbox, polygon, replaced = polygon_to_rbox(bow_tie, version)

    assert replaced
    assert np.isfinite(rbox).all()
    assert rbox[:2] == pytest.approx([25, 20], abs=1e-4)
    assert sorted(rbox[2:4]) == pytest.approx([20, 30], abs=1e-4)
    assert sorted(map(tuple, polygon.reshape(4, 2).tolist())) == [
        (10, 10), (10, 30), (40, 10), (40, 30)
    ]


@pytest.mark.parametrize('version', ['oc', 'le90', 'le135'])
def test_valid_polygon_not_replaced(version):
    rectangle = np.array(GOOD_POLYGON.split(), dtype=np.float32)

    rbox, polygon, replaced = polygon_to_rbox(rectangle, version)

    assert not replaced
    assert polygon is rectangle
    assert sorted(rbox[2:4]) == pytest.approx([20, 30], abs=1e-4)


def test_self_intersecting_line_warned_and_kept(tmp_path, warnings_log):
    dataset = make_dataset(tmp_path, {'P0001': ['10 10 40 10 10 30 40 30 plane 0']})

    ann = dataset.get_ann_info(0)
    assert ann['labels'].tolist() == [CLASSES.index('plane')]
    assert sorted(ann['bboxes'][0, 2:4]) == pytest.approx([20, 30], abs=1e-4)
    message = warnings_of(warnings_log)[0]
    assert 'converted 1 self-intersecting polygon(s)' in message
    assert f'{label_path(tmp_path)}:1: self-intersecting polygon' in message


def test_outside_and_negative_coordinates_kept(tmp_path, warnings_log):
    dataset = make_dataset(tmp_path, {
        'P0001': [
            '-20 -20 -5 -20 -5 -5 -20 -5 plane 0',  # entirely above-left
            '50 50 80 50 80 70 50 70 ship 0',  # across the bottom-right corner
            '100 100 130 100 130 120 100 120 harbor 0',  # entirely below-right
        ]
    })

    ann = dataset.get_ann_info(0)
    assert ann['labels'].tolist() == [
        CLASSES.index('plane'), CLASSES.index('ship'), CLASSES.index('harbor')
    ]
    assert ann['bboxes'][:, :2].tolist() == [[-12.5, -12.5], [65, 60], [115, 110]]
    assert warnings_of(warnings_log) == []


# The real DOTA sample.


def count_raw_objects(path):
    """Count classes in a raw label file: lines with 8 numbers, a class and a flag."""
    counts = Counter()
    with open(path) as label_file:
        for line in label_file:
            fields = line.split()
            if len(fields) == 10:
                counts[fields[8]] += 1
    return counts


def test_dota_sample_labels_load(dota_sample_root, warnings_log):
    dataset = build_dataset(
        dict(type='DOTADataset', ann_file=osp.join(dota_sample_root, 'labelTxt'),
             img_prefix=osp.join(dota_sample_root, 'images'), version='le90',
             pipeline=[]))

    assert dataset.img_ids == ['P0706', 'P1888']
    expected = {'P0706': {'ship': 531, 'harbor': 5},
                'P1888': {'small-vehicle': 14, 'large-vehicle': 50}}
    for index, image_id in enumerate(dataset.img_ids):
        raw_path = osp.join(dota_sample_root, 'labelTxt', f'{image_id}.txt')
        with open(raw_path, 'rb') as raw_file:
            assert raw_file.readline().startswith(b'imagesource:')
        assert count_raw_objects(raw_path) == expected[image_id]

        ann = dataset.get_ann_info(index)
        loaded = Counter(CLASSES[label] for label in ann['labels'])
        assert loaded == expected[image_id]
        assert np.isfinite(ann['bboxes']).all()
        assert (ann['bboxes'][:, 2:4] >= 2).all()
    assert warnings_of(warnings_log) == []


def test_dota_patch_rgba_and_self_intersecting(dota_patch_root, warnings_log):
    dataset = build_dataset(
        dict(type='DOTADataset', ann_file=osp.join(dota_patch_root, 'labelTxt'),
             img_prefix=osp.join(dota_patch_root, 'images'), version='le90',
             pipeline=[dict(type='LoadImageFromFile'),
                       dict(type='LoadAnnotations', with_bbox=True)]))

    raw_image = cv2.imread(
        osp.join(dota_patch_root, 'images', 'P0004__1__0___0.png'), cv2.IMREAD_UNCHANGED)
    assert raw_image.shape == (294, 285, 4)
    sample = dataset[0]
    assert sample['img'].shape == (294, 285, 3)
    assert sample['gt_labels'].tolist() == [CLASSES.index('plane')] * 4
    assert np.isfinite(sample['gt_bboxes']).all()
    message = warnings_of(warnings_log)[0]
    assert 'P0004__1__0___0.txt:4: self-intersecting polygon' in message


# Images.


def load_image(folder, filename, **kwargs):
    loader = build_from_cfg(dict(type='LoadImageFromFile', **kwargs), PIPELINES)
    return loader(dict(img_prefix=str(folder), img_info=dict(filename=filename)))


@pytest.mark.parametrize('color_type', ['color', 'unchanged'])
def test_grayscale_png_loads_as_three_channels(tmp_path, color_type):
    write_image(tmp_path / 'gray.png', 80, 100, channels=1)
    gray = cv2.imread(str(tmp_path / 'gray.png'), cv2.IMREAD_UNCHANGED)

    results = load_image(tmp_path, 'gray.png', color_type=color_type)

    assert gray.shape == (80, 100)
    assert results['img'].shape == (80, 100, 3)
    assert results['img_shape'] == (80, 100, 3)
    for channel in range(3):
        np.testing.assert_array_equal(results['img'][:, :, channel], gray)


@pytest.mark.parametrize('color_type, channel_order, order', [
    ('color', 'bgr', [0, 1, 2]),
    ('color', 'rgb', [2, 1, 0]),
    ('unchanged', 'bgr', [0, 1, 2]),
    ('unchanged', 'rgb', [2, 1, 0]),
])
def test_rgba_png_loads_as_three_channels(tmp_path, color_type, channel_order, order):
    bgra = write_image(tmp_path / 'rgba.png', 40, 50, channels=4)
    bgra = cv2.imread(bgra, cv2.IMREAD_UNCHANGED)

    results = load_image(tmp_path, 'rgba.png', color_type=color_type,
                         channel_order=channel_order)

    assert results['img'].shape == (40, 50, 3)
    np.testing.assert_array_equal(results['img'], bgra[:, :, order])


def test_grayscale_color_type_stays_single_channel(tmp_path):
    write_image(tmp_path / 'rgb.png', 20, 30)

    assert load_image(tmp_path, 'rgb.png', color_type='grayscale')['img'].shape == (20, 30)


@pytest.mark.parametrize('content', ['truncated', 'empty', 'text'])
def test_undecodable_image_raises_oserror(tmp_path, dota_patch_root, content):
    source = osp.join(dota_patch_root, 'images', 'P0004__1__0___0.png')
    data = open(source, 'rb').read()
    bad_bytes = {'truncated': data[:len(data) // 2], 'empty': b'',
                 'text': b'10 10 40 10 40 30 10 30 plane 0\n'}[content]
    (tmp_path / 'bad.png').write_bytes(bad_bytes)

    with pytest.raises(OSError) as error:
        load_image(tmp_path, 'bad.png')

    assert str(error.value) == (
        f'failed to decode image {tmp_path / "bad.png"}: the file is truncated or '
        'not an image; re-download or re-split it')


@pytest.fixture
def pillow_backend():
    previous = mmcv_image_io.imread_backend
    mmcv.use_backend('pillow')
    yield
    mmcv.use_backend(previous)


def test_truncated_image_raises_with_pillow_backend(tmp_path, dota_patch_root,
                                                   pillow_backend):
    shutil.copy(osp.join(dota_patch_root, 'images', 'P0004__1__0___0.png'),
                tmp_path / 'copy.png')
    data = (tmp_path / 'copy.png').read_bytes()
    (tmp_path / 'copy.png').write_bytes(data[:1000])

    with pytest.raises(OSError, match='failed to decode image .*copy.png'):
        load_image(tmp_path, 'copy.png')


def test_truncated_image_raises_with_rgb_channel_order(tmp_path, dota_patch_root):
    data = open(osp.join(dota_patch_root, 'images', 'P0004__1__0___0.png'), 'rb').read()
    (tmp_path / 'cut.png').write_bytes(data[:1000])

    with pytest.raises(OSError, match='failed to decode image .*cut.png'):
        load_image(tmp_path, 'cut.png', channel_order='rgb')


def test_missing_image_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match='absent.png'):
        load_image(tmp_path, 'absent.png')


def training_pipeline():
    return [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='RResize', img_scale=(IMAGE_SIZE, IMAGE_SIZE)),
        dict(type='RRandomFlip', flip_ratio=0.0, version='le90'),
        dict(type='Normalize', **IMG_NORM_CFG),
        dict(type='Pad', size_divisor=32),
        dict(type='DefaultFormatBundle'),
        dict(type='Collect', keys=['img', 'gt_bboxes', 'gt_labels'])
    ]


def test_small_image_goes_through_training_pipeline(tmp_path):
    dataset = make_dataset(tmp_path, {'P0001': [f'{GOOD_POLYGON} plane 0']},
                           image_size=(80, 100), pipeline=training_pipeline())

    sample = dataset[0]
    meta = sample['img_metas'].data
    assert meta['ori_shape'] == (80, 100, 3)
    assert meta['img_shape'] == (205, 256, 3)
    assert meta['pad_shape'] == (224, 256, 3)
    assert tuple(sample['img'].data.shape) == (3, 224, 256)
    # The box centre (25, 20) scales by 256 / 100 along x and 205 / 80 along y.
    assert sample['gt_bboxes'].data[0, :2].tolist() == pytest.approx([64, 51.25])


# One training step on a label file with every kind of bad line.

BAD_AND_GOOD_LINES = [
    'imagesource:GoogleEarth',
    'gsd:0.146343590398',
    '',
    '10 10 40 10 40 30 plane 0',  # short line
    'a b c d e f g h plane 0',  # non-numeric
    'nan 10 40 10 40 30 10 30 plane 0',  # non-finite
    '10 10 40 10 40 30 10 30 1',  # no class name
    '10 10 40 10 40 30 10 30 plane x',  # invalid difficult flag
    '10 10 40 10 40 30 10 30 container-crane 0',  # unknown class (skipped)
    '10 10 20 10 30 10 40 10 plane 0',  # collinear
    '10 10 10 10 10 10 10 10 plane 0',  # repeated vertices
    '10 10 40 10 40 11 10 11 plane 0',  # 1 px side
    '20 20 60 20 20 50 60 50 ship 0',  # self-intersecting, converted
    '70 70 100 70 100 90 70 90 harbor 2',  # above difficulty=1, ignored
    '10 60 50 60 50 80 10 80 small-vehicle 0',  # good
    '90 20 140 20 140 40 90 40 large-vehicle 1',  # across the right border
    '-30 -30 -10 -30 -10 -10 -30 -10 plane 0',  # entirely outside, negative
]


def test_training_step_with_bad_labels_has_finite_losses(tmp_path, warnings_log):
    dataset = make_dataset(
        tmp_path, {'P0001': BAD_AND_GOOD_LINES}, image_size=(128, 128),
        pipeline=training_pipeline(), difficulty=1, skip_unknown_classes=True)
    ann = dataset.get_ann_info(0)
    assert ann['labels'].tolist() == [
        CLASSES.index(name)
        for name in ('ship', 'small-vehicle', 'large-vehicle', 'plane')
    ]
    assert ann['labels_ignore'].tolist() == [CLASSES.index('harbor')]
    assert 'skipped 8 line(s)' in warnings_of(warnings_log)[0]

    batch = collate([dataset[0]], samples_per_gpu=1)
    model = build(plain_model_cfg())
    model.train()
    losses = model.forward_train(
        img=batch['img'].data[0],
        img_metas=batch['img_metas'].data[0],
        gt_bboxes=batch['gt_bboxes'].data[0],
        gt_labels=batch['gt_labels'].data[0])
    loss, log_vars = model._parse_losses(losses)
    loss.backward()

    assert set(log_vars) >= {'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox'}
    for name, value in log_vars.items():
        assert np.isfinite(value), f'{name} = {value}'
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert gradients
    assert all(torch.isfinite(gradient).all() for gradient in gradients)
