"""Environment report for logs and bug reports."""
from mmrotate.utils import collect_env as collect_mmrotate_env

from ..version import __version__


def collect_env() -> dict:
    """Collect mmrotate's environment report plus the lsknet version."""
    env_info = collect_mmrotate_env()
    env_info['LSKNet'] = __version__
    return env_info
