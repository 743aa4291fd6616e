"""DOTA dataset whose label parser reports bad lines instead of crashing on them.

mmrotate 0.3.4's ``DOTADataset.load_annotations`` fails on the ``imagesource:`` and
``gsd:`` header lines of the original DOTA labels, raises a bare ``KeyError`` or
``IndexError`` on unknown classes and short lines, and drops polygons that
``poly2obb_np`` rejects without saying so. The subclass here replaces only the
parser. It is registered under the same name, so every config that names
``DOTADataset`` uses it once ``lsknet`` is imported.
"""
import os
import os.path as osp
import re
from typing import Dict, List, NamedTuple, Sequence, Tuple

import cv2
import numpy as np
from mmcv.fileio.file_client import HardDiskBackend
from mmrotate.core import poly2obb_np
from mmrotate.datasets.builder import ROTATED_DATASETS
from mmrotate.datasets.dota import DOTADataset as MMRotateDOTADataset
from mmrotate.utils import get_root_logger

# mmrotate's DOTADataset names every image '<label stem>.png'.
IMAGE_SUFFIX = '.png'
# Suffixes that count as images when looking for images without a label file and
# for the hint in the missing-image error.
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
ANGLE_VERSIONS = ('oc', 'le135', 'le90')
# poly2obb_np (mmrotate 0.3.4) returns None for a box with a side under 2 pixels.
MIN_BOX_SIDE = 2.0
# How many lines, files or names a message lists before it only counts the rest.
MAX_LISTED = 5
# A header such as 'imagesource:GoogleEarth' or 'gsd:0.146343590398'.
HEADER_PATTERN = re.compile(r'^[A-Za-z][\w\-]*\s*:')
LINE_FORMAT = "'x1 y1 x2 y2 x3 y3 x4 y4 class-name [difficult]'"


class LabelObject(NamedTuple):
    """One object line of a DOTA label file, checked for syntax only."""
    line_number: int
    polygon: np.ndarray  # (8,) float32: x1, y1, ..., x4, y4 in pixels
    class_name: str
    difficulty: int


class LabelProblem(NamedTuple):
    """A label line that was skipped or changed, for the per-file warning."""
    line_number: int
    reason: str
    skipped: bool


class DegeneratePolygonError(ValueError):
    """A polygon from which no oriented box can be built."""


def parse_label_line(line: str, line_number: int) -> LabelObject:
    """Parse the fields of one object line.

    Args:
        line: a stripped, non-blank line that is not a header.
        line_number: its 1-based number in the label file.

    Raises:
        ValueError: if the line has the wrong number of fields, a coordinate that
            is not a finite number, a numeric class name or an invalid difficult
            flag. The message is the reason, without the file or line.
    """
    fields = line.split()
    if not 9 <= len(fields) <= 10:
        raise ValueError(f'{len(fields)} fields, expected 9 or 10')

    coordinates = []
    for text in fields[:8]:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f'non-numeric coordinate {text!r}') from None
        if not np.isfinite(value):
            raise ValueError(f'non-finite coordinate {text!r}')
        coordinates.append(value)

    class_name = fields[8]
    if _is_number(class_name):
        raise ValueError(
            f'class name expected after the 8 coordinates, found {class_name!r}')

    difficulty = 0
    if len(fields) == 10:
        if not fields[9].isdecimal():
            raise ValueError(
                f'invalid difficult flag {fields[9]!r}, expected an integer >= 0 '
                '(DOTA uses 0, 1 and 2)')
        difficulty = int(fields[9])

    return LabelObject(line_number, np.array(coordinates, dtype=np.float32),
                       class_name, difficulty)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_label_file(path: str) -> Tuple[List[LabelObject], List[LabelProblem]]:
    """Read the object lines of a DOTA label file.

    Blank lines and ``key:value`` header lines are skipped silently. Lines that
    fail :func:`parse_label_line` are returned as problems. Line endings may be
    LF or CRLF, and a UTF-8 byte order mark is ignored.

    Returns:
        The parsed objects, with 1-based line numbers, and the skipped lines.
    """
    objects, problems = [], []
    # Undecodable bytes become U+FFFD, which fails the number parsing of that
    # line instead of aborting the whole file.
    with open(path, encoding='utf-8-sig', errors='replace') as label_file:
        for line_number, line in enumerate(label_file, start=1):
            line = line.strip()
            if not line or HEADER_PATTERN.match(line):
                continue
            try:
                objects.append(parse_label_line(line, line_number))
            except ValueError as error:
                problems.append(LabelProblem(line_number, str(error), True))
    return objects, problems


