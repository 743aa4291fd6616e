"""Training hooks that protect long runs."""
import math

import torch
from mmcv.runner import HOOKS, Hook


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training at the first iteration whose loss is NaN or infinite.

    Register it with priority ``'VERY_HIGH'`` (``tools/train.py`` does) so it runs
    after the forward pass and before ``OptimizerHook``; then a non-finite loss never reaches ``backward()`` or the
    optimizer: the weights stay those of the last good iteration, and no
    checkpoint with NaN weights is written. The error names the iteration, every
    loss term that was not finite and the last checkpoint saved.
    """

    def after_train_iter(self, runner) -> None:
        outputs = runner.outputs or {}
        log_vars = outputs.get('log_vars', {})
        bad_terms = {
            name: value
            for name, value in log_vars.items()
            if name.startswith('loss') and not math.isfinite(float(value))
        }
        total = outputs.get('loss')
        if isinstance(total, torch.Tensor) and not torch.isfinite(total).all():
            bad_terms.setdefault('loss', float(total.detach().float().sum()))
        if not bad_terms:
            return

        terms = ', '.join(f'{name}={value}' for name, value in bad_terms.items())
        last_checkpoint = runner.meta.get('hook_msgs', {}).get(
            'last_ckpt') if runner.meta else None
        raise FloatingPointError(
            f'non-finite loss at epoch {runner.epoch + 1}, iteration '
            f'{runner.inner_iter + 1} (global iteration {runner.iter + 1}): '
            f'{terms}. Training stopped before the optimizer step, so no NaN '
            f'weights were saved; the last checkpoint is '
            f'{last_checkpoint or "none yet"}. Lower the learning rate or the '
            'distillation loss_weight, check the labels of this batch, or keep '
            'optimizer_config.grad_clip, then resume with --resume-from')
