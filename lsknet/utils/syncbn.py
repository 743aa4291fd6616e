"""Replace SyncBN with BN in model configs for runs that cannot synchronise it."""
import logging
from typing import Any, Optional

from mmrotate.utils import get_root_logger


def convert_syncbn_to_bn(cfg: Any) -> int:
    """Replace ``type='SyncBN'`` with ``type='BN'`` in a config, in place.

    Walks dicts (including mmcv ``ConfigDict``), lists and tuples recursively and
    leaves every other norm type (``BN``, ``GN``, ``LN``, ...) unchanged.

    Args:
        cfg: A config dict such as ``cfg.model``, or any value inside one.

    Returns:
        int: The number of entries changed, so a second call returns 0.
    """
    num_converted = 0
    if isinstance(cfg, dict):
        if cfg.get('type') == 'SyncBN':
            cfg['type'] = 'BN'
            num_converted += 1
        for value in cfg.values():
            num_converted += convert_syncbn_to_bn(value)
    elif isinstance(cfg, (list, tuple)):
        for item in cfg:
            num_converted += convert_syncbn_to_bn(item)
    return num_converted


def convert_syncbn_for_run(model_cfg: dict,
                           distributed: bool,
                           device: str,
                           logger: Optional[logging.Logger] = None) -> int:
    """Convert SyncBN to BN in ``model_cfg`` unless this is a distributed CUDA run.

    SyncBN averages batch statistics over a process group, so it needs an
    initialised group (otherwise torch raises "Default process group has not been
    initialized") and CUDA tensors (it has no CPU kernel). Every other run trains
    with plain BN and logs one warning about it.

    Args:
        model_cfg (dict): The model config, changed in place.
        distributed (bool): Whether the run uses a process group (``--launcher``).
        device (str): The device the run uses, e.g. ``'cuda'`` or ``'cpu'``.
        logger (logging.Logger, optional): Where to log the warning. Defaults to
            mmrotate's root logger.

    Returns:
        int: The number of SyncBN entries converted.
    """
    if distributed and device == 'cuda':
        return 0

    num_converted = convert_syncbn_to_bn(model_cfg)
    if num_converted:
        if distributed:
            reason = f'SyncBN has no {device.upper()} kernel'
            run = f'distributed {device.upper()} run'
        else:
            reason = 'SyncBN needs an initialised process group'
            run = 'non-distributed run'
        logger = logger or get_root_logger()
        logger.warning(f'{reason}, so SyncBN was converted to BN in '
                       f'{num_converted} norm config(s) of the model for this '
                       f'{run}')
    return num_converted
