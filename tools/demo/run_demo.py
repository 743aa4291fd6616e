"""Distil LSKNet-T from LSKNet-S on a small DOTA-format dataset, on the CPU, and report.

Steps, each run as a subprocess of the tool a user would run:

1. data: generate a synthetic dataset with tools/demo/make_dataset.py, or split
   ``--data-root`` (a DOTA folder with ``images/`` and ``labelTxt/``) into patches
   with tools/data/dota/split_dota.py and use the patches for training and val;
2. train the LSKNet-S teacher (configs/lsknet/lsk_s_fpn_1x_dota_le90.py);
3. distil an LSKNet-T student from it
   (configs/lsknet/lsk_distill_s_t_fpn_1x_dota_le90.py);
4. train an LSKNet-T baseline without a teacher, with the student's schedule and
   seed (configs/lsknet/lsk_t_fpn_1x_dota_le90.py);
5-7. evaluate the three checkpoints on val with tools/test.py;
8. write ``results.md`` / ``results.json`` (params, mAP, AP per class),
   ``loss_curves.png`` and ``detections.png``.

The configs are used unchanged. Every change for the CPU demo (dataset paths,
image scale, schedule, proposal counts) is passed with ``--cfg-options``, and the
top line of each step's log in ``OUT_DIR/logs/`` is its command line. Training runs
from scratch, because no pretrained backbone can be downloaded.

Usage::

    python tools/demo/run_demo.py --out-dir demo_outputs [--data-root DOTA_ROOT]
    python tools/demo/run_demo.py --out-dir /tmp/demo_quick --quick   # smoke test
"""
import argparse
import os
import os.path as osp
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional

DEMO_DIR = osp.dirname(osp.abspath(__file__))
REPO_ROOT = osp.dirname(osp.dirname(DEMO_DIR))
# Configs name custom_imports=['lsknet']; let this checkout provide it.
if REPO_ROOT not in sys.path:
    sys.path.insert(1, REPO_ROOT)

import demo_config  # noqa: E402
import make_dataset  # noqa: E402
from demo_config import DemoData, DemoModelSize, DemoSchedule  # noqa: E402

TRAIN_SCRIPT = osp.join(REPO_ROOT, 'tools', 'train.py')
TEST_SCRIPT = osp.join(REPO_ROOT, 'tools', 'test.py')
SPLIT_SCRIPT = osp.join(REPO_ROOT, 'tools', 'data', 'dota', 'split_dota.py')
FLUSH_DENORMAL_WRAPPER = osp.join(DEMO_DIR, 'run_flush_denormal.py')
# Written into the output folder, so that a rerun may clear the folder.
MARKER_FILE = '.lsknet_demo_output'
OUTPUT_ENTRIES = ('data', 'configs', 'work_dirs', 'logs', 'results.md',
                  'results.json', 'loss_curves.png', 'detections.png')
NUM_STEPS = 8
# Below this val mAP the teacher has learned too little to teach anything.
MIN_USEFUL_TEACHER_MAP = 0.05


@dataclass(frozen=True)
class DemoPreset:
    """Dataset size and schedules of one demo setting."""
    num_train: int
    num_val: int
    image_size: int
    teacher: DemoSchedule
    student: DemoSchedule


