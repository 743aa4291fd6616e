from .hooks import NonFiniteLossHook
from .runners import AtomicEpochBasedRunner, AtomicIterBasedRunner

__all__ = ['NonFiniteLossHook', 'AtomicEpochBasedRunner', 'AtomicIterBasedRunner']
