from mmrotate.utils import get_root_logger

from .collect_env import collect_env
from .syncbn import convert_syncbn_for_run, convert_syncbn_to_bn

__all__ = [
    'collect_env', 'convert_syncbn_for_run', 'convert_syncbn_to_bn',
    'get_root_logger'
]
