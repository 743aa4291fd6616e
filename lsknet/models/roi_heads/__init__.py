from .bbox_heads import *  # noqa: F401,F403
from .kd_oriented_standard_roi_head import KDOrientedStandardRoIHead

__all__ = ['KDOrientedStandardRoIHead']
