"""ba_dist: Batch Augmentation for distributed TensorFlow/Keras training with Horovod.

Install through ``scripts/bootstrap.sh`` (it also compiles Horovod against
TensorFlow + MPI); a plain ``pip install -e .[cpu]`` works only where Horovod
is already built for the same TensorFlow.
"""
import sys

from setuptools import find_packages, setup

if sys.version_info[:2] != (3, 11):
    sys.exit("ba_dist supports Python 3.11 only (tensorflow 2.15.1 + horovod 0.28.1); "
             "this is Python %d.%d" % sys.version_info[:2])

setup(
    name="ba_dist",
    version="0.1.0",
    description="Batch Augmentation (multiple augmented copies per sample) on Horovod/TensorFlow",
    packages=find_packages(include=["ba_dist", "ba_dist.*"]),
    python_requires="==3.11.*",
    install_requires=[
        "numpy<2",
        "absl-py",
        "ml-collections",
        "mpi4py",
        "tensorflow-datasets",
        "scikit-learn",  # ships the embedded UCI digits (no download)
        "pillow",
        "opencv-python-headless",  # the host kernel of the Inception crop's resize (augment.py)
        "google-crc32c",  # TFRecord record checks (C implementation)
        "matplotlib",
        "sacrebleu",  # BLEU for the Transformer (ba-eval-seq)
        # Horovod itself is compiled by scripts/bootstrap.sh (needs TF first).
        "cloudpickle", "psutil", "pyyaml", "packaging", "cffi",
    ],
    extras_require={
        "cpu": ["tensorflow-cpu==2.15.1"],
        "gpu": ["tensorflow[and-cuda]==2.15.1"],
        "test": ["pytest", "pytest-timeout"],
    },
    entry_points={
        "console_scripts": [
            "ba-train=ba_dist.train:run",
            "ba-make-tfrecords=ba_dist.data.make_tfrecords:main",
            "ba-tfrecord-index=ba_dist.data.tfrecord_index:main",
            "ba-analyze=ba_dist.analysis.cli:run",
            "ba-bench=ba_dist.analysis.cli:bench",
            "ba-plot=ba_dist.plot:run",
            "ba-eval=ba_dist.evaluate:run",
            "ba-experiment=ba_dist.reproduce:run",
            "ba-train-seq=ba_dist.seq.train:run",
            "ba-eval-seq=ba_dist.seq.evaluate:run",
        ],
    },
)
