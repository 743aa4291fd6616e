"""mmcv runners whose checkpoints are never left half-written.

mmcv writes ``epoch_N.pth`` in place and then points ``latest.pth`` at it, so a
job killed while saving leaves a truncated file that ``--auto-resume`` picks up.
These runners write ``epoch_N.pth.partial``, flush it to disk, rename it into
place and swap ``latest.pth`` with a rename too. On POSIX file systems each rename
is atomic, so ``epoch_N.pth`` and ``latest.pth`` always name a complete file.
They replace mmcv's ``EpochBasedRunner`` and ``IterBasedRunner`` in the registry
when ``lsknet`` is imported, so configs need no change.
"""
import os
import os.path as osp
from typing import Optional

from mmcv.runner import RUNNERS, EpochBasedRunner, IterBasedRunner

PARTIAL_SUFFIX = '.partial'


def _fsync_file(path: str) -> None:
    with open(path, 'rb') as file:
        os.fsync(file.fileno())


def _replace_symlink(target: str, link_path: str) -> None:
    """Point ``link_path`` at ``target`` (a name in the same folder) atomically."""
    partial_link = link_path + PARTIAL_SUFFIX
    if osp.lexists(partial_link):
        os.remove(partial_link)
    os.symlink(target, partial_link)
    os.replace(partial_link, link_path)


class _AtomicCheckpointMixin:
    """Save checkpoints under a temporary name and rename them into place."""

    def _checkpoint_number(self) -> int:
        raise NotImplementedError

    def save_checkpoint(self,
                        out_dir: str,
                        filename_tmpl: Optional[str] = None,
                        save_optimizer: bool = True,
                        meta: Optional[dict] = None,
                        create_symlink: bool = True) -> None:
        if filename_tmpl is None:
            filename_tmpl = self.default_filename_tmpl
        filename = filename_tmpl.format(self._checkpoint_number())
        final_path = osp.join(out_dir, filename)

        super().save_checkpoint(
            out_dir,
            filename_tmpl=filename_tmpl + PARTIAL_SUFFIX,
            save_optimizer=save_optimizer,
            meta=meta,
            create_symlink=False)
        partial_path = final_path + PARTIAL_SUFFIX
        _fsync_file(partial_path)
        os.replace(partial_path, final_path)

        if create_symlink:
            _replace_symlink(filename, osp.join(out_dir, 'latest.pth'))


@RUNNERS.register_module(name='EpochBasedRunner', force=True)
class AtomicEpochBasedRunner(_AtomicCheckpointMixin, EpochBasedRunner):
    """``EpochBasedRunner`` with atomic checkpoint writes."""

    default_filename_tmpl = 'epoch_{}.pth'

    def _checkpoint_number(self) -> int:
        return self.epoch + 1


@RUNNERS.register_module(name='IterBasedRunner', force=True)
class AtomicIterBasedRunner(_AtomicCheckpointMixin, IterBasedRunner):
    """``IterBasedRunner`` with atomic checkpoint writes."""

    default_filename_tmpl = 'iter_{}.pth'

    def _checkpoint_number(self) -> int:
        return self.iter + 1
