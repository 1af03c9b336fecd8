"""horovod_keras_digits.py converted to Batch Augmentation: 5 changed lines, marked "# BA:".

Both ranks form one BA group (m_ranks=2) that trains on the same 32 unique digits
per step; each rank makes 2 augmented copies (m_local=2), so M = 4 and
    2 ranks x (2 copies x 32 unique) = 32 unique x 4 = 128 examples per step.
An epoch is a pass over the unique samples, so it has 4x the steps of the plain
script's (whose 2 ranks each take a different 64).

    mpirun -np 2 .venv/bin/python examples/horovod_keras_digits_ba.py
"""
import numpy as np
import tensorflow as tf
import horovod.tensorflow.keras as hvd
from sklearn.datasets import load_digits
import ba_dist.keras as ba  # BA: the public Batch Augmentation API

# Horovod: initialize Horovod.
ctx = ba.init(m_ranks=2, m_local=2)  # BA: starts Horovod with groups of 2 ranks sharing samples, 2 copies per rank

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
data = ba.ba_dataset(dataset, "digits", per_rank_unique=per_rank_batch // 2)  # BA: group-synchronised ids, 2 differently translated copies each
train, steps_per_epoch = data.dataset, data.steps_per_epoch  # BA: 64 examples per rank = 2 copies x 32 unique

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

callbacks = ba.ba_callbacks(data=data)  # BA: Horovod broadcast + metric averaging + BA bookkeeping

# Horovod: write logs on worker 0 only.
verbose = 2 if hvd.rank() == 0 else 0
history = model.fit(train, steps_per_epoch=steps_per_epoch, epochs=8, callbacks=callbacks, verbose=verbose)
if hvd.rank() == 0:
    print(f"final training accuracy {history.history['accuracy'][-1]:.4f}, steps/epoch {steps_per_epoch}")
