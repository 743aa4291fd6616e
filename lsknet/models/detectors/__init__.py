from .kd_oriented_rcnn import KDOrientedRCNN

__all__ = ['KDOrientedRCNN']
