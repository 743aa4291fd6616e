"""LSKNet and knowledge distillation for oriented object detection on mmrotate 0.3.4.

Importing this package registers its modules (``LSKNet``, ``KDOrientedRCNN``,
``KnowledgeDistillationKLDivLoss``, the KD-capable ``RotatedShared2FCBBoxHead``) into
mmrotate's registries; configs load it with
``custom_imports = dict(imports=['lsknet'], allow_failed_imports=False)``.
It also makes mmcv read local checkpoints without running code from them
(``lsknet.utils.checkpoint``).
"""
from . import core, models  # noqa: F401 (registers the modules)
from . import datasets  # noqa: F401
from .utils.checkpoint import install_safe_local_loader
from .version import __version__

install_safe_local_loader()

__all__ = ['__version__']
