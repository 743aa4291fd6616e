"""Generate a small synthetic dataset in DOTA-v1.0 format for the distillation demo.

Every image shows a few rotated objects of DOTA classes on a textured background.
Each class has its own shape, size range and colours, so a detector trained from
scratch on the CPU learns them within minutes. The layout is that of split DOTA
patches::

    OUT_DIR/train/images/train_0000.png  OUT_DIR/train/labelTxt/train_0000.txt
    OUT_DIR/val/images/val_0000.png      OUT_DIR/val/labelTxt/val_0000.txt

A label file contains one line per object, ``x1 y1 x2 y2 x3 y3 x4 y4 class difficult``:
the corners of the object's oriented bounding box, clockwise on screen, in pixels.
There are no ``imagesource:`` or ``gsd:`` header lines, as in split patches, so
mmrotate's ``DOTADataset`` reads ``labelTxt/`` directly as its ``ann_file``.

The output is a function of the seed and the arguments alone: image ``i`` of a split
is drawn from its own random generator seeded with ``(seed, split, i)``, so it does
not change when the number of images changes.

Command line::

    python tools/demo/make_dataset.py OUT_DIR [--seed 0] [--num-train 64] ...
"""
import argparse
import math
import os
import os.path as osp
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

# The 15 classes of DOTA-v1.0, in the order of mmrotate's DOTADataset.CLASSES.
DOTA_V1_CLASSES = ('plane', 'baseball-diamond', 'bridge', 'ground-track-field',
                   'small-vehicle', 'large-vehicle', 'ship', 'tennis-court',
                   'basketball-court', 'storage-tank', 'soccer-ball-field',
                   'roundabout', 'harbor', 'swimming-pool', 'helicopter')
DEFAULT_CLASSES = ('plane', 'ship', 'storage-tank', 'small-vehicle')
SPLITS = ('train', 'val')
# Part of every generator seed, so the two splits never share images.
SPLIT_SEED_IDS = {'train': 0, 'val': 1}
MIN_IMAGE_SIZE = 96
# Fixed-point bits for cv2's polygon drawing: corners keep 1/16 pixel precision.
DRAW_SHIFT = 4
# Attempts to place one object before giving up on it (the image then has fewer).
MAX_PLACEMENT_ATTEMPTS = 50


@dataclass(frozen=True)
class ClassStyle:
    """Size range of one class, in pixels at the reference image size of 256.

    The box is ``length`` along the object's axis and ``length * width_ratio``
    across it. ``rotates`` is False for round objects, whose boxes stay
    axis-aligned as in DOTA's labels.
    """
    min_length: float
    max_length: float
    min_width_ratio: float
    max_width_ratio: float
    rotates: bool = True


CLASS_STYLES: Dict[str, ClassStyle] = {
    'plane': ClassStyle(44, 64, 0.85, 1.0),
    'ship': ClassStyle(44, 72, 0.28, 0.36),
    'storage-tank': ClassStyle(24, 38, 1.0, 1.0, rotates=False),
    'small-vehicle': ClassStyle(24, 32, 0.5, 0.6),
    'large-vehicle': ClassStyle(34, 46, 0.3, 0.38),
    'harbor': ClassStyle(50, 80, 0.3, 0.4),
}
REFERENCE_IMAGE_SIZE = 256


@dataclass
class SyntheticObject:
    """One labelled object: its DOTA class and box corners, (4, 2) as (x, y)."""
    class_name: str
    polygon: np.ndarray


