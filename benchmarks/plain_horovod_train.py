"""The obvious alternative to ba-train at M = 1: a plain Horovod Keras script.

Written as Horovod's tensorflow2_keras examples are, training the same model
on the same synthetic data with the same augmentation, batch and optimizer as
``bench_train_overhead.py`` gives ba-train. Prints augmented images/s over
the epochs after the first (rank 0).
"""
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402
import horovod.tensorflow.keras as hvd  # noqa: E402

from ba_dist.data import augment as aug  # noqa: E402
from ba_dist.data.arrays import SyntheticSource  # noqa: E402
from ba_dist.models import build_model  # noqa: E402

model_name, n, per_rank, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hvd.init()
src = SyntheticSource(num_examples=n, image_shape=(32, 32, 3), num_classes=10)
cifar = aug.get_augment("cifar")


def prep(x, y, i):
    seed = tf.stack([tf.cast(i, tf.int64), tf.cast(hvd.rank(), tf.int64)])
    return cifar(x, seed) / 255.0, tf.one_hot(y, 10)


ds = (tf.data.Dataset.from_tensor_slices((src.images, src.labels, tf.range(n, dtype=tf.int64)))
      .shard(hvd.size(), hvd.rank()).shuffle(n).repeat()
      .map(prep, num_parallel_calls=tf.data.AUTOTUNE).batch(per_rank, drop_remainder=True)
      .prefetch(tf.data.AUTOTUNE))
steps = n // (per_rank * hvd.size())
model = build_model(model_name, 10, (32, 32, 3))
opt = hvd.DistributedOptimizer(tf.keras.optimizers.legacy.SGD(0.1, momentum=0.9))
model.compile(optimizer=opt, loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


class Timer(tf.keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if epoch > 0 and hvd.rank() == 0:
            print(f"IMAGES_PER_SEC {steps * per_rank * hvd.size() / (time.perf_counter() - self.t0):.1f}", flush=True)


model.fit(ds, steps_per_epoch=steps, epochs=epochs, verbose=0,
          callbacks=[hvd.callbacks.BroadcastGlobalVariablesCallback(0), hvd.callbacks.MetricAverageCallback(), Timer()])
