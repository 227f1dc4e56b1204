"""Image data: file formats, the dataset registry, the decode-once uint8 cache, augmentation and image tasks."""
from .errors import DataError

__all__ = ["DataError"]