def generate_dataset(out_dir: str,
                     seed: int = 0,
                     num_train: int = 64,
                     num_val: int = 16,
                     image_size: int = 256,
                     classes: Sequence[str] = DEFAULT_CLASSES,
                     objects_per_image: Tuple[int, int] = (3, 6)) -> Dict:
    """Write the train and val splits under ``out_dir``.

    Args:
        out_dir (str): folder to create ``train/`` and ``val/`` in. Existing files
            with the same names are overwritten; other files are left alone.
        seed (int): seed of every random choice. Equal arguments give identical
            files.
        num_train (int): number of training images.
        num_val (int): number of validation images.
        image_size (int): width and height of the square images, in pixels.
            Object sizes scale with it.
        classes (Sequence[str]): DOTA-v1.0 class names to draw; each must have an
            entry in ``CLASS_STYLES``.
        objects_per_image (tuple[int, int]): inclusive range of the number of
            objects per image. Fewer are drawn when they do not fit.

    Returns:
        dict: ``classes`` and, per split, the folders and the number of images
        and objects, e.g. ``{'train': {'images': 64, 'objects': 281, 'img_dir':
        ..., 'ann_dir': ...}, ...}``.
    """
    validate_arguments(num_train, num_val, image_size, classes,
                       objects_per_image)
    summary = {'classes': tuple(classes)}
    for split, num_images in zip(SPLITS, (num_train, num_val)):
        summary[split] = generate_split(out_dir, split, seed, num_images,
                                        image_size, classes, objects_per_image)
    return summary


def validate_arguments(num_train: int, num_val: int, image_size: int,
                       classes: Sequence[str],
                       objects_per_image: Tuple[int, int]) -> None:
    """Raise ValueError naming the first invalid argument of generate_dataset."""
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be at least 1, got '
                         f'{num_train} and {num_val}')
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f'image_size must be at least {MIN_IMAGE_SIZE} pixels, '
                         f'got {image_size}')
    if not classes:
        raise ValueError('classes is empty; give at least one DOTA class name')
    for class_name in classes:
        if class_name not in DOTA_V1_CLASSES:
            raise ValueError(f'{class_name!r} is not a DOTA-v1.0 class; choose '
                             f'from {", ".join(DOTA_V1_CLASSES)}')
        if class_name not in CLASS_STYLES:
            raise ValueError(f'no synthetic style for class {class_name!r}; '
                             f'supported: {", ".join(CLASS_STYLES)}')
    if len(set(classes)) != len(classes):
        raise ValueError(f'classes contains duplicates: {list(classes)}')
    low, high = objects_per_image
    if not 1 <= low <= high:
        raise ValueError('objects_per_image must be (low, high) with '
                         f'1 <= low <= high, got {objects_per_image}')


def generate_split(out_dir: str, split: str, seed: int, num_images: int,
                   image_size: int, classes: Sequence[str],
                   objects_per_image: Tuple[int, int]) -> Dict:
    """Write ``num_images`` images and label files of one split."""
    img_dir = osp.join(out_dir, split, 'images')
    ann_dir = osp.join(out_dir, split, 'labelTxt')
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)

    num_objects = 0
    for index in range(num_images):
        rng = np.random.default_rng([seed, SPLIT_SEED_IDS[split], index])
        image, objects = render_image(rng, image_size, classes,
                                      objects_per_image)
        name = f'{split}_{index:04d}'
        if not cv2.imwrite(osp.join(img_dir, name + '.png'), image):
            raise OSError(f'failed to write {osp.join(img_dir, name + ".png")}')
        write_label_file(osp.join(ann_dir, name + '.txt'), objects)
        num_objects += len(objects)
    return {
        'images': num_images,
        'objects': num_objects,
        'img_dir': img_dir,
        'ann_dir': ann_dir
    }


