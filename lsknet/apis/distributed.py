"""Process groups and DDP wrapping that work with and without CUDA."""
import contextlib
import os
import shutil
import subprocess

import torch
import torch.distributed as dist
from mmcv.parallel import MMDistributedDataParallel
from mmcv.runner import init_dist
from torch import nn

# Variables that torchrun sets for every process. The gloo path reads them (env://).
TORCHRUN_ENV_VARS = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


def init_distributed(launcher: str, backend: str = 'nccl', **kwargs) -> None:
    """Initialise the default process group for ``--launcher``.

    With CUDA this is mmcv's ``init_dist``, which also picks this process's GPU.
    Without CUDA, ``init_dist`` would fail in ``torch.cuda.set_device``, so the
    group is created with the gloo backend from the torchrun environment
    variables instead (for SLURM, derived from its ``SLURM_*`` variables),
    regardless of ``backend``. Nothing is logged here,
    because mmcv's logger silences ranks other than 0 only when it is first
    created after this call; ``torch.distributed.get_backend()`` returns the
    backend that was chosen.

    Args:
        launcher (str): ``'pytorch'`` (torchrun), ``'slurm'`` or ``'mpi'``.
        backend (str): Backend for CUDA runs, usually ``cfg.dist_params.backend``.
        **kwargs: Passed on to ``init_dist`` (CUDA) or ``init_process_group``.

    Raises:
        NotImplementedError: For ``'mpi'`` without CUDA.
        RuntimeError: For ``'pytorch'`` without CUDA when a torchrun variable is unset.
    """
    if torch.cuda.is_available():
        init_dist(launcher, backend=backend, **kwargs)
        return

    if launcher == 'slurm':
        _export_slurm_env()
    elif launcher != 'pytorch':
        raise NotImplementedError(
            f'--launcher {launcher} needs CUDA. Start CPU runs with '
            'tools/dist_train.sh (torchrun) or tools/slurm_train.sh.')
    missing = [name for name in TORCHRUN_ENV_VARS if name not in os.environ]
    if missing:
        raise RuntimeError(
            f'--launcher pytorch without CUDA needs the environment variables '
            f'that torchrun sets, but {", ".join(missing)} is unset. Start the '
            'run with tools/dist_train.sh or torchrun.')

    dist.init_process_group(backend='gloo', init_method='env://', **kwargs)


def _export_slurm_env() -> None:
    """Set the torchrun variables from the ones srun sets for each task."""
    missing = [
        name for name in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')
        if name not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f'--launcher slurm needs the variables srun sets, but '
            f'{", ".join(missing)} is unset. Start the run with '
            'tools/slurm_train.sh.')
    os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
    os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
    os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
    os.environ.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in os.environ:
        nodelist = os.environ['SLURM_NODELIST']
        # scontrol expands compressed lists such as node[01-04]; the first
        # node hosts the rendezvous.
        hosts = [nodelist.split(',')[0]]
        if shutil.which('scontrol'):
            expanded = subprocess.run(
                ['scontrol', 'show', 'hostnames', nodelist],
                capture_output=True,
                text=True,
                check=False).stdout.split()
            hosts = expanded or hosts
        os.environ['MASTER_ADDR'] = hosts[0]


class CompatibleMMDistributedDataParallel(MMDistributedDataParallel):
    """mmcv's ``MMDistributedDataParallel`` that also runs on the CPU and torch 2.x.

    It fixes two gaps of mmcv 1.7.2's wrapper:

    - On the CPU, DDP is built without ``device_ids``, and mmcv then hands the
      batch's ``DataContainer`` objects to the detector unscattered. Here they
      are unwrapped on the CPU (device id -1), as ``MMDataParallel`` does.
    - mmcv's ``_run_ddp_forward`` reads ``_use_replicated_tensor_module``, which
      torch 2.0 removed, so ``model(**data)`` (used by ``multi_gpu_test`` and
      ``DistEvalHook``) raises ``AttributeError``.
    """

    def train_step(self, *inputs, **kwargs):
        if not self.device_ids:
            inputs, kwargs = self._scatter_to_cpu(inputs, kwargs)
        return super().train_step(*inputs, **kwargs)

    def val_step(self, *inputs, **kwargs):
        if not self.device_ids:
            inputs, kwargs = self._scatter_to_cpu(inputs, kwargs)
        return super().val_step(*inputs, **kwargs)

    def _run_ddp_forward(self, *inputs, **kwargs):
        device_id = self.device_ids[0] if self.device_ids else -1
        inputs, kwargs = self.to_kwargs(inputs, kwargs, device_id)
        # torch >= 2.0 tracks whether a call is inside DDP's forward.
        inside_forward = getattr(self, '_inside_ddp_forward',
                                 contextlib.nullcontext)
        with inside_forward():
            return self.module(*inputs[0], **kwargs[0])

    def _scatter_to_cpu(self, inputs, kwargs):
        inputs, kwargs = self.scatter(inputs, kwargs, [-1])
        return inputs[0], kwargs[0]


def build_distributed_model(model: nn.Module, device: str,
                            **ddp_kwargs) -> CompatibleMMDistributedDataParallel:
    """Wrap ``model`` for distributed training or testing on ``device``.

    Args:
        model (nn.Module): The detector.
        device (str): ``'cuda'`` (the GPU ``init_distributed`` selected for this
            process) or ``'cpu'``.
        **ddp_kwargs: Passed to ``DistributedDataParallel``, e.g.
            ``broadcast_buffers`` or ``find_unused_parameters``.

    Returns:
        CompatibleMMDistributedDataParallel: The wrapped model.
    """
    if device == 'cuda':
        gpu_id = torch.cuda.current_device()
        return CompatibleMMDistributedDataParallel(
            model.cuda(gpu_id), device_ids=[gpu_id], **ddp_kwargs)
    if device == 'cpu':
        return CompatibleMMDistributedDataParallel(model, **ddp_kwargs)
    raise NotImplementedError(
        f'distributed runs support the devices cuda and cpu, but got {device!r}')
