from .distributed import (CompatibleMMDistributedDataParallel,
                          build_distributed_model, init_distributed)
from .test import CPUDistEvalHook, multi_process_cpu_test
from .train import train_detector

__all__ = [
    'CompatibleMMDistributedDataParallel', 'CPUDistEvalHook',
    'build_distributed_model', 'init_distributed', 'multi_process_cpu_test',
    'train_detector'
]