def render_image(rng: np.random.Generator, image_size: int,
                 classes: Sequence[str],
                 objects_per_image: Tuple[int, int]
                 ) -> Tuple[np.ndarray, List[SyntheticObject]]:
    """Draw one image and return it, (H, W, 3) uint8 BGR, with its objects."""
    image = draw_background(rng, image_size)
    scale = image_size / REFERENCE_IMAGE_SIZE
    num_requested = int(rng.integers(objects_per_image[0], objects_per_image[1] + 1))

    objects = []
    # Circles (centre, radius) around the placed boxes, so boxes never overlap.
    occupied: List[Tuple[np.ndarray, float]] = []
    for _ in range(num_requested):
        class_name = classes[int(rng.integers(len(classes)))]
        style = CLASS_STYLES[class_name]
        length = rng.uniform(style.min_length, style.max_length) * scale
        width = length * rng.uniform(style.min_width_ratio,
                                     style.max_width_ratio)
        angle = rng.uniform(0, 2 * math.pi) if style.rotates else 0.0
        radius = math.hypot(length, width) / 2
        center = place_object(rng, image_size, radius, occupied)
        if center is None:
            continue
        occupied.append((center, radius))
        draw_object(image, rng, class_name, center, length, width, angle)
        objects.append(
            SyntheticObject(class_name, box_corners(center, length, width,
                                                    angle)))

    # A slight blur makes the edges look photographed; noise hides the blur.
    image = cv2.GaussianBlur(image, (3, 3), 0.7)
    noise = rng.normal(0, 4, image.shape)
    image = np.clip(image.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return image, objects


def place_object(rng: np.random.Generator, image_size: int, radius: float,
                 occupied: List[Tuple[np.ndarray, float]]):
    """Return a centre (2,) whose circle of ``radius`` fits, or None."""
    # One pixel of margin keeps every corner strictly inside the image.
    low, high = radius + 1, image_size - 1 - radius - 1
    if low >= high:
        return None
    for _ in range(MAX_PLACEMENT_ATTEMPTS):
        center = rng.uniform(low, high, size=2)
        if all(
                np.linalg.norm(center - other) > radius + other_radius + 2
                for other, other_radius in occupied):
            return center
    return None


def box_corners(center: np.ndarray, length: float, width: float,
                angle: float) -> np.ndarray:
    """Return the (4, 2) corners of a rotated box, clockwise on screen."""
    local = np.array([[-length / 2, -width / 2], [length / 2, -width / 2],
                      [length / 2, width / 2], [-length / 2, width / 2]])
    return to_image(local, center, angle)


def to_image(local_points: np.ndarray, center: np.ndarray,
             angle: float) -> np.ndarray:
    """Rotate (N, 2) object-frame points by ``angle`` (radians) and move them."""
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    return local_points @ rotation.T + center


def fill_polygon(image: np.ndarray, points: np.ndarray, color) -> None:
    """Fill an (N, 2) float polygon with anti-aliased edges."""
    fixed_point = np.round(points * (1 << DRAW_SHIFT)).astype(np.int32)
    cv2.fillPoly(image, [fixed_point], tuple(int(c) for c in color),
                 lineType=cv2.LINE_AA, shift=DRAW_SHIFT)


def fill_circle(image: np.ndarray, center: np.ndarray, radius: float,
                color) -> None:
    """Fill a circle with anti-aliased edges."""
    fixed_center = tuple(int(round(c * (1 << DRAW_SHIFT))) for c in center)
    cv2.circle(image, fixed_center, int(round(radius * (1 << DRAW_SHIFT))),
               tuple(int(c) for c in color), thickness=-1,
               lineType=cv2.LINE_AA, shift=DRAW_SHIFT)


def jitter(rng: np.random.Generator, color: Sequence[float],
           amount: float = 12) -> np.ndarray:
    """Return ``color`` (BGR) shifted by a random brightness, clipped to 0-255."""
    return np.clip(np.asarray(color, dtype=np.float64) + rng.uniform(-amount, amount),
                   0, 255)


def draw_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Draw ground texture: an earth tone, smooth blotches and field patches."""
    earth_tones = [(70, 105, 85), (80, 110, 125), (95, 120, 110), (60, 90, 95)]
    base = np.asarray(earth_tones[int(rng.integers(len(earth_tones)))],
                      dtype=np.float64)
    # Low-frequency blotches: a coarse random grid upsampled smoothly.
    coarse = rng.normal(0, 18, (6, 6, 1)).astype(np.float32)
    blotches = cv2.resize(coarse, (image_size, image_size),
                          interpolation=cv2.INTER_CUBIC)[..., None]
    image = np.clip(base + blotches, 0, 255).astype(np.uint8)

    # Rotated field patches of a slightly different tone.
    for _ in range(int(rng.integers(2, 6))):
        center = rng.uniform(0, image_size, size=2)
        size = rng.uniform(0.15, 0.45, size=2) * image_size
        tone = np.clip(base + rng.uniform(-20, 20, size=3), 0, 255)
        fill_polygon(image, box_corners(center, size[0], size[1],
                                        rng.uniform(0, math.pi)), tone)
    return image


def draw_object(image: np.ndarray, rng: np.random.Generator, class_name: str,
                center: np.ndarray, length: float, width: float,
                angle: float) -> None:
    """Draw one object of ``class_name`` filling a length x width rotated box."""
    painters = {
        'plane': draw_plane,
        'ship': draw_ship,
        'storage-tank': draw_storage_tank,
        'small-vehicle': draw_vehicle,
        'large-vehicle': draw_vehicle,
        'harbor': draw_harbor,
    }
    painters[class_name](image, rng, center, length, width, angle)


def draw_plane(image, rng, center, length, wingspan, angle) -> None:
    """Draw a light grey plane, nose along +x: fuselage, swept wings and tailplane."""
    half_length, half_span = length / 2, wingspan / 2
    body = jitter(rng, (215, 215, 215))
    fuselage_half_width = length * 0.07
    fuselage = np.array([[half_length, 0],
                         [half_length * 0.8, -fuselage_half_width],
                         [-half_length, -fuselage_half_width * 0.7],
                         [-half_length, fuselage_half_width * 0.7],
                         [half_length * 0.8, fuselage_half_width]])
    wings = np.array([[length * 0.12, -fuselage_half_width],
                      [-length * 0.12, -half_span],
                      [-length * 0.24, -half_span],
                      [-length * 0.14, 0],
                      [-length * 0.24, half_span],
                      [-length * 0.12, half_span],
                      [length * 0.12, fuselage_half_width]])
    tail_span = half_span * 0.4
    tailplane = np.array([[-length * 0.34, 0], [-length * 0.46, -tail_span],
                          [-half_length, -tail_span], [-half_length, tail_span],
                          [-length * 0.46, tail_span]])
    for part in (wings, tailplane, fuselage):
        fill_polygon(image, to_image(part, center, angle), body)
    # A darker cockpit near the nose.
    cockpit = np.array([[half_length * 0.78, -fuselage_half_width * 0.6],
                        [half_length * 0.6, -fuselage_half_width * 0.6],
                        [half_length * 0.6, fuselage_half_width * 0.6],
                        [half_length * 0.78, fuselage_half_width * 0.6]])
    fill_polygon(image, to_image(cockpit, center, angle), body * 0.55)


def draw_ship(image, rng, center, length, beam, angle) -> None:
    """Draw a dark hull with a pointed bow and a white superstructure."""
    half_length, half_beam = length / 2, beam / 2
    hull = np.array([[half_length, 0], [half_length * 0.55, -half_beam],
                     [-half_length, -half_beam * 0.9],
                     [-half_length, half_beam * 0.9],
                     [half_length * 0.55, half_beam]])
    fill_polygon(image, to_image(hull, center, angle),
                 jitter(rng, (95, 60, 40)))
    deck = np.array([[-half_length * 0.1, -half_beam * 0.55],
                     [-half_length * 0.75, -half_beam * 0.55],
                     [-half_length * 0.75, half_beam * 0.55],
                     [-half_length * 0.1, half_beam * 0.55]])
    fill_polygon(image, to_image(deck, center, angle),
                 jitter(rng, (235, 235, 235), 8))


def draw_storage_tank(image, rng, center, diameter, _width, _angle) -> None:
    """Draw a bright round tank with a dark rim and a shadow to the lower right."""
    radius = diameter / 2
    fill_circle(image, center + radius * 0.12, radius * 0.95, (35, 40, 40))
    fill_circle(image, center, radius, jitter(rng, (80, 85, 90)))
    fill_circle(image, center, radius * 0.82, jitter(rng, (225, 230, 230), 10))
    fill_circle(image, center, radius * 0.25, (185, 190, 190))


def draw_vehicle(image, rng, center, length, width, angle) -> None:
    """Draw a car body in a saturated colour with a dark windscreen and roof."""
    palette = [(40, 40, 200), (190, 90, 30), (40, 200, 230), (30, 30, 30),
               (230, 230, 230)]
    body = jitter(rng, palette[int(rng.integers(len(palette)))], 10)
    fill_polygon(image, box_corners(center, length, width, angle), body)
    windscreen = np.array([[length * 0.3, -width * 0.4],
                           [length * 0.12, -width * 0.4],
                           [length * 0.12, width * 0.4],
                           [length * 0.3, width * 0.4]])
    fill_polygon(image, to_image(windscreen, center, angle), (50, 45, 40))
    roof = np.array([[length * 0.1, -width * 0.38], [-length * 0.25, -width * 0.38],
                     [-length * 0.25, width * 0.38], [length * 0.1, width * 0.38]])
    fill_polygon(image, to_image(roof, center, angle), body * 0.8)


def draw_harbor(image, rng, center, length, width, angle) -> None:
    """Draw a grey pier with bright bollard stripes across it."""
    fill_polygon(image, box_corners(center, length, width, angle),
                 jitter(rng, (150, 150, 145)))
    for offset in np.linspace(-0.4, 0.4, 5) * length:
        stripe = np.array([[offset + 1.5, -width * 0.45], [offset - 1.5, -width * 0.45],
                           [offset - 1.5, width * 0.45], [offset + 1.5, width * 0.45]])
        fill_polygon(image, to_image(stripe, center, angle), (230, 230, 225))


def format_label_line(obj: SyntheticObject, difficult: int = 0) -> str:
    """Return the DOTA label line of one object, corners to 0.1 pixel."""
    coordinates = ' '.join(f'{value:.1f}' for value in obj.polygon.reshape(-1))
    return f'{coordinates} {obj.class_name} {difficult}'


def write_label_file(path: str, objects: List[SyntheticObject]) -> None:
    """Write one DOTA label file; an image without objects gets an empty file."""
    with open(path, 'w', encoding='utf-8') as label_file:
        for obj in objects:
            label_file.write(format_label_line(obj) + '\n')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Generate a synthetic DOTA-v1.0-format dataset '
        '(train/ and val/, each with images/ and labelTxt/).')
    parser.add_argument('out_dir', help='folder to write train/ and val/ into')
    parser.add_argument('--seed', type=int, default=0,
                        help='random seed; equal arguments give identical files '
                        '(default: 0)')
    parser.add_argument('--num-train', type=int, default=64,
                        help='number of training images (default: 64)')
    parser.add_argument('--num-val', type=int, default=16,
                        help='number of validation images (default: 16)')
    parser.add_argument('--image-size', type=int, default=256,
                        help='image width and height in pixels (default: 256)')
    parser.add_argument('--classes', nargs='+', default=list(DEFAULT_CLASSES),
                        help='DOTA-v1.0 class names to draw (default: '
                        f'{" ".join(DEFAULT_CLASSES)}; also supported: '
                        f'{", ".join(sorted(set(CLASS_STYLES) - set(DEFAULT_CLASSES)))})')
    parser.add_argument('--objects-per-image', type=int, nargs=2,
                        default=[3, 6], metavar=('MIN', 'MAX'),
                        help='inclusive range of objects per image '
                        '(default: 3 6)')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        summary = generate_dataset(args.out_dir, args.seed, args.num_train,
                                   args.num_val, args.image_size, args.classes,
                                   tuple(args.objects_per_image))
    except ValueError as error:
        raise SystemExit(f'make_dataset.py: error: {error}') from None
    for split in SPLITS:
        print(f'{split}: {summary[split]["images"]} images, '
              f'{summary[split]["objects"]} objects in '
              f'{osp.dirname(summary[split]["img_dir"])}')
    print(f'classes: {", ".join(summary["classes"])}')


if __name__ == '__main__':
    main()