def make_schedule(max_iters: int, lr: float, log_interval: int = 5) -> DemoSchedule:
    """Return a schedule that warms up over 1/5 of the run and drops the lr at 4/5."""
    return DemoSchedule(
        max_iters=max_iters,
        lr=lr,
        warmup_iters=max(1, max_iters // 5),
        lr_step=max(1, max_iters * 4 // 5),
        log_interval=log_interval)


# The full demo takes about 15 minutes on 2 CPU cores (see the README).
FULL_PRESET = DemoPreset(
    num_train=96,
    num_val=24,
    image_size=256,
    teacher=make_schedule(200, 4e-4),
    student=make_schedule(160, 4e-4))
# A smoke test of every step, in 1-2 minutes; the models learn nothing.
QUICK_PRESET = DemoPreset(
    num_train=6,
    num_val=3,
    image_size=128,
    teacher=make_schedule(2, 4e-4, log_interval=1),
    student=make_schedule(2, 4e-4, log_interval=1))


class StepFailed(Exception):
    """A demo step failed; the message names the cause and the step's log."""


@dataclass
class DemoRun:
    """One trained model of the demo."""
    name: str
    description: str
    train_config: str
    test_config: str
    schedule: DemoSchedule
    work_dir: str
    train_seconds: float = 0.0

    @property
    def checkpoint(self) -> str:
        return osp.join(self.work_dir, f'iter_{self.schedule.max_iters}.pth')

    @property
    def results_path(self) -> str:
        return osp.join(self.work_dir, 'val_results.pkl')


class Progress:
    """Prints numbered steps with the time elapsed since the demo started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> str:
        minutes, seconds = divmod(int(time.monotonic() - self.start), 60)
        return f'{minutes:2d}:{seconds:02d}'

    def step(self, number: int, text: str) -> None:
        print(f'[demo {self.elapsed()}] step {number}/{NUM_STEPS}: {text}',
              flush=True)

    def note(self, text: str) -> None:
        print(f'[demo {self.elapsed()}]   {text}', flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Train an LSKNet-S teacher, distil LSKNet-T from it, train an '
        'LSKNet-T baseline, and compare them on a val split (CPU).')
    parser.add_argument('--out-dir', default='demo_outputs',
                        help='folder for data, work dirs, logs, table and figures '
                        '(default: demo_outputs); a previous demo output there is '
                        'replaced')

    parser.add_argument('--data-root',
                        help='DOTA folder with images/ and labelTxt/ to use instead '
                        'of the synthetic dataset; it is split into patches of '
                        '--image-size pixels, used for training and val alike')

    parser.add_argument('--quick', action='store_true',
                        help='tiny dataset and 2 iterations per model: checks that '
                        'every step runs, in 1-2 minutes')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the synthetic data and of every training run '
                        '(default: 0)')

    parser.add_argument('--teacher-iters', type=int,
                        help='training iterations of the teacher (default: 200, '
                        'or 2 with --quick)')
    parser.add_argument('--student-iters', type=int,
                        help='training iterations of the distilled student and of '
                        'the baseline (default: 160, or 2 with --quick)')

    parser.add_argument('--num-train', type=int,
                        help='synthetic training images (default: 96, or 6 with '
                        '--quick)')
    parser.add_argument('--num-val', type=int,
                        help='synthetic val images (default: 24, or 3 with --quick)')
    parser.add_argument('--image-size', type=int,
                        help='image and patch size in pixels (default: 256, or 128 '
                        'with --quick)')

    parser.add_argument('--verbose', action='store_true',
                        help='echo the full output of every step, not only its '
                        'training progress')
    args = parser.parse_args(argv)

    for name in ('teacher_iters', 'student_iters', 'num_train', 'num_val',
                 'image_size'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1, got {value}')
    return args


def select_preset(args: argparse.Namespace) -> DemoPreset:
    """Return the preset with the command line's overrides applied."""
    preset = QUICK_PRESET if args.quick else FULL_PRESET
    teacher, student = preset.teacher, preset.student
    if args.teacher_iters is not None:
        teacher = make_schedule(args.teacher_iters, teacher.lr,
                                teacher.log_interval)
    if args.student_iters is not None:
        student = make_schedule(args.student_iters, student.lr,
                                student.log_interval)
    return replace(
        preset,
        num_train=args.num_train or preset.num_train,
        num_val=args.num_val or preset.num_val,
        image_size=args.image_size or preset.image_size,
        teacher=teacher,
        student=student)


def prepare_out_dir(out_dir: str) -> None:
    """Create ``out_dir``, clearing the entries of a previous demo output in it."""
    if osp.isdir(out_dir) and os.listdir(out_dir):
        if not osp.isfile(osp.join(out_dir, MARKER_FILE)):
            raise StepFailed(
                f'output folder {out_dir} is not empty and was not written by '
                'the demo; choose another --out-dir or empty it')
        for entry in OUTPUT_ENTRIES:
            path = osp.join(out_dir, entry)
            if osp.isdir(path):
                shutil.rmtree(path)
            elif osp.exists(path):
                os.remove(path)
    os.makedirs(osp.join(out_dir, 'logs'), exist_ok=True)
    open(osp.join(out_dir, MARKER_FILE), 'w').close()


def check_tools() -> None:
    """Fail early when a tool the demo runs is missing from the checkout."""
    for script in (TRAIN_SCRIPT, TEST_SCRIPT):
        if not osp.isfile(script):
            raise StepFailed(f'{script} not found; the demo runs training and '
                             'testing through it')


TRAINING_LINE = re.compile(r'Iter \[(\d+)/(\d+)\]')
LOG_VALUE = re.compile(r'(eta|loss[a-z_]*): ([^,\s]+)')


def summarise_training_line(line: str) -> Optional[str]:
    """Shorten an mmcv 'Iter [i/n] ...' log line to progress and losses, else None.

    Only every 25th iteration and the last one are summarised, to keep the
    console short; the full lines are in the step's log.
    """
    match = TRAINING_LINE.search(line)
    if match is None:
        return None
    iteration, total = int(match.group(1)), int(match.group(2))
    if iteration % 25 and iteration != total:
        return None
    values = dict(LOG_VALUE.findall(line))
    losses = ', '.join(f'{key} {values[key]}'
                       for key in ('loss', 'loss_cls', 'loss_bbox', 'loss_distill')
                       if key in values)
    return f'iter {iteration}/{total} (eta {values.get("eta", "?")}): {losses}'


def run_command(command: List[str], log_path: str, progress: Progress,
                verbose: bool) -> None:
    """Run ``command`` from the repository root, logging its output to ``log_path``.

    Raises:
        StepFailed: the command exited with a non-zero code; the message contains the
            end of its output.
    """
    env = dict(os.environ, PYTHONUNBUFFERED='1', MPLBACKEND='Agg')
    # libgomp's threads (torch's CPU wheels use it) spin for 300000 rounds before
    # sleeping, which wastes whole time slices when other processes share the
    # cores. Measured on 2 cores for one forward and backward pass of the demo's
    # LSKNet-T: 1.1-1.2 s on idle cores with either spin count, but 3.7-4.9 s
    # with 20000 rounds and 7.1-8.6 s with the default next to one other
    # training process.
    if 'OMP_WAIT_POLICY' not in env:
        env.setdefault('GOMP_SPINCOUNT', '20000')
    with open(log_path, 'w', encoding='utf-8') as log_file:
        log_file.write(f'$ {shlex.join(command)}\n\n')
        log_file.flush()
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors='replace')
        tail: List[str] = []
        for line in process.stdout:
            log_file.write(line)
            tail = (tail + [line])[-30:]
            summary = line.rstrip() if verbose else summarise_training_line(line)
            if summary:
                progress.note(summary)
        return_code = process.wait()
    if return_code != 0:
        raise StepFailed(
            f'the command exited with code {return_code}. Last lines of its '
            f'output:\n{"".join(tail)}\nFull log, with the command at the top: '
            f'{log_path}')


def python_tool(script: str, *arguments: str) -> List[str]:
    """Return the command that runs a repository tool with denormals flushed."""
    return [sys.executable, FLUSH_DENORMAL_WRAPPER, script, *arguments]


def prepare_synthetic_data(out_dir: str, preset: DemoPreset, seed: int,
                           progress: Progress) -> DemoData:
    data_dir = osp.join(out_dir, 'data')
    summary = make_dataset.generate_dataset(
        data_dir,
        seed=seed,
        num_train=preset.num_train,
        num_val=preset.num_val,
        image_size=preset.image_size)
    for split in make_dataset.SPLITS:
        progress.note(f'{split}: {summary[split]["images"]} images, '
                      f'{summary[split]["objects"]} objects')
    return DemoData(
        train_img_dir=summary['train']['img_dir'],
        train_ann_dir=summary['train']['ann_dir'],
        val_img_dir=summary['val']['img_dir'],
        val_ann_dir=summary['val']['ann_dir'],
        classes=summary['classes'])


def prepare_dota_patches(out_dir: str, data_root: str, patch_size: int,
                         progress: Progress, verbose: bool) -> DemoData:
    """Split a DOTA folder into patches; the patches serve as train and val."""
    img_dir, ann_dir = osp.join(data_root, 'images'), osp.join(data_root, 'labelTxt')
    for folder in (img_dir, ann_dir):
        if not osp.isdir(folder):
            raise StepFailed(f'--data-root needs images/ and labelTxt/, but '
                             f'{folder} is not a folder')
    if not osp.isfile(SPLIT_SCRIPT):
        raise StepFailed(f'{SPLIT_SCRIPT} not found; the demo splits --data-root '
                         'into patches with it')
    patch_dir = osp.join(out_dir, 'data', 'patches')
    command = [
        sys.executable, SPLIT_SCRIPT, '--config', 'ss_trainval', '--img-dirs',
        img_dir, '--ann-dirs', ann_dir, '--save-dir', patch_dir, '--nproc', '1',
        '--sizes', str(patch_size), '--gaps', str(patch_size // 4), '--rates', '1.0'
    ]
    run_command(command, osp.join(out_dir, 'logs', '1_split_dota.log'), progress,
                verbose)
    num_patches = len(os.listdir(osp.join(patch_dir, 'images')))
    progress.note(f'{num_patches} patches of {patch_size}x{patch_size} in '
                  f'{patch_dir}, used for training and val')
    images, annfiles = osp.join(patch_dir, 'images'), osp.join(patch_dir, 'annfiles')
    return DemoData(images, annfiles, images, annfiles,
                    make_dataset.DOTA_V1_CLASSES)


def common_options(config_path: str, data: DemoData,
                   size: DemoModelSize) -> Dict[str, object]:
    """Return the data and model overrides that every run and test shares."""
    cfg = demo_config.merged_config(config_path, [])
    options = demo_config.model_options(len(data.classes), size)
    options.update(demo_config.data_options(cfg, data, size))
    return options


def train(run: DemoRun, options: Dict[str, object], seed: int, out_dir: str,
          step: int, progress: Progress, verbose: bool) -> None:
    """Train ``run`` with tools/train.py and check that its checkpoint exists."""
    options = dict(options, **demo_config.schedule_options(run.schedule))
    command = python_tool(TRAIN_SCRIPT, run.train_config, '--work-dir',
                          run.work_dir, '--seed', str(seed), '--deterministic',
                          '--no-validate', '--cfg-options',
                          *demo_config.format_cfg_options(options))
    start = time.monotonic()
    run_command(command, osp.join(out_dir, 'logs', f'{step}_train_{run.name}.log'),
                progress, verbose)
    run.train_seconds = time.monotonic() - start
    if not osp.isfile(run.checkpoint):
        raise StepFailed(f'tools/train.py finished without writing '
                         f'{run.checkpoint}; see the log of step {step}')
    progress.note(f'{run.description}: {run.checkpoint} '
                  f'({run.train_seconds / 60:.1f} min)')


def evaluate(run: DemoRun, options: Dict[str, object], out_dir: str, step: int,
             progress: Progress, verbose: bool) -> None:
    """Test ``run``'s checkpoint on val with tools/test.py, saving raw results."""
    command = python_tool(TEST_SCRIPT, run.test_config, run.checkpoint, '--eval',
                          'mAP', '--out', run.results_path, '--cfg-options',
                          *demo_config.format_cfg_options(options))
    run_command(command, osp.join(out_dir, 'logs', f'{step}_test_{run.name}.log'),
                progress, verbose)
    if not osp.isfile(run.results_path):
        raise StepFailed(f'tools/test.py finished without writing '
                         f'{run.results_path}; see the log of step {step}')


def write_teacher_config(options: Dict[str, object], out_dir: str) -> str:
    """Dump the teacher's config, with the teacher run's overrides, for the student.

    The distillation run rebuilds the teacher from this file, so the teacher it
    loads the checkpoint into has the architecture and class count it was trained
    with.
    """
    config_dir = osp.join(out_dir, 'configs')
    os.makedirs(config_dir, exist_ok=True)
    path = osp.join(config_dir, 'teacher_lsk_s_demo.py')
    cfg = demo_config.merged_config(demo_config.TEACHER_CONFIG,
                                    demo_config.format_cfg_options(options))
    cfg.dump(path)
    return path


@dataclass
class DemoReport:
    """The scored runs, their Markdown table and the files written."""
    rows: list
    table: str
    paths: Dict[str, str]


def report(runs: List[DemoRun], options: Dict[str, object], preset: DemoPreset,
           args: argparse.Namespace, out_dir: str) -> DemoReport:
    """Score the runs, write the table and draw the figures."""
    import demo_eval
    import demo_plots

    test_cfg = demo_config.merged_config(
        demo_config.STUDENT_CONFIG, demo_config.format_cfg_options(options))
    dataset = demo_eval.build_test_dataset(test_cfg)
    params_by_config = {}
    rows = []
    for run in runs:
        if run.test_config not in params_by_config:
            params_by_config[run.test_config] = demo_eval.count_parameters(
                demo_config.merged_config(run.test_config,
                                          demo_config.format_cfg_options(options)))
        scores = demo_eval.score_results(run.results_path, dataset)
        rows.append(
            demo_eval.ModelResult(
                name=run.name,
                description=run.description,
                params=params_by_config[run.test_config],
                iterations=run.schedule.max_iters,
                train_seconds=run.train_seconds,
                **scores))

    source = (f'DOTA patches of {args.data_root}' if args.data_root else
              f'synthetic data (seed {args.seed}, {preset.num_train} train images)')
    notes = [
        f'Trained from scratch on the CPU on {source}, {preset.image_size}x'
        f'{preset.image_size} pixels, batch {preset.student.samples_per_gpu}, '
        f'seed {args.seed}.',
        f'AP: VOC07 11-point at rotated IoU {demo_eval.IOU_THRESHOLD} on the val '
        f'split ({len(dataset)} images), as DOTADataset.evaluate computes it; mAP '
        'averages the classes that have ground truth there.',
        'params: parameters of the detector that tools/test.py builds. The '
        "distilled student's checkpoint contains the student alone.",
    ]
    paths = {
        'table': osp.join(out_dir, 'results.md'),
        'json': osp.join(out_dir, 'results.json'),
        'loss_curves': osp.join(out_dir, 'loss_curves.png'),
        'detections': osp.join(out_dir, 'detections.png'),
    }
    table = demo_eval.write_results(rows, paths['table'], paths['json'], notes)
    demo_plots.plot_loss_curves({run.description: run.work_dir for run in runs},
                                paths['loss_curves'])
    demo_plots.plot_detections(
        dataset, {run.description: run.results_path for run in runs},
        paths['detections'], angle_version=test_cfg.get('angle_version', 'le90'))
    return DemoReport(rows, table, paths)


def run_demo(args: argparse.Namespace) -> None:
    progress = Progress()
    preset = select_preset(args)
    try:
        out_dir = demo_config.check_option_path(args.out_dir)
        data_root = (demo_config.check_option_path(args.data_root)
                     if args.data_root else None)
    except ValueError as error:
        raise StepFailed(str(error)) from None
    check_tools()
    prepare_out_dir(out_dir)
    size = DemoModelSize(image_size=preset.image_size)

    if data_root:
        progress.step(1, f'splitting {data_root} into patches')
        data = prepare_dota_patches(out_dir, data_root, preset.image_size,
                                    progress, args.verbose)
    else:
        progress.step(1, 'generating the synthetic DOTA-format dataset')
        data = prepare_synthetic_data(out_dir, preset, args.seed, progress)

    work_dirs = osp.join(out_dir, 'work_dirs')
    teacher = DemoRun('teacher', 'LSKNet-S teacher', demo_config.TEACHER_CONFIG,
                      demo_config.TEACHER_CONFIG, preset.teacher,
                      osp.join(work_dirs, 'teacher'))
    distilled = DemoRun('distilled', 'LSKNet-T distilled',
                        demo_config.DISTILL_CONFIG, demo_config.STUDENT_CONFIG,
                        preset.student, osp.join(work_dirs, 'distilled'))
    baseline = DemoRun('baseline', 'LSKNet-T baseline', demo_config.STUDENT_CONFIG,
                       demo_config.STUDENT_CONFIG, preset.student,
                       osp.join(work_dirs, 'baseline'))
    teacher_options = common_options(demo_config.TEACHER_CONFIG, data, size)
    student_options = common_options(demo_config.STUDENT_CONFIG, data, size)

    progress.step(2, f'training the {teacher.description} '
                  f'({teacher.schedule.max_iters} iterations)')
    train(teacher, teacher_options, args.seed, out_dir, 2, progress, args.verbose)

    progress.step(3, f'distilling the LSKNet-T student from the teacher '
                  f'({distilled.schedule.max_iters} iterations)')
    teacher_config = write_teacher_config(
        dict(teacher_options, **demo_config.schedule_options(teacher.schedule)),
        out_dir)
    distill_options = dict(
        common_options(demo_config.DISTILL_CONFIG, data, size),
        **{
            'model.teacher_config': teacher_config,
            'model.teacher_ckpt': teacher.checkpoint
        })
    train(distilled, distill_options, args.seed, out_dir, 3, progress,
          args.verbose)

    progress.step(4, f'training the {baseline.description} without a teacher '
                  f'({baseline.schedule.max_iters} iterations)')
    train(baseline, student_options, args.seed, out_dir, 4, progress, args.verbose)

    runs = [teacher, distilled, baseline]
    for step, run in enumerate(runs, start=5):
        progress.step(step, f'evaluating the {run.description} on val')
        evaluate(run, teacher_options if run is teacher else student_options,
                 out_dir, step, progress, args.verbose)

    progress.step(8, 'writing the results table and figures')
    outputs = report(runs, student_options, preset, args, out_dir)

    print('\n' + outputs.table + '\n')
    teacher_map = outputs.rows[0].map
    if not args.quick and teacher_map < MIN_USEFUL_TEACHER_MAP:
        print(f'warning: the teacher reached only {teacher_map:.3f} '
              'mAP, so the distillation comparison says little; train longer '
              '(--teacher-iters) or check the data')
    print('Outputs:')
    print(f'  data:         {osp.dirname(data.train_img_dir)} (train), '
          f'{osp.dirname(data.val_img_dir)} (val)')
    for run in runs:
        print(f'  {run.name + ":":13} {run.work_dir} (checkpoint '
              f'{osp.basename(run.checkpoint)}, val results '
              f'{osp.basename(run.results_path)})')
    print(f'  teacher config for distillation: {teacher_config}')
    print(f'  step logs:    {osp.join(out_dir, "logs")}')
    print(f'  table:        {outputs.paths["table"]} and {outputs.paths["json"]}')
    print(f'  loss curves:  {outputs.paths["loss_curves"]}')
    print(f'  detections:   {outputs.paths["detections"]}')
    print(f'Finished in {progress.elapsed().strip()} (min:s).')


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run_demo(args)
    except StepFailed as error:
        print(f'\ndemo failed: {error}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
