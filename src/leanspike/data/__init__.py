"""Datasets read from users' files, and the built-in ones that need no download.

Light on import: Pillow is loaded only when an image folder is decoded, and the readers
of each family only when that family is built.
"""

from .factory import DATASET_NAMES, DatasetInfo, build_dataset, to_time_major

__all__ = ["build_dataset", "to_time_major", "DatasetInfo", "DATASET_NAMES"]
