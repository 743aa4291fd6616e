"""LSKNet and knowledge distillation for oriented object detection on mmrotate 0.3.4.

Importing this package registers its modules (``LSKNet``, ``KDOrientedRCNN``,
``KnowledgeDistillationKLDivLoss``, the KD-capable ``RotatedShared2FCBBoxHead``) into
mmrotate's registries; configs load it with
``custom_imports = dict(imports=['lsknet'], allow_failed_imports=False)``.
"""
from . import models  # noqa: F401 (registers the modules)
from .version import __version__

__all__ = ['__version__']
