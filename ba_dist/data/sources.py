"""Dataset sources behind one interface, chosen by name from config.

A :class:`Source` is random access by sample id: the BA sampler decides which
ids a group trains on, and only the group's reader rank calls :meth:`Source.read`
(file bytes) and :meth:`Source.decode` (pixels) for them. Keeping "read" and
"decode" apart is what lets the pipeline broadcast either the encoded bytes or
the decoded pixels inside a group.

One module per kind of source (``arrays``: in-memory, digits, synthetic;
``folder``; ``tfrecord``; ``tfds_source``) implements the interface; this
module holds the interface and the registry. A built-in source's module is
imported the first time its name is asked for, so the digits path does not pay
for tensorflow_datasets and no source module imports another through here.
"""
from __future__ import annotations

import abc
import importlib
from typing import Callable, Optional

import numpy as np

__all__ = [
    "CorruptSampleError",
    "DataSourceError",
    "Source",
    "register_source",
    "get_source",
    "SOURCES",
    "source_names",
]


class DataSourceError(ValueError):
    """A dataset location or configuration that cannot be used (missing, empty, wrong split)."""


class CorruptSampleError(Exception):
    """One sample could not be read or decoded. ``where`` names the file or record."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class Source(abc.ABC):
    """Random-access labelled image dataset.

    Attributes:
      name: short name used in logs.
      num_classes: labels are ints in ``[0, num_classes)``.
      image_shape: ``(H, W, C)`` when every decoded image has it, else ``None``
        (e.g. ImageNet JPEGs of varying sizes).
      default_augment: name of the training augmentation that preserves this
        source's labels (e.g. no flips for digits).
      default_eval: name of the evaluation transform.
    """

    name: str = "source"
    num_classes: int = 0
    image_shape: Optional[tuple[int, int, int]] = None
    default_augment: str = "none"
    default_eval: str = "none"

    @abc.abstractmethod
    def __len__(self) -> int:
        ...

    @abc.abstractmethod
    def label(self, index: int) -> int:
        """Label of sample ``index`` without reading the image (cheap)."""

    @abc.abstractmethod
    def read(self, index: int) -> bytes:
        """Encoded payload of sample ``index``. Raises CorruptSampleError on I/O failure."""

    @abc.abstractmethod
    def decode(self, payload: bytes, index: int) -> np.ndarray:
        """Decode a payload to a uint8 ``HxWxC`` array. Raises CorruptSampleError."""

    def describe(self, index: int) -> str:
        """Human-readable location of sample ``index`` for error messages."""
        return f"{self.name}[{index}]"

    def load(self, index: int) -> np.ndarray:
        return self.decode(self.read(index), index)


SOURCES: dict[str, Callable[..., Source]] = {}

# name -> "module:factory" of the built-in sources, imported on first use
_BUILTIN = {
    "digits": "ba_dist.data.arrays:DigitsSource",
    "synthetic": "ba_dist.data.arrays:SyntheticSource",
    "folder": "ba_dist.data.folder:ImageFolderSource",
    "tfrecord": "ba_dist.data.tfrecord:TFRecordSource",
    "tfds": "ba_dist.data.tfds_source:tfds_factory",
}


def register_source(name: str, factory: Callable[..., Source]) -> None:
    """Make ``factory(split=..., **kwargs)`` available as ``get_source(name, ...)``."""
    SOURCES[name] = factory


def source_names() -> list[str]:
    """Every name :func:`get_source` accepts (built-in and registered), sorted."""
    return sorted(set(SOURCES) | set(_BUILTIN))


def get_source(name: str, /, split: str = "train", **kwargs) -> Source:
    """Build a registered source by name.

    Raises:
      DataSourceError: unknown name, or a location that is missing or empty.
    """
    if name not in SOURCES and name in _BUILTIN:
        module, factory = _BUILTIN[name].split(":")
        register_source(name, getattr(importlib.import_module(module), factory))
    if name not in SOURCES:
        raise DataSourceError(f"unknown dataset source {name!r}; known: {', '.join(source_names())}")
    return SOURCES[name](split=split, **kwargs)
