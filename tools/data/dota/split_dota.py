"""Split DOTA images into fixed-size patches for training and testing.

A thin entry point around the splitter that ships inside the mmrotate wheel
(``mmrotate/.mim/tools/data/dota/split/img_split.py``). The settings come from a
JSON file in ``split_configs/`` and the command line can override the folders,
the number of processes and the window sizes. Run it from the repository root,
because the JSON paths (``data/DOTA/...``, ``data/split_ss_dota/...``) are
relative to the working directory, as the configs' ``data_root`` is::

    python tools/data/dota/split_dota.py --config ss_trainval
    python tools/data/dota/split_dota.py --config ss_test --src-root /datasets/DOTA

``tools/data/dota/README.md`` describes the expected folder layout.
"""
import argparse
import importlib.util
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional

SPLIT_CONFIG_DIR = osp.join(osp.dirname(osp.abspath(__file__)), 'split_configs')
# The folder that the shipped JSON files read DOTA from. --src-root replaces it.
DEFAULT_SRC_ROOT = 'data/DOTA'
SPLITTER_PATH_IN_MMROTATE = ('tools', 'data', 'dota', 'split', 'img_split.py')


class SplitError(Exception):
    """A problem with the inputs of a split, explained for the user."""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Split DOTA images into patches with mmrotate\'s splitter.')
    parser.add_argument(
        '--config',
        required=True,
        help='split settings: a name from tools/data/dota/split_configs '
        '(ss_trainval, ss_val, ss_test, ms_trainval, ms_test) or a JSON file')
    parser.add_argument(
        '--src-root',
        help=f'DOTA folder holding train/, val/ and test/ (default: '
        f'{DEFAULT_SRC_ROOT})')
    parser.add_argument(
        '--img-dirs',
        nargs='+',
        help='image folders to split, replacing those of the config')
    parser.add_argument(
        '--ann-dirs',
        nargs='+',
        help='labelTxt folders matching --img-dirs; leave out for unlabelled '
        'images')
    parser.add_argument(
        '--save-dir',
        help='output folder, which must not exist yet; receives images/ and '
        'annfiles/ (default: the config\'s save_dir)')
    parser.add_argument(
        '--nproc', type=int, help='number of worker processes')
    parser.add_argument(
        '--sizes', nargs='+', type=int, help='window sizes in pixels')
    parser.add_argument(
        '--gaps',
        nargs='+',
        type=int,
        help='overlaps between neighbouring windows in pixels, one per size')
    parser.add_argument(
        '--rates',
        nargs='+',
        type=float,
        help='image scales; each window size and gap is divided by each rate')
    return parser.parse_args(argv)


def load_split_config(name_or_path: str) -> dict:
    """Read a split JSON given by its name in ``split_configs/`` or its path."""
    path = name_or_path
    if not path.endswith('.json'):
        path = osp.join(SPLIT_CONFIG_DIR, f'{name_or_path}.json')
    if not osp.isfile(path):
        names = sorted(
            osp.splitext(name)[0] for name in os.listdir(SPLIT_CONFIG_DIR))
        raise SplitError(f'split config not found: {path} (use one of '
                         f'{", ".join(names)} or a path to a JSON file)')
    with open(path, encoding='utf-8') as config_file:
        return json.load(config_file)


def apply_overrides(settings: dict, args: argparse.Namespace) -> dict:
    """Return a copy of ``settings`` with the command-line overrides applied."""
    settings = dict(settings)
    if args.img_dirs is not None:
        if args.ann_dirs is None and settings.get('ann_dirs'):
            raise SplitError(
                'the config reads labels, so --img-dirs needs --ann-dirs as well '
                '(use ss_test or ms_test to split unlabelled images)')
        settings['img_dirs'] = args.img_dirs
        settings['ann_dirs'] = args.ann_dirs
    elif args.ann_dirs is not None:
        raise SplitError('--ann-dirs needs --img-dirs to pair with')
    if args.src_root is not None:
        settings['img_dirs'] = _move_under(settings['img_dirs'], args.src_root)
        if settings.get('ann_dirs'):
            settings['ann_dirs'] = _move_under(settings['ann_dirs'],
                                               args.src_root)
    for key in ('save_dir', 'nproc', 'sizes', 'gaps', 'rates'):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    return settings


