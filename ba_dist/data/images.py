"""Decoding encoded images and naming split folders: shared by the file-backed sources.

Images are decoded with ``tf.io.decode_image`` (eager): it is ~20% faster than
PIL on 500x375 JPEGs here (1.0 vs 1.26 ms), gives the same pixels as the
in-graph ``tf.image.decode_and_crop_jpeg`` path, handles CMYK JPEGs and 16-bit
PNGs, and fails on truncated JPEGs instead of padding them with grey.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import numpy as np
import tensorflow as tf

from ba_dist.data.sources import CorruptSampleError, DataSourceError

__all__ = ["IMAGE_EXTENSIONS", "SPLIT_ALIASES", "decode_image_bytes", "sniff_format", "check_dir", "split_names"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # matched case-insensitively (ImageNet uses .JPEG)

# Folder names tried for a split, in order; "val" and "validation" both occur in the wild.
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "val"),
                 "val": ("val", "validation"), "test": ("test",)}

_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"),
          (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"))


def sniff_format(payload: bytes) -> Optional[str]:
    """Image format from the leading bytes ("JPEG", "PNG", "GIF", "BMP"), else None."""
    for magic, fmt in _MAGIC:
        if payload[:len(magic)] == magic:
            return fmt
    return None


def _tf_message(error: tf.errors.OpError) -> str:
    # Drop TF's "{{function_node ...}}" prefix and " [Op:DecodeImage]" suffix.
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message)
    return re.sub(r"\s*\[Op:\w+\]\s*$", "", text).strip()


def decode_image_bytes(payload: bytes, where: str) -> np.ndarray:
    """Decodes JPEG/PNG/GIF/BMP bytes (format taken from the bytes, not the file name).

    Returns:
      uint8 ``HxWx3``; grayscale is replicated, alpha dropped.
    Raises:
      CorruptSampleError(where, reason): empty, not an image, or undecodable
        (including truncated JPEGs).
    """
    if not payload:
        raise CorruptSampleError(where, "empty (0 bytes)")
    fmt = sniff_format(payload)
    if fmt is None:
        raise CorruptSampleError(where, f"not a JPEG/PNG/GIF/BMP image (starts with {bytes(payload[:8])!r})")
    try:
        image = tf.io.decode_image(payload, channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        raise CorruptSampleError(where, f"cannot decode {fmt}: {_tf_message(e)}") from None
    return image.numpy()


def check_dir(data_dir: str, what: str) -> str:
    if data_dir is None or not os.path.isdir(data_dir):
        raise DataSourceError(f"{what} data_dir {data_dir!r} does not exist or is not a directory")
    return os.fspath(data_dir)


def split_names(split: str) -> tuple[str, ...]:
    return SPLIT_ALIASES.get(split, (split,))
