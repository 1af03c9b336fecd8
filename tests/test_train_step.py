"""BATrainModel's loss and update on one real Horovod rank (issue 14).

``grad_norm`` is the loss gradient's (no weight decay), the applied update is
still ``g + wd w``, ``grad_clip_norm`` clips the loss gradient before the decay
is added, and an auxiliary head adds ``weight x CE`` to the loss. Plain SGD
(momentum 0) makes the update readable from the weights: ``w' = w - lr x update``.
"""
import numpy as np
import pytest
import tensorflow as tf

from ba_dist import dist, optim, train_step

LR, WD = 0.1, 0.05


def _net(auxiliary: bool):
    tf.keras.utils.set_random_seed(3)
    x = tf.keras.Input((6,))
    h = tf.keras.layers.Dense(5, activation="tanh", name="hidden")(x)
    logits = tf.keras.layers.Dense(3, name="logits")(h)
    outputs = [logits, tf.keras.layers.Dense(3, name="aux")(h)] if auxiliary else logits
    return tf.keras.Model(x, outputs)


def _batch():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(8, 6)) * 3, tf.float32)
    return x, tf.one_hot(rng.integers(0, 3, 8), 3)


def _step(auxiliary_weight=0.0, grad_clip_norm=0.0):
    """One training step; returns (model, weights before, weights after, loss gradient by hand, loss)."""
    net = _net(auxiliary_weight > 0)
    dist.init()
    model = train_step.BATrainModel(net, weight_decay=WD, decay_biases=False,
                                    auxiliary_weight=auxiliary_weight,
                                    grad_clip_norm=grad_clip_norm)
    model.compile(optimizer=optim.make_optimizer(LR, momentum=0.0))
    x, y = _batch()
    ce = tf.keras.losses.CategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        out = net(x, training=True)
        loss = ce(y, out[0]) + auxiliary_weight * ce(y, out[1]) if auxiliary_weight else ce(y, out)
    grads = [g.numpy() for g in tape.gradient(loss, net.trainable_variables)]
    before = [v.numpy() for v in net.trainable_variables]
    logs = model.fit(tf.data.Dataset.from_tensors((x, y)), steps_per_epoch=1, verbose=0).history
    after = [v.numpy() for v in net.trainable_variables]
    return model, before, after, grads, float(loss), logs


def _decayed(model):
    return [any(v is d for d in model.decayed) for v in model.net.trainable_variables]


def test_grad_norm_is_the_loss_gradient_and_the_update_keeps_weight_decay():
    model, before, after, grads, loss, logs = _step()
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    assert float(model.step_grad_norm.numpy()) == pytest.approx(norm, rel=1e-5)
    assert logs["grad_norm"][0] == pytest.approx(norm, rel=1e-5)
    assert logs["loss"][0] == pytest.approx(loss, rel=1e-5)
    assert any(_decayed(model)) and not all(_decayed(model))   # kernels decay, biases not
    for w0, w1, g, d in zip(before, after, grads, _decayed(model)):
        np.testing.assert_allclose(w1, w0 - LR * (g + (WD * w0 if d else 0)), rtol=1e-5, atol=1e-7)


def test_clipping_scales_the_averaged_loss_gradient_before_weight_decay():
    clip = 0.05
    model, before, after, grads, _, _ = _step(grad_clip_norm=clip)
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
    assert norm > 4 * clip                                       # the clip is active
    assert float(model.step_grad_norm.numpy()) == pytest.approx(norm, rel=1e-5)   # logged unclipped
    for w0, w1, g, d in zip(before, after, grads, _decayed(model)):
        np.testing.assert_allclose(w1, w0 - LR * (g * clip / norm + (WD * w0 if d else 0)), rtol=1e-5, atol=1e-7)


def test_auxiliary_head_adds_its_weighted_cross_entropy():
    model, before, after, grads, loss, logs = _step(auxiliary_weight=0.4)
    assert logs["loss"][0] == pytest.approx(loss, rel=1e-5)
    aux = [g for g, v in zip(grads, model.net.trainable_variables) if v.name.startswith("aux")]
    assert aux and all(np.abs(g).sum() > 0 for g in aux)   # the head trains
    for w0, w1, g, d in zip(before, after, grads, _decayed(model)):
        np.testing.assert_allclose(w1, w0 - LR * (g + (WD * w0 if d else 0)), rtol=1e-5, atol=1e-7)
    # prediction and evaluation use the main logits
    x, _ = _batch()
    np.testing.assert_allclose(model(x).numpy(), model.net(x)[0].numpy(), rtol=1e-6)