def _move_under(paths: List[str], src_root: str) -> List[str]:
    moved = []
    for path in paths:
        relative = osp.relpath(path, DEFAULT_SRC_ROOT)
        if relative.startswith('..'):
            raise SplitError(
                f'--src-root replaces {DEFAULT_SRC_ROOT}, but {path} is not under '
                'it; pass --img-dirs and --ann-dirs instead')
        moved.append(osp.join(src_root, relative))
    return moved


def check_settings(settings: dict) -> None:
    """Raise ``SplitError`` for settings the splitter would reject or fail on."""
    missing = [
        path for path in settings['img_dirs'] + (settings.get('ann_dirs') or [])
        if not osp.isdir(path)
    ]
    if missing:
        raise SplitError(
            f'DOTA source folder not found: {", ".join(missing)} (arrange DOTA '
            'as tools/data/dota/README.md shows, or point --src-root or '
            '--img-dirs/--ann-dirs at it)')
    ann_dirs = settings.get('ann_dirs')
    if ann_dirs and len(ann_dirs) != len(settings['img_dirs']):
        raise SplitError(
            f'{len(settings["img_dirs"])} image folders but {len(ann_dirs)} '
            'annotation folders: give one labelTxt folder per image folder')
    if osp.exists(settings['save_dir']):
        raise SplitError(
            f'output folder already exists: {settings["save_dir"]} (remove it, or '
            'pass --save-dir with a new folder)')

    sizes, gaps, rates = settings['sizes'], settings['gaps'], settings['rates']
    if len(sizes) != len(gaps):
        raise SplitError(f'--sizes {sizes} and --gaps {gaps} need one gap per size')
    if len(sizes) > 1 and len(rates) > 1:
        raise SplitError('the splitter takes several sizes or several rates, '
                         f'not both (got sizes {sizes} and rates {rates})')
    for size, gap in zip(sizes, gaps):
        if not 0 <= gap < size:
            raise SplitError(f'gap {gap} must be at least 0 and smaller than '
                             f'its window size {size}')
    if settings['nproc'] < 1:
        raise SplitError(f'--nproc must be at least 1, got {settings["nproc"]}')


def find_splitter() -> str:
    """Return the path of mmrotate's ``img_split.py``, checking its dependencies."""
    if importlib.util.find_spec('shapely') is None:
        raise SplitError(
            'shapely is not installed, but the DOTA splitter needs it to clip '
            'objects to windows: pip install shapely')
    mmrotate_spec = importlib.util.find_spec('mmrotate')
    if mmrotate_spec is None or mmrotate_spec.origin is None:
        raise SplitError('mmrotate is not installed: install mmrotate 0.3.4 as '
                         'the README describes')
    package_dir = osp.dirname(mmrotate_spec.origin)
    candidates = [
        # A wheel install ships the tools inside the package ...
        osp.join(package_dir, '.mim', *SPLITTER_PATH_IN_MMROTATE),
        # ... and a source checkout (pip install -e) keeps them beside it.
        osp.join(osp.dirname(package_dir), *SPLITTER_PATH_IN_MMROTATE),
    ]
    for candidate in candidates:
        if osp.isfile(candidate):
            return candidate
    raise SplitError('mmrotate\'s DOTA splitter not found; looked for '
                     f'{" and ".join(candidates)}. Reinstall mmrotate 0.3.4.')


def run_split(settings: dict) -> int:
    """Run mmrotate's splitter with ``settings`` and return the patch count."""
    splitter = find_splitter()
    check_settings(settings)

    with tempfile.TemporaryDirectory() as tmp_dir:
        settings_path = osp.join(tmp_dir, 'split_settings.json')
        with open(settings_path, 'w', encoding='utf-8') as settings_file:
            json.dump(settings, settings_file, indent=4)
        command = [sys.executable, splitter, '--base-json', settings_path]
        completed = subprocess.run(command, check=False)
        if completed.returncode != 0:
            raise SplitError(
                f'mmrotate\'s splitter failed with exit code '
                f'{completed.returncode}; its output above names the cause '
                f'(command: {" ".join(command)})')
        # Keep the settings beside the patches, so the split can be repeated.
        shutil.copy(settings_path, settings['save_dir'])

    return len(os.listdir(osp.join(settings['save_dir'], 'images')))


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    try:
        settings = apply_overrides(load_split_config(args.config), args)
        num_patches = run_split(settings)
    except SplitError as error:
        sys.exit(f'split_dota.py: error: {error}')
    print(f'Wrote {num_patches} patches to {settings["save_dir"]} '
          '(images/ and annfiles/)')


if __name__ == '__main__':
    main()
