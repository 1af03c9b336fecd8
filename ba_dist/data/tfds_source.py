"""``tensorflow_datasets`` datasets by name (``get_source("tfds", name="cifar10")``).

Small fixed-shape datasets are held in memory (:class:`ArraySource`); large
ones are read record by record (ArrayRecord, or tfds' own TFRecord shards).
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from ba_dist.data.arrays import ArraySource
from ba_dist.data.images import decode_image_bytes
from ba_dist.data.sources import CorruptSampleError, DataSourceError, Source
from ba_dist.data.tfrecord import TFRecordSource

__all__ = ["TFDSSource", "MAX_IN_MEMORY_BYTES"]

_TFDS_DEFAULTS = {"cifar10": ("cifar", "none"), "cifar100": ("cifar", "none"),
                  "imagenet2012": ("imagenet", "imagenet_eval")}
MAX_IN_MEMORY_BYTES = 4 << 30
# Keys that the TFRecord configs set (e.g. the ImageNet configs) and that mean
# nothing to tfds: its labels are 0-based ClassLabels and its shards are its own.
_TFRECORD_ONLY = ("label_offset", "on_truncated", "verify_crc", "pattern", "image_key", "label_key",
                  "max_open_files")

log = logging.getLogger(__name__)


class _TFDSRecords(Source):
    """Random access to encoded images through ``builder.as_data_source`` (ArrayRecord)."""

    def __init__(self, records, where: str, image_key: str, label_key: str):
        self._records, self._where = records, where
        self._image_key, self._label_key = image_key, label_key
        self._labels = np.full(len(records), -1, np.int64)

    def __len__(self) -> int:
        return len(self._records)

    def describe(self, index: int) -> str:
        return f"{self._where}[{index}]"

    def _get(self, index: int) -> dict:
        try:
            example = self._records[index]
        except Exception as e:  # array_record raises plain RuntimeErrors on bad files
            raise CorruptSampleError(self.describe(index), f"cannot read: {e}") from None
        self._labels[index] = int(example[self._label_key])
        return example

    def label(self, index: int) -> int:
        if self._labels[index] < 0:
            self._get(index)
        return int(self._labels[index])

    def read(self, index: int) -> bytes:
        return bytes(self._get(index)[self._image_key])

    def decode(self, payload: bytes, index: int) -> np.ndarray:
        return decode_image_bytes(payload, self.describe(index))


class TFDSSource(Source):
    """A ``tensorflow_datasets`` dataset by name (cifar10, cifar100, imagenet2012, ...).

    Small fixed-shape datasets (``in_memory=None`` and under ~4 GB) are loaded
    into an :class:`ArraySource`; the others keep their encoded JPEG bytes and
    are read with ``builder.as_data_source`` (needs ``file_format=array_record``),
    or, when the dataset was prepared as TFRecord, by framing tfds' own shards
    with :class:`TFRecordSource`. The wrapped source is ``self.source``.

    On the random-access paths ``label(i)`` reads record ``i`` once (then cached).

    ``download=True`` runs ``builder.download_and_prepare`` (ImageNet needs the
    ILSVRC2012 train/val tars in ``manual_dir``). Without it, an unprepared
    dataset raises DataSourceError with the ``tfds build`` command to run.
    """

    def __init__(self, name: str, split: str = "train", data_dir: Optional[str] = None,
                 manual_dir: Optional[str] = None, download: bool = False, in_memory: Optional[bool] = None):
        import tensorflow_datasets as tfds
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.DatasetNotFoundError as e:
            raise DataSourceError(f"tfds has no dataset {name!r}: {str(e).splitlines()[0]}") from None
        info = builder.info
        image_key, label_key = info.supervised_keys or ("image", "label")
        shape = info.features[image_key].shape
        fixed_shape = all(d is not None for d in shape)
        if download:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
                # Random access needs ArrayRecord; small datasets are read once with tf.data.
                file_format=None if (fixed_shape and in_memory is not False) else "array_record")
        if in_memory and not fixed_shape:
            raise DataSourceError(f"tfds {name!r} images have shape {shape}; in_memory=True needs a fixed shape")
        if in_memory is None:
            in_memory = fixed_shape and self._num_examples(info, split) * int(np.prod(shape)) <= MAX_IN_MEMORY_BYTES
        if builder.is_prepared() and info.splits and split not in info.splits and not set("[+") & set(split):
            raise DataSourceError(f"tfds {name!r} has splits {sorted(info.splits)}, not {split!r}")
        self.name = f"tfds:{name}"
        self.num_classes = info.features[label_key].num_classes
        self.default_augment, self.default_eval = _TFDS_DEFAULTS.get(name.split("/")[0], ("none", "none"))
        self.in_memory = bool(in_memory)
        try:
            if self.in_memory:
                self.source = self._load_arrays(tfds, builder, split, image_key, label_key)
            else:
                self.source = self._open_records(tfds, builder, split, image_key, label_key)
        except DataSourceError:
            raise
        except Exception as e:
            if builder.is_prepared():
                raise
            command = f"tfds build {name} --data_dir={data_dir or builder.data_dir_root}"
            if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
                command += " --manual_dir=DIR_WITH_THE_MANUAL_DOWNLOADS"
            if not self.in_memory:
                command += " --file_format=array_record"
            raise DataSourceError(f"tfds dataset {name!r} is not prepared in {builder.data_dir}; prepare it "
                                  f"once with `{command}` or pass download=True") from e
        self.image_shape = self.source.image_shape

    @staticmethod
    def _num_examples(info, split: str) -> int:
        try:
            return int(info.splits[split].num_examples)
        except Exception:  # not prepared yet, or mocked: assume small, as the shape is fixed
            return 0

    def _load_arrays(self, tfds, builder, split, image_key, label_key) -> ArraySource:
        # shuffle_files=False: every rank must map the same id to the same image.
        ds = builder.as_dataset(split=split, shuffle_files=False)
        images, labels = [], []
        for batch in tfds.as_numpy(ds.batch(1024)):
            images.append(batch[image_key])
            labels.append(batch[label_key])
        return ArraySource(self.name, np.concatenate(images), np.concatenate(labels), self.num_classes,
                           self.default_augment, self.default_eval)

    def _open_records(self, tfds, builder, split, image_key, label_key) -> Source:
        try:
            records = builder.as_data_source(split, decoders={image_key: tfds.decode.SkipDecoding()})
        except NotImplementedError:
            if not builder.is_prepared():
                raise
            if set("[+") & set(split):  # whole files would ignore the slice
                raise DataSourceError(f"{self.name}: split {split!r} is sliced; that needs the dataset "
                                      "prepared with `tfds build ... --file_format=array_record`") from None
            # Prepared as TFRecord (tfds' default): same framing, keys "image"/"label".
            files = [str(p) for p in builder.info.splits[split].filepaths]
            return TFRecordSource(files=files, num_classes=self.num_classes, image_key=image_key,
                                  label_key=label_key, default_augment=self.default_augment,
                                  default_eval=self.default_eval)
        return _TFDSRecords(records, f"{self.name}/{split}", image_key, label_key)

    def __len__(self) -> int:
        return len(self.source)

    def label(self, index: int) -> int:
        return self.source.label(index)

    def read(self, index: int) -> bytes:
        return self.source.read(index)

    def decode(self, payload: bytes, index: int) -> np.ndarray:
        return self.source.decode(payload, index)

    def load(self, index: int) -> np.ndarray:
        return self.source.load(index)

    def describe(self, index: int) -> str:
        return self.source.describe(index)

    def check(self) -> None:
        self.source.check()


def tfds_factory(split: str = "train", dataset: Optional[str] = None, name: Optional[str] = None,
                  num_classes: Optional[int] = None, **kwargs) -> TFDSSource:
    """``get_source("tfds", ...)``: the same ``source_kwargs`` as a TFRecord config, so one switch moves a config.

    ``--config.input.dataset=tfds --config.input.source_kwargs.name=imagenet2012``
    turns an ImageNet TFRecord config into one reading tfds' ``imagenet2012``:
    ``num_classes`` must then match the tfds dataset's, and the TFRecord-only
    keys (``label_offset`` etc.) are ignored, because tfds labels are 0-based
    ClassLabels whatever the source files held.
    """
    # configs say input.source_kwargs.name=cifar10; dataset= is accepted too
    dataset = dataset or name
    if not dataset:
        raise DataSourceError("source 'tfds' needs the tfds dataset name, e.g. "
                              "--config.input.source_kwargs.name=cifar10 or get_source('tfds', name='cifar10')")
    ignored = {k: kwargs.pop(k) for k in _TFRECORD_ONLY if k in kwargs}
    if ignored.get("label_offset"):
        log.info("tfds %s: labels are 0-based ClassLabels; label_offset=%s applies to TFRecord shards only, "
                 "ignored", dataset, ignored["label_offset"])
    src = TFDSSource(dataset, split=split, **kwargs)
    if num_classes is not None and num_classes != src.num_classes:
        raise DataSourceError(f"tfds {dataset!r} has {src.num_classes} classes, but "
                              f"input.source_kwargs.num_classes={num_classes}; drop it or set {src.num_classes}")
    return src
