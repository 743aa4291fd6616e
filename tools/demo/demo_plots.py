"""Draw the demo's two figures: loss curves and detections on a val image."""
import glob
import json
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')  # Files only; the demo may run without a display.
import matplotlib.pyplot as plt  # noqa: E402
import mmcv  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch, Polygon  # noqa: E402
from mmrotate.core import obb2poly_np  # noqa: E402

LOSS_KEYS = ('loss_cls', 'loss_bbox', 'loss_distill')
# Detections below this score are not drawn.
SCORE_THRESHOLD = 0.3
# Number of logged values each point of the smoothed loss curves averages.
SMOOTHING_WINDOW = 5


def read_training_log(work_dir: str) -> Dict[str, Tuple[List[int], List[float]]]:
    """Read the losses of a run from the newest ``*.log.json`` in ``work_dir``.

    Returns:
        dict: for each loss key the run logged, (iterations, values).

    Raises:
        FileNotFoundError: if the folder has no JSON log.
    """
    log_paths = sorted(glob.glob(osp.join(work_dir, '*.log.json')))
    if not log_paths:
        raise FileNotFoundError(f'no *.log.json training log in {work_dir}')
    curves: Dict[str, Tuple[List[int], List[float]]] = {}
    with open(log_paths[-1], encoding='utf-8') as log_file:
        for line in log_file:
            entry = json.loads(line)
            if entry.get('mode') != 'train':
                continue
            for key, value in entry.items():
                if key.startswith('loss'):
                    iterations, values = curves.setdefault(key, ([], []))
                    iterations.append(entry['iter'])
                    values.append(value)
    return curves


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Return the mean of each value and up to ``window - 1`` values before it."""
    cumulative = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def plot_loss_curves(run_logs: Dict[str, str], path: str) -> None:
    """Plot loss_cls, loss_bbox and loss_distill of each run against iterations.

    Args:
        run_logs (dict): run label -> work dir holding its JSON log.
        path (str): PNG file to write.
    """
    curves_by_run = {label: read_training_log(work_dir)
                     for label, work_dir in run_logs.items()}
    figure, axes = plt.subplots(1, len(LOSS_KEYS), figsize=(5 * len(LOSS_KEYS), 4))
    for axis, key in zip(axes, LOSS_KEYS):
        for color_index, (label, curves) in enumerate(curves_by_run.items()):
            if key not in curves:
                continue
            iterations, values = curves[key]
            color = f'C{color_index}'
            axis.plot(iterations, values, color=color, alpha=0.25, linewidth=1)
            axis.plot(iterations, moving_average(values, SMOOTHING_WINDOW),
                      color=color, label=label, linewidth=1.8)
        axis.set_title(f'{key} (faint: logged, solid: mean of '
                       f'{SMOOTHING_WINDOW} logs)')
        axis.set_xlabel('iteration')
        axis.grid(alpha=0.3)
        if axis.get_lines():
            axis.legend()
        else:
            axis.text(0.5, 0.5, 'not logged by any run', ha='center',
                      va='center', transform=axis.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def pick_example_image(dataset) -> int:
    """Return the index of the val image with the most objects (the first on ties)."""
    counts = [len(dataset.get_ann_info(index)['labels'])
              for index in range(len(dataset))]
    return int(np.argmax(counts))


def class_colors(classes: Sequence[str]) -> Dict[str, tuple]:
    """Give each class a distinct colour from matplotlib's tab10 palette."""
    palette = plt.get_cmap('tab10')
    return {name: palette(index % 10) for index, name in enumerate(classes)}


def draw_polygons(axis, polygons: np.ndarray, colors: Sequence) -> None:
    """Draw (N, 8) polygons as closed outlines."""
    for polygon, color in zip(polygons, colors):
        axis.add_patch(Polygon(polygon.reshape(4, 2), closed=True, fill=False,
                               edgecolor=color, linewidth=1.5))


def detections_as_polygons(class_results: Sequence[np.ndarray],
                           angle_version: str):
    """Turn one image's results into polygons (N, 8), labels (N,) and scores (N,).

    ``class_results`` contains one (num_dets, 6) array [cx, cy, w, h, angle, score]
    per class, as mmrotate's detectors return them.
    """
    polygons, labels, scores = [], [], []
    for label, boxes in enumerate(class_results):
        boxes = boxes[boxes[:, 5] >= SCORE_THRESHOLD]
        if len(boxes) == 0:
            continue
        polygons.append(obb2poly_np(boxes, angle_version)[:, :8])
        labels.extend([label] * len(boxes))
        scores.extend(boxes[:, 5].tolist())
    if not polygons:
        return np.zeros((0, 8)), np.zeros(0, dtype=int), np.zeros(0)
    return np.concatenate(polygons), np.array(labels), np.array(scores)


def plot_detections(dataset, results_by_run: Dict[str, str], path: str,
                    angle_version: str = 'le90') -> int:
    """Draw one val image's ground truth beside each run's detections.

    Args:
        dataset: the val DOTADataset the results were computed on.
        results_by_run (dict): run label -> pickle written by tools/test.py --out.
        path (str): PNG file to write.
        angle_version (str): angle convention of the results' boxes.

    Returns:
        int: the index of the drawn image in ``dataset``.
    """
    index = pick_example_image(dataset)
    info = dataset.data_infos[index]
    image = mmcv.imread(osp.join(dataset.img_prefix, info['filename']),
                        channel_order='rgb')
    annotation = dataset.get_ann_info(index)
    colors = class_colors(dataset.CLASSES)

    panels = len(results_by_run) + 1
    figure, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 5))
    axes[0].imshow(image)
    draw_polygons(axes[0], annotation['polygons'],
                  [colors[dataset.CLASSES[label]] for label in annotation['labels']])
    axes[0].set_title(f'ground truth ({len(annotation["labels"])} objects)')

    for axis, (label, results_path) in zip(axes[1:], results_by_run.items()):
        polygons, labels, scores = detections_as_polygons(
            mmcv.load(results_path)[index], angle_version)
        axis.imshow(image)
        draw_polygons(axis, polygons,
                      [colors[dataset.CLASSES[class_index]] for class_index in labels])
        for polygon, score in zip(polygons, scores):
            axis.text(polygon[0], polygon[1], f'{score:.2f}', fontsize=7,
                      color='white', backgroundcolor=(0, 0, 0, 0.4))
        axis.set_title(f'{label} ({len(scores)} with score >= {SCORE_THRESHOLD})')

    for axis in axes:
        axis.set_axis_off()
    legend = [Patch(edgecolor=colors[name], facecolor='none', label=name)
              for name in dataset.CLASSES]
    figure.legend(handles=legend, loc='lower center', ncol=min(len(legend), 8))
    figure.suptitle(f'{info["filename"]}: box colour = class')
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return index
