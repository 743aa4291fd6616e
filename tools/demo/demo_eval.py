"""Score the demo's models and write the results table.

Per-class AP is computed from the raw results that tools/test.py saves with
``--out``. mmrotate's ``eval_rbbox_map`` scores them exactly as
``DOTADataset.evaluate`` does (IoU threshold 0.5, VOC07 11-point AP), so the demo
does not depend on the layout of the table that tools/test.py prints.
"""
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Sequence

import mmcv
from mmcv import Config
from mmrotate.core import eval_rbbox_map
from mmrotate.datasets import build_dataset

IOU_THRESHOLD = 0.5


@dataclass
class ModelResult:
    """One row of the results table.

    ``class_ap`` maps each class name to its AP in [0, 1]; ``num_gts`` to the
    number of ground-truth objects of that class in the val split.
    """
    name: str
    description: str
    params: int
    iterations: int
    train_seconds: float
    map: float
    class_ap: Dict[str, float] = field(default_factory=dict)
    num_gts: Dict[str, int] = field(default_factory=dict)


def build_test_dataset(cfg: Config):
    """Build ``cfg.data.test`` in test mode, as tools/test.py does."""
    dataset_cfg = cfg.data.test.copy()
    dataset_cfg.test_mode = True
    return build_dataset(dataset_cfg)


def score_results(results_path: str, dataset) -> Dict:
    """Compute mAP and per-class AP of saved results on ``dataset``.

    Args:
        results_path (str): pickle written by ``tools/test.py --out``: one list per
            image of (num_dets, 6) arrays [cx, cy, w, h, angle, score], one array
            per class.
        dataset: the DOTADataset the results were computed on, in the same order.

    Returns:
        dict: ``map`` (float), ``class_ap`` and ``num_gts`` (dicts keyed by class).
    """
    results = mmcv.load(results_path)
    if len(results) != len(dataset):
        raise ValueError(
            f'{results_path} contains results for {len(results)} images, but the '
            f'val split has {len(dataset)}; rerun tools/test.py on this split')
    annotations = [dataset.get_ann_info(index) for index in range(len(dataset))]
    mean_ap, class_results = eval_rbbox_map(
        results,
        annotations,
        iou_thr=IOU_THRESHOLD,
        dataset=dataset.CLASSES,
        logger='silent',
        nproc=1)
    return {
        'map': float(mean_ap),
        'class_ap': {
            name: float(result['ap'])
            for name, result in zip(dataset.CLASSES, class_results)
        },
        'num_gts': {
            name: int(result['num_gts'])
            for name, result in zip(dataset.CLASSES, class_results)
        },
    }


def count_parameters(cfg: Config) -> int:
    """Return the number of parameters of the detector that ``cfg.model`` builds.

    The caller must have imported ``lsknet`` so that LSKNet is registered.
    """
    from mmrotate.models import build_detector

    model = build_detector(cfg.model)
    return sum(parameter.numel() for parameter in model.parameters())


def classes_with_objects(rows: Sequence[ModelResult]) -> List[str]:
    """Return the classes that have ground truth in the val split, in order.

    mAP averages over these classes only, as ``eval_rbbox_map`` does.
    """
    if not rows:
        return []
    return [name for name, count in rows[0].num_gts.items() if count > 0]


def format_markdown_table(rows: Sequence[ModelResult]) -> str:
    """Return the results as a Markdown table: model, params, mAP, AP per class."""
    classes = classes_with_objects(rows)
    header = ['model', 'params', 'iters', 'train time', 'mAP'] + classes
    lines = [
        '| ' + ' | '.join(header) + ' |',
        '|' + '|'.join(['---'] + ['---:'] * (len(header) - 1)) + '|',
    ]
    for row in rows:
        cells = [
            row.description, f'{row.params / 1e6:.2f} M', str(row.iterations),
            f'{row.train_seconds / 60:.1f} min', f'{row.map:.3f}'
        ] + [f'{row.class_ap[name]:.3f}' for name in classes]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_results(rows: Sequence[ModelResult], markdown_path: str,
                  json_path: str, notes: Sequence[str] = ()) -> str:
    """Write the table as Markdown (with ``notes`` below it) and as JSON.

    Returns:
        str: the Markdown table.
    """
    table = format_markdown_table(rows)
    with open(markdown_path, 'w', encoding='utf-8') as markdown_file:
        markdown_file.write('# Distillation demo results\n\n')
        markdown_file.write(table + '\n')
        if notes:
            markdown_file.write('\n' + '\n'.join(f'- {note}' for note in notes) +
                                '\n')
    with open(json_path, 'w', encoding='utf-8') as json_file:
        json.dump({
            'iou_threshold': IOU_THRESHOLD,
            'models': [asdict(row) for row in rows]
        }, json_file, indent=2)
    return table
