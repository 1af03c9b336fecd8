"""Plain Horovod + Keras data-parallel training on the UCI digits.

Written the way Horovod's examples/tensorflow2/tensorflow2_keras_mnist.py is
(every line that exists only for distribution says "Horovod:"), with the
handwritten digits that scikit-learn ships instead of a download.
horovod_keras_digits_ba.py is this script converted to Batch Augmentation.

    mpirun -np 2 .venv/bin/python examples/horovod_keras_digits.py
"""
import numpy as np
import tensorflow as tf
import horovod.tensorflow.keras as hvd
from sklearn.datasets import load_digits

# Horovod: initialize Horovod.
hvd.init()

# Horovod: pin GPU to be used to process local rank (one GPU per process)
gpus = tf.config.experimental.list_physical_devices("GPU")
for gpu in gpus:
    tf.config.experimental.set_memory_growth(gpu, True)
if gpus:
    tf.config.experimental.set_visible_devices(gpus[hvd.local_rank()], "GPU")

digits = load_digits()
images = (digits.images[..., None] / 16.0).astype(np.float32)  # 8x8x1 floats in [0, 1], like MNIST / 255
dataset = tf.data.Dataset.from_tensor_slices((images, tf.cast(digits.target, tf.int64)))
per_rank_batch = 64

# Horovod: each worker trains on its own shard of the data.
train = dataset.shard(hvd.size(), hvd.rank()).shuffle(2000).repeat().batch(per_rank_batch)
steps_per_epoch = len(images) // (per_rank_batch * hvd.size())

model = tf.keras.Sequential([
    tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu", input_shape=(8, 8, 1)),
    tf.keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
    tf.keras.layers.MaxPooling2D(),
    tf.keras.layers.Flatten(),
    tf.keras.layers.Dense(128, activation="relu"),
    tf.keras.layers.Dense(10),
])

# Horovod: add Horovod DistributedOptimizer (legacy Keras optimizers work with Horovod 0.28).
opt = hvd.DistributedOptimizer(tf.keras.optimizers.legacy.SGD(0.05, momentum=0.9))
model.compile(loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), optimizer=opt,
              metrics=["accuracy"])

callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0), hvd.callbacks.MetricAverageCallback()]

# Horovod: write logs on worker 0 only.
verbose = 2 if hvd.rank() == 0 else 0
history = model.fit(train, steps_per_epoch=steps_per_epoch, epochs=8, callbacks=callbacks, verbose=verbose)
if hvd.rank() == 0:
    print(f"final training accuracy {history.history['accuracy'][-1]:.4f}, steps/epoch {steps_per_epoch}")
