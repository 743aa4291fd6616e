"""Run a Python script with denormal floats flushed to zero on the CPU.

Usage::

    python tools/demo/run_flush_denormal.py tools/train.py CONFIG [options]

Detectors trained from scratch produce many denormal (subnormal) floats: their
initial weights and gradients are small, and products of small values fall below
float32's normal range. x86 CPUs compute with denormals in microcode, many times
slower than with normal numbers. Measured on 2 cores of an Intel Xeon, one
training iteration of the demo's LSKNet-S Oriented R-CNN (2 images of 256x256)
took about 14 s without flushing and 1.5 s with it. Flushing zeroes only values
below about 1.2e-38, and the logged losses of the first 10 iterations were equal
to 4 decimals with and without it.

``torch.set_flush_denormal(True)`` turns flushing on for the process, but
tools/train.py and tools/test.py do not call it, so the demo starts them through
this wrapper. The script then runs unchanged, as ``__main__``, with ``sys.argv``
as if it had been started directly.
"""
import os.path as osp
import runpy
import sys

import numpy as np
import torch


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit('usage: run_flush_denormal.py SCRIPT [ARGUMENTS ...]')
    script = sys.argv[1]
    if not osp.isfile(script):
        sys.exit(f'run_flush_denormal.py: error: script not found: {script}')
    # numpy measures its float limits once, on first use; measured after
    # flushing, it warns that the smallest subnormal is zero.
    for dtype in (np.float16, np.float32, np.float64):
        np.finfo(dtype)
    if not torch.set_flush_denormal(True):
        print('run_flush_denormal.py: this CPU cannot flush denormals; running '
              'without it', file=sys.stderr)

    # As when the script is started directly, sys.argv[0] is its path and
    # sys.path[0] its folder.
    sys.argv = sys.argv[1:]
    sys.path[0] = osp.dirname(osp.abspath(script))
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
    main()
