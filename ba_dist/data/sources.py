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
    "RemoteSource",
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

    def check(self) -> None:
        """Cheap start-up checks (a few reads) that catch a misconfigured source before training.

        Run by :func:`ba_dist.data.build.build` on each split; the default checks nothing.

        Raises:
          DataSourceError: naming the setting and its fix (e.g. a label base that
          does not match the records).
        """

    def describe(self, index: int) -> str:
        """Human-readable location of sample ``index`` for error messages."""
        return f"{self.name}[{index}]"

    def load(self, index: int) -> np.ndarray:
        return self.decode(self.read(index), index)


class RemoteSource(Source):
    """A training split seen from a rank that never reads it: a non-reader of a group with broadcast='decoded'.

    The group's reader opens the real source and broadcasts the decoded samples
    with their labels; the other ranks need only what the sampler and the model
    are sized with (length, classes, one sample's shape), which the reader sends
    at start-up. So at 512 ranks with ``m_ranks=4`` only 128 ranks open
    training shards. Reading from it is a bug, not a data error.
    """

    def __init__(self, name: str, length: int, num_classes: int, image_shape, default_augment: str,
                 default_eval: str, reader_rank: int):
        self.name, self._length, self.num_classes, self.image_shape = name, length, num_classes, image_shape
        self.default_augment, self.default_eval, self.reader_rank = default_augment, default_eval, reader_rank

    @classmethod
    def of(cls, source: Source, reader_rank: int) -> "RemoteSource":
        """What a non-reader needs of ``source`` (picklable, no file handles)."""
        return cls(source.name, len(source), source.num_classes, source.image_shape, source.default_augment,
                   source.default_eval, reader_rank)

    def __len__(self) -> int:
        return self._length

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}] (read by rank {self.reader_rank})"

    def _not_here(self, index: int):
        raise RuntimeError(f"{self.describe(index)}: this rank does not read the training split; "
                           "its group's reader broadcasts the samples")

    def label(self, index: int) -> int:
        self._not_here(index)

    def read(self, index: int) -> bytes:
        self._not_here(index)

    def decode(self, payload: bytes, index: int) -> np.ndarray:
        self._not_here(index)


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
