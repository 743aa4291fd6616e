from .rotated_convfc_bbox_head import RotatedShared2FCBBoxHead

__all__ = ['RotatedShared2FCBBoxHead']
