"""A hook that records what the runner holds, for the multi-process tests.

Training subprocesses import it through ``custom_imports`` (the tests put this
folder on PYTHONPATH) and save what they see under ``out_dir``.
"""
import json
import os.path as osp

import torch
from mmcv.runner import HOOKS, Hook, get_dist_info


@HOOKS.register_module()
class StateProbeHook(Hook):
    """Save the student, optimizer and wrapper facts at start and end of a run."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.saved_start = False

    def before_train_epoch(self, runner) -> None:
        if self.saved_start:
            return
        self.saved_start = True
        rank, _ = get_dist_info()
        wrapper = runner.model
        detector = wrapper.module
        teacher_ids = {id(p) for p in detector.teacher.parameters()} if hasattr(
            detector, 'teacher') else set()
        facts = dict(
            wrapper=type(wrapper).__name__,
            find_unused_parameters=getattr(wrapper, 'find_unused_parameters',
                                           None),
            teacher_parameters=len(teacher_ids),
            teacher_parameters_in_wrapper=len(
                teacher_ids & {id(p) for p in wrapper.parameters()}))
        with open(osp.join(self.out_dir, f'facts_rank{rank}.json'), 'w') as file:
            json.dump(facts, file)
        torch.save(
            dict(
                epoch=runner.epoch,
                iter=runner.iter,
                state_dict=detector.state_dict(),
                optimizer=runner.optimizer.state_dict()),
            osp.join(self.out_dir, f'start_rank{rank}.pth'))

    def after_run(self, runner) -> None:
        rank, _ = get_dist_info()
        torch.save(
            dict(
                state_dict=runner.model.module.state_dict(),
                wrote_checkpoint='last_ckpt' in runner.meta.get('hook_msgs', {})),
            osp.join(self.out_dir, f'end_rank{rank}.pth'))