def is_self_intersecting(points: np.ndarray) -> bool:
    """Check whether two opposite sides of a quadrilateral cross.

    Args:
        points: (4, 2) vertices in label order.

    Touching sides are not counted as crossing.
    """
    points = points.astype(np.float64)

    def orientation(a, b, c):
        return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    def sides_cross(a, b, c, d):
        return (orientation(a, b, c) * orientation(a, b, d) < 0
                and orientation(c, d, a) * orientation(c, d, b) < 0)

    p0, p1, p2, p3 = points
    return sides_cross(p0, p1, p2, p3) or sides_cross(p1, p2, p3, p0)


def polygon_to_rbox(polygon: np.ndarray,
                    version: str) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Convert a DOTA quadrilateral to an oriented box with ``poly2obb_np``.

    A self-intersecting quadrilateral (vertices out of order, a "bow tie") is
    replaced by the minimum-area rectangle around its four points before the
    conversion. For 'oc' and 'le90' this gives the box mmrotate computes anyway,
    and for 'le135', which reads the box from the first two sides, it gives a box
    that covers the object instead of a crossed one.

    Args:
        polygon: (8,) float32 vertices x1, y1, ..., x4, y4 in pixels.
        version: angle convention, 'oc', 'le135' or 'le90'.

    Returns:
        The (5,) float32 box (x_ctr, y_ctr, w, h, angle in radians), the (8,)
        polygon that was converted, and whether that polygon replaced the input.

    Raises:
        DegeneratePolygonError: for repeated vertices, collinear vertices or a
            box side shorter than ``MIN_BOX_SIDE`` pixels.
    """
    points = polygon.reshape(4, 2)
    if len(np.unique(points, axis=0)) < 4:
        raise DegeneratePolygonError('repeated vertex')
    rectangle = cv2.minAreaRect(points)
    short_side = min(rectangle[1])
    if short_side < 1e-3:
        raise DegeneratePolygonError('zero area, the vertices are collinear')

    replaced = is_self_intersecting(points)
    if replaced:
        polygon = cv2.boxPoints(rectangle).reshape(8).astype(np.float32)
    if short_side < MIN_BOX_SIDE:
        raise DegeneratePolygonError(
            f'box side {short_side:.2f} px is shorter than {MIN_BOX_SIDE:g} px')

    rbox = poly2obb_np(polygon, version)
    if rbox is None:
        # Only 'le135' gets here: it measures the first two sides of the
        # quadrilateral instead of the minimum-area rectangle.
        raise DegeneratePolygonError(
            f'a side is shorter than {MIN_BOX_SIDE:g} px')
    rbox = np.array(rbox, dtype=np.float32)
    if not np.all(np.isfinite(rbox)):
        raise DegeneratePolygonError(f'conversion gave a non-finite box {rbox}')
    return rbox, polygon, replaced


def format_problems(path: str, problems: Sequence[LabelProblem]) -> str:
    """Build the one warning logged for a label file with problems."""
    skipped = sum(problem.skipped for problem in problems)
    converted = len(problems) - skipped
    parts = []
    if skipped:
        parts.append(f'skipped {skipped} line(s); fix or delete them '
                     f'(a DOTA object line is {LINE_FORMAT})')
    if converted:
        parts.append(f'converted {converted} self-intersecting polygon(s) to their '
                     'minimum-area rectangle; check their vertex order')
    lines = [f'{path}: ' + '; '.join(parts)]
    for problem in problems[:MAX_LISTED]:
        lines.append(f'  {path}:{problem.line_number}: {problem.reason}')
    if len(problems) > MAX_LISTED:
        lines.append(f'  ... and {len(problems) - MAX_LISTED} more')
    return '\n'.join(lines)


def _name_list(names: Sequence[str]) -> str:
    listed = ', '.join(names[:MAX_LISTED])
    if len(names) > MAX_LISTED:
        listed += f', ... ({len(names) - MAX_LISTED} more)'
    return listed


def _describe_unknown_classes(unknown_classes: Dict[str, Tuple[str, int]]) -> str:
    return '; '.join(
        f'{name!r} ({count} line(s), first at {first})'
        for name, (first, count) in sorted(unknown_classes.items()))


@ROTATED_DATASETS.register_module(force=True)
class DOTADataset(MMRotateDOTADataset):
    """DOTA dataset that checks every label line and logs what it skipped.

    ``ann_file`` is a folder of DOTA label files, one ``<image stem>.txt`` per
    image in ``img_prefix`` named ``<image stem>.png``. An object line is
    ``x1 y1 x2 y2 x3 y3 x4 y4 class-name [difficult]``. For the unlabelled test
    split, ``ann_file`` may be the image folder itself, as in mmrotate. Label
    files are read in sorted order. Bad input is handled as follows:

    - Blank lines and ``key:value`` header lines (``imagesource:``, ``gsd:``)
      are skipped silently. LF and CRLF line endings both work.
    - A line with the wrong number of fields, a coordinate that is not a finite
      number, a numeric class name or a difficult flag that is not a
      non-negative integer is skipped.
    - A class name outside ``CLASSES`` raises ``ValueError`` after all files are
      read, naming each unknown class with its first file and line. It usually
      means labels of another DOTA version, or a ``classes`` setting that lacks
      classes the labels use. With ``skip_unknown_classes=True`` such lines are
      skipped with a warning instead, which trains on a subset of the classes.
    - A missing difficult flag means 0. Objects whose flag is at most
      ``difficulty`` are ground truth, and the others go to the ``*_ignore``
      arrays, which mmrotate's evaluation ignores.
    - Polygons with a repeated vertex, collinear vertices or a box side shorter
      than 2 pixels (``poly2obb_np`` rejects those) are skipped. A
      self-intersecting polygon is replaced by the minimum-area rectangle of its
      four points (see :func:`polygon_to_rbox`), and that rectangle is stored in
      ``polygons``.
    - Coordinates outside the image or negative are kept, because objects cut
      by the border of a patch are normal in split DOTA images.
    - Each label file with skipped or converted lines gives one warning that
      counts them and lists the first few as ``file:line: reason``.
    - A label file that contains no objects gives an image without boxes. As in
      mmdet's ``CustomDataset``, ``filter_empty_gt`` removes such images in
      training and never in ``test_mode``. mmrotate 0.3.4 also drops empty
      (0-byte) label files in ``test_mode``, and this class keeps them, so false
      positives on those images count in the evaluation.
    - A label file whose image is missing raises ``FileNotFoundError`` naming
      both paths. Images without a label file are not used, and one warning
      counts them.

    Args:
        ann_file (str): folder of DOTA label files, or of test images.
        pipeline (list[dict]): processing pipeline.
        version (str): angle convention, 'oc', 'le135' or 'le90'.
        difficulty (int): highest difficult flag that counts as ground truth.
        skip_unknown_classes (bool): skip lines whose class is not in
            ``CLASSES`` instead of raising ``ValueError``.
        **kwargs: passed to mmdet's ``CustomDataset`` (``img_prefix``,
            ``classes``, ``filter_empty_gt``, ``test_mode``, ...).
    """

    def __init__(self,
                 ann_file,
                 pipeline,
                 version: str = 'oc',
                 difficulty: int = 100,
                 skip_unknown_classes: bool = False,
                 **kwargs):
        if version not in ANGLE_VERSIONS:
            raise ValueError(f'invalid angle version {version!r} for DOTADataset, '
                             f'expected one of {ANGLE_VERSIONS}')
        # load_annotations runs inside the parent's __init__ and reads this.
        self.skip_unknown_classes = skip_unknown_classes
        super().__init__(
            ann_file, pipeline, version=version, difficulty=difficulty, **kwargs)

    def load_annotations(self, ann_folder: str) -> List[dict]:
        """Load all label files in ``ann_folder``.

        Returns:
            One dict per image: ``filename`` and ``ann`` with ``bboxes`` (n, 5),
            ``labels`` (n,), ``polygons`` (n, 8) and the same three arrays with
            the suffix ``_ignore`` for objects above ``difficulty``.

        Raises:
            FileNotFoundError: if the folder, an image folder or an image is
                missing, or the folder contains neither label files nor images.
            ValueError: for class names outside ``CLASSES``, unless
                ``skip_unknown_classes`` is set.
        """
        if not osp.isdir(ann_folder):
            raise FileNotFoundError(
                f'DOTA label folder not found: {ann_folder} (set ann_file to the '
                'folder of .txt label files, or to the image folder for the '
                'unlabelled test split)')
        names = sorted(os.listdir(ann_folder))
        label_names = [name for name in names if name.endswith('.txt')]
        if not label_names:
            data_infos = self._load_unlabelled_images(ann_folder, names)
        else:
            self._check_images(ann_folder, label_names)
            data_infos = self._load_label_files(ann_folder, label_names)
        self.img_ids = [osp.splitext(info['filename'])[0] for info in data_infos]
        return data_infos

    def _load_unlabelled_images(self, image_folder: str,
                                names: List[str]) -> List[dict]:
        """List the images of a folder without labels (the test split)."""
        image_names = [name for name in names if name.endswith(IMAGE_SUFFIX)]
        if not image_names:
            raise FileNotFoundError(
                f'no label files (*.txt) or images (*{IMAGE_SUFFIX}) found in '
                f'{image_folder} (set ann_file to the folder of DOTA label files)')
        return [
            dict(filename=name, ann=self._empty_annotation())
            for name in image_names
        ]

    def _check_images(self, ann_folder: str, label_names: List[str]) -> None:
        """Raise for label files without an image and warn about unused images."""
        if not isinstance(self.file_client.client, HardDiskBackend):
            # NOTE: only images on the local disk are checked.
            return
        image_folder = self.img_prefix or '.'
        if not osp.isdir(image_folder):
            raise FileNotFoundError(
                f'image folder not found: {image_folder} (set img_prefix to the '
                f'folder holding the images labelled in {ann_folder})')
        image_names = set(os.listdir(image_folder))
        label_stems = {osp.splitext(name)[0] for name in label_names}

        missing = [
            name for name in label_names
            if osp.splitext(name)[0] + IMAGE_SUFFIX not in image_names
        ]
        if missing:
            raise FileNotFoundError(
                self._missing_image_message(ann_folder, image_folder, missing,
                                            image_names))

        unused = sorted(
            name for name in image_names
            if osp.splitext(name)[1].lower() in IMAGE_SUFFIXES
            and osp.splitext(name)[0] not in label_stems)
        if unused:
            get_root_logger().warning(
                f'{len(unused)} image(s) in {image_folder} have no label file in '
                f'{ann_folder} and are not used: {_name_list(unused)} (add a '
                'label file for each image to train on. An empty file marks an '
                'image without objects, which is kept only with '
                'filter_empty_gt=False)')

    @staticmethod
    def _missing_image_message(ann_folder: str, image_folder: str,
                               missing: List[str], image_names: set) -> str:
        stem = osp.splitext(missing[0])[0]
        message = (f'image not found for {len(missing)} label file(s): '
                   f'{osp.join(ann_folder, missing[0])} needs '
                   f'{osp.join(image_folder, stem + IMAGE_SUFFIX)}')
        other_formats = sorted(
            name for name in image_names if osp.splitext(name)[0] == stem)
        if other_formats:
            message += (f' but the folder has {", ".join(other_formats)}, and '
                        f'DOTADataset reads only {IMAGE_SUFFIX} images (convert it)')
        if len(missing) > 1:
            message += f'; all such label files: {_name_list(missing)}'
        return message + ' (check img_prefix, or delete label files without an image)'

    def _load_label_files(self, ann_folder: str,
                          label_names: List[str]) -> List[dict]:
        logger = get_root_logger()
        class_to_label = {name: label for label, name in enumerate(self.CLASSES)}
        # class name -> (first 'file:line', number of lines)
        unknown_classes: Dict[str, Tuple[str, int]] = {}
        files_with_problems = 0
        data_infos = []

        for label_name in label_names:
            path = osp.join(ann_folder, label_name)
            objects, problems = read_label_file(path)
            ground_truth_boxes, ignored_boxes = [], []
            for label_object in objects:
                class_name = label_object.class_name
                if class_name not in class_to_label:
                    location = f'{path}:{label_object.line_number}'
                    first, count = unknown_classes.get(class_name, (location, 0))
                    unknown_classes[class_name] = (first, count + 1)
                    continue
                try:
                    rbox, polygon, replaced = polygon_to_rbox(
                        label_object.polygon, self.version)
                except DegeneratePolygonError as error:
                    problems.append(
                        LabelProblem(label_object.line_number,
                                     f'degenerate polygon: {error}', True))
                    continue
                if replaced:
                    problems.append(
                        LabelProblem(label_object.line_number,
                                     'self-intersecting polygon, converted to its '
                                     'minimum-area rectangle', False))
                box = (rbox, class_to_label[class_name], polygon)
                if label_object.difficulty > self.difficulty:
                    ignored_boxes.append(box)
                else:
                    ground_truth_boxes.append(box)

            if problems:
                files_with_problems += 1
                problems.sort(key=lambda problem: problem.line_number)
                logger.warning(format_problems(path, problems))
            annotation = self._annotation_arrays(ground_truth_boxes)
            ignore_annotation = self._annotation_arrays(ignored_boxes)
            annotation.update(
                {f'{key}_ignore': value
                 for key, value in ignore_annotation.items()})
            data_infos.append(
                dict(filename=osp.splitext(label_name)[0] + IMAGE_SUFFIX,
                     ann=annotation))

        if unknown_classes and not self.skip_unknown_classes:
            raise ValueError(
                f'unknown class name(s) in the DOTA labels: '
                f'{_describe_unknown_classes(unknown_classes)}. The dataset knows '
                f'{len(self.CLASSES)} classes: {", ".join(self.CLASSES)}. The '
                'labels and the config disagree, for example DOTA-v1.5 labels '
                "('container-crane') read with the DOTA-v1.0 classes. Set "
                "'classes' in the dataset config to the classes of the labels, "
                'or set skip_unknown_classes=True to skip those lines')
        if unknown_classes:
            logger.warning(
                'skipped the lines of classes not in CLASSES '
                '(skip_unknown_classes=True): '
                f'{_describe_unknown_classes(unknown_classes)}')
        if files_with_problems > 1:
            logger.warning(
                f'{files_with_problems} of {len(label_names)} label files in '
                f'{ann_folder} have skipped or converted lines (see the warnings '
                'above)')
        return data_infos

    @staticmethod
    def _annotation_arrays(boxes: List[tuple]) -> Dict[str, np.ndarray]:
        if not boxes:
            return dict(
                bboxes=np.zeros((0, 5), dtype=np.float32),
                labels=np.zeros((0, ), dtype=np.int64),
                polygons=np.zeros((0, 8), dtype=np.float32))
        rboxes, labels, polygons = zip(*boxes)
        return dict(
            bboxes=np.stack(rboxes).astype(np.float32),
            labels=np.array(labels, dtype=np.int64),
            polygons=np.stack(polygons).astype(np.float32))

    @classmethod
    def _empty_annotation(cls) -> Dict[str, np.ndarray]:
        annotation = cls._annotation_arrays([])
        annotation.update(
            {f'{key}_ignore': value
             for key, value in cls._annotation_arrays([]).items()})
        return annotation
