"""Datasets and pipeline steps that check their input.

Importing this module registers them in mmdet's ``DATASETS`` and ``PIPELINES``,
which mmrotate also uses, in place of the classes of the same name.
"""
from .dota import DOTADataset
from .pipelines import LoadImageFromFile

__all__ = ['DOTADataset', 'LoadImageFromFile']
