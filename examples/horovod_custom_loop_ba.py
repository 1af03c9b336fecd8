"""A hand-written Horovod training loop (``hvd.DistributedGradientTape``) on BA batches.

The loop follows Horovod's examples/tensorflow2/tensorflow2_mnist.py idiom
(lines that exist only for distribution say "Horovod:", lines for Batch
Augmentation say "BA:") on the UCI digits that scikit-learn ships. Ranks form
groups of 2 (m_ranks=2) sharing 16 unique digits per step, each rank makes 2
copies (m_local=2), so M = 4; on 4 ranks:

    4 ranks x (2 copies x 16 unique) = B 32 unique x M 4 = 128 examples per step

    mpirun -np 4 .venv/bin/python examples/horovod_custom_loop_ba.py [--broadcast] [--no-stop]

``--broadcast``: only each group's reader holds the dataset and sends the
decoded images to its partner. ``--no-stop``: leave out ``data.stop()``; the
loaders are stopped at interpreter exit, so the script still ends.
"""
import sys

import numpy as np
import tensorflow as tf
import horovod.tensorflow as hvd
from sklearn.datasets import load_digits

import ba_dist.keras as ba  # BA: the public Batch Augmentation API

broadcast, call_stop = "--broadcast" in sys.argv, "--no-stop" not in sys.argv

# Horovod: initialize Horovod (BA: with groups of 2 ranks sharing samples, 2 copies per rank).
ba.init(m_ranks=2, m_local=2)

digits = load_digits()
images = (digits.images / 16.0).astype(np.float32)[..., None]  # 8x8x1 floats in [0, 1]
dataset = tf.data.Dataset.from_tensor_slices((images, digits.target))

# BA: group-synchronised sampling, 2 differently translated copies of each of 16 unique digits.
data = ba.ba_dataset(dataset, "digits", per_rank_unique=16, num_classes=10, broadcast=broadcast)

model = tf.keras.Sequential([
    tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu", input_shape=(8, 8, 1)),
    tf.keras.layers.Flatten(),
    tf.keras.layers.Dense(64, activation="relu"),
    tf.keras.layers.Dense(10),
])
loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)  # integer labels stay integer
# Horovod: scale the learning rate by the number of workers.
opt = tf.keras.optimizers.legacy.SGD(0.02 * hvd.size(), momentum=0.9)


@tf.function
def training_step(x, y, first_batch):
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    # Horovod: add Horovod Distributed GradientTape.
    tape = hvd.DistributedGradientTape(tape)
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    # Horovod: broadcast initial variables from rank 0 after the first step,
    # when the model and optimizer variables exist.
    if first_batch:
        hvd.broadcast_variables(model.variables, root_rank=0)
        hvd.broadcast_variables(opt.variables(), root_rank=0)
    return loss


steps = 3 * data.steps_per_epoch  # 3 epochs; the same number of steps on every rank
accuracy = tf.keras.metrics.SparseCategoricalAccuracy()
for step, (x, y) in enumerate(data.dataset.take(steps)):
    loss = training_step(x, y, step == 0)
    if step >= steps - data.steps_per_epoch:
        accuracy.update_state(y, model(x, training=False))
    # Horovod: print logs on worker 0 only.
    if step % data.steps_per_epoch == 0 and hvd.rank() == 0:
        print(f"step {step}: loss {loss.numpy():.4f}", flush=True)

# Horovod: average the last epoch's accuracy over all workers.
acc = hvd.allreduce(accuracy.result(), op=hvd.Average).numpy()
if call_stop:
    data.stop()  # BA: every rank, after the same step: ends the group's background broadcast
if hvd.rank() == 0:
    print(f"final training accuracy {acc:.4f}, steps/epoch {data.steps_per_epoch}", flush=True)
