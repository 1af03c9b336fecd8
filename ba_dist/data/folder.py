"""Image folders: ``data_dir/<split>/<class_name>/*.{jpg,jpeg,png}`` (``get_source("folder", ...)``).

    get_source("folder", split="train", data_dir="/data/imagenet")

``read`` returns the file's bytes and ``decode`` its pixels, so a group's
reader can broadcast either.
"""
from __future__ import annotations

import os
import stat
from typing import Optional, Sequence

import numpy as np

from ba_dist.data.images import (IMAGE_EXTENSIONS, SPLIT_ALIASES, check_dir, decode_image_bytes,
                                 split_names)
from ba_dist.data.sources import CorruptSampleError, DataSourceError, Source

__all__ = ["ImageFolderSource"]


class ImageFolderSource(Source):
    """``data_dir/<split>/<class_name>/*.{jpg,jpeg,png}``; labels are sorted class names.

    With ``split="train"`` and no split folders at all (no train/val/validation/test
    sub-folder), ``data_dir/<class_name>/...`` is accepted; ``split=None`` always
    reads ``data_dir`` as the class root. Files are indexed once (names only,
    not recursive, hidden files skipped); the format is detected from the bytes.
    Two splits get the same label ids only if they have the same class folders.

    Args:
      empty_class: "error" (default) or "ignore": keep a class folder with no
        images in ``class_names`` (so label ids stay stable) but with no samples.
    """

    def __init__(self, data_dir: str, split: Optional[str] = "train", empty_class: str = "error",
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, default_augment: str = "imagenet",
                 default_eval: str = "imagenet_eval"):
        if empty_class not in ("error", "ignore"):
            raise ValueError(f"empty_class must be 'error' or 'ignore', got {empty_class!r}")
        self.root = self._split_root(check_dir(data_dir, "image folder"), split)
        self.name = "folder"
        self.default_augment, self.default_eval = default_augment, default_eval
        exts = tuple(e.lower() for e in extensions)
        self.class_names = sorted(e.name for e in os.scandir(self.root)
                                  if e.is_dir() and not e.name.startswith("."))
        if not self.class_names:
            raise DataSourceError(f"{self.root}: no class folders (expected {self.root}/<class_name>/*.jpg)")
        self.num_classes = len(self.class_names)
        self._class_dirs = [os.path.join(self.root, c) for c in self.class_names]
        names, labels, empty = [], [], []
        for label, class_dir in enumerate(self._class_dirs):
            files = sorted(e.name for e in os.scandir(class_dir) if not e.name.startswith(".")
                           and e.name.lower().endswith(exts) and not e.is_dir())
            if not files:
                empty.append(class_dir)
            names += files
            labels += [label] * len(files)
        if len(empty) == self.num_classes:
            raise DataSourceError(f"{self.root}: no {'/'.join(exts)} images in any of its "
                                  f"{self.num_classes} class folders")
        if empty and empty_class == "error":
            more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
            raise DataSourceError(f"{empty[0]}: class folder has no {'/'.join(exts)} images{more}; "
                                  "remove it or pass empty_class='ignore'")
        # Fixed-width bytes: ~25 B per ImageNet file name instead of ~130 B per str path.
        self._names = np.array([os.fsencode(n) for n in names], dtype=np.bytes_)
        self._labels = np.asarray(labels, np.int64)

    @staticmethod
    def _split_root(data_dir: str, split: Optional[str]) -> str:
        if split is None:
            return data_dir
        for name in split_names(split):
            if os.path.isdir(os.path.join(data_dir, name)):
                return os.path.join(data_dir, name)
        present = sorted({n for ns in SPLIT_ALIASES.values() for n in ns
                          if os.path.isdir(os.path.join(data_dir, n))})
        if split == "train" and not present:
            return data_dir
        raise DataSourceError(f"{data_dir}: no folder for split {split!r} (looked for "
                              f"{', '.join(split_names(split))}; found {', '.join(present) or 'none'})")

    def __len__(self) -> int:
        return len(self._names)

    def path(self, index: int) -> str:
        return os.path.join(self._class_dirs[self._labels[index]], os.fsdecode(self._names[index]))

    def describe(self, index: int) -> str:
        return self.path(index)

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def read(self, index: int) -> bytes:
        path = self.path(index)
        try:
            # O_NONBLOCK: a FIFO named *.jpg would otherwise block the reader (and its group) forever
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise CorruptSampleError(path, "not a regular file (a FIFO, socket or device)")
                return f.read()
        except OSError as e:
            raise CorruptSampleError(path, f"cannot read: {e.strerror or e}") from None

    def decode(self, payload: bytes, index: int) -> np.ndarray:
        return decode_image_bytes(payload, self.describe(index))
