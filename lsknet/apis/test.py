"""Inference over a CPU (gloo) process group.

mmdet 2.28's ``multi_gpu_test`` and ``DistEvalHook`` gather results through CUDA
tensors, so CPU process groups use the functions here instead.
"""
import mmcv
import torch
import torch.distributed as dist
from mmcv.runner import get_dist_info
from mmdet.core import DistEvalHook
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader


def multi_process_cpu_test(model: nn.Module, data_loader: DataLoader) -> list:
    """Run inference in every process of the group and gather all results.

    Each rank must read its share through mmdet's ``DistributedSampler`` without
    shuffling, so rank ``r`` receives samples ``r, r + world_size, ...``.

    Args:
        model (nn.Module): The detector, wrapped so that it accepts a batch from
            ``data_loader`` (``MMDataParallel`` or ``build_distributed_model``).
        data_loader (DataLoader): This rank's test loader.

    Returns:
        list: One result per sample of the whole dataset, in dataset order, on
        every rank.
    """
    model.eval()
    rank, world_size = get_dist_info()
    dataset = data_loader.dataset
    progress_bar = mmcv.ProgressBar(len(dataset)) if rank == 0 else None

    rank_results = []
    for data in data_loader:
        with torch.no_grad():
            batch_results = model(return_loss=False, rescale=True, **data)
        rank_results.extend(batch_results)
        if progress_bar is not None:
            for _ in range(len(batch_results) * world_size):
                progress_bar.update()

    results_per_rank = [None] * world_size
    dist.all_gather_object(results_per_rank, rank_results)
    # Interleave to undo the sampler's striding, then drop the samples the
    # sampler repeated to give every rank the same count.
    ordered_results = [
        result for same_step in zip(*results_per_rank) for result in same_step
    ]
    return ordered_results[:len(dataset)]


class CPUDistEvalHook(DistEvalHook):
    """DistEvalHook for CPU process groups, using ``multi_process_cpu_test``."""

    def _do_evaluate(self, runner):
        # DDP does not synchronise BatchNorm buffers, so every rank takes rank 0's.
        if self.broadcast_bn_buffer:
            for module in runner.model.modules():
                if isinstance(module, _BatchNorm) and module.track_running_stats:
                    dist.broadcast(module.running_var, 0)
                    dist.broadcast(module.running_mean, 0)

        if not self._should_evaluate(runner):
            return

        results = multi_process_cpu_test(runner.model, self.dataloader)
        self.latest_results = results
        if runner.rank == 0:
            runner.log_buffer.output['eval_iter_num'] = len(self.dataloader)
            key_score = self.evaluate(runner, results)
            if self.save_best and key_score:
                self._save_ckpt(runner, key_score)
