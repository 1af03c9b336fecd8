"""Transformer for translation (Vaswani et al. 2017, "base"), with seeded dropout.

Base model: 6 encoder + 6 decoder layers, d_model 512, 8 heads, feed-forward
2048, dropout 0.1 on every sub-layer output (before the residual add) and on
the embeddings + positions, post-layer-norm, sinusoidal positions, one
embedding matrix shared by source, target and the output softmax (scaled by
sqrt(d_model) on input). Attention and ReLU dropout are 0 as in the paper's
base model (tensor2tensor's transformer_base_v1), configurable.

Batch Augmentation: every dropout is a :class:`ba_dist.seq.dropout.SeededDropout`
with its own key, so the ``copies`` of a pair in a rank's batch see different
masks in every layer. Attention is written out (not
``tf.keras.layers.MultiHeadAttention``) because Keras' attention dropout
draws from the global RNG.

``encode`` / ``decode`` are public for beam search (:mod:`ba_dist.seq.beam`).
"""
from __future__ import annotations

import itertools
import math
from typing import Optional

import tensorflow as tf

from ba_dist.seq.data import PAD
from ba_dist.seq.dropout import SeededDropout

__all__ = ["Transformer", "positional_encoding"]

NEG_INF = -1e9


def positional_encoding(length, depth: int) -> tf.Tensor:
    """``[length, depth]`` sinusoids: sin on the first half of the channels, cos on the second."""
    half = depth // 2
    pos = tf.cast(tf.range(length), tf.float32)[:, None]
    inv = tf.exp(-math.log(10000.0) * tf.range(half, dtype=tf.float32) / max(half - 1, 1))
    ang = pos * inv[None, :]
    enc = tf.concat([tf.sin(ang), tf.cos(ang)], 1)
    return tf.pad(enc, [[0, 0], [0, depth - 2 * half]])


class Attention(tf.keras.layers.Layer):
    """Multi-head scaled dot-product attention with seeded dropout on the weights."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, key: int, **kw):
        super().__init__(**kw)
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.h, self.dk = num_heads, d_model // num_heads
        self.q, self.k, self.v, self.o = (tf.keras.layers.Dense(d_model, name=n) for n in "qkvo")
        self.drop = SeededDropout(dropout, key=key, name="attention_dropout")

    def _split(self, x):
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        return tf.transpose(tf.reshape(x, [b, t, self.h, self.dk]), [0, 2, 1, 3])

    def call(self, query, memory, bias, training=False, seed=None, copies=1):
        q = self._split(self.q(query)) * self.dk ** -0.5
        k, v = self._split(self.k(memory)), self._split(self.v(memory))
        w = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) + bias)
        w = self.drop(w, training=training, seed=seed, copies=copies)
        out = tf.transpose(tf.matmul(w, v), [0, 2, 1, 3])
        b, t = tf.shape(out)[0], tf.shape(out)[1]
        return self.o(tf.reshape(out, [b, t, self.h * self.dk]))


class _Block(tf.keras.layers.Layer):
    """One encoder (no cross-attention) or decoder layer, post-LN."""

    def __init__(self, d_model, num_heads, ffn_dim, dropout, attention_dropout, relu_dropout, keys, cross, **kw):
        super().__init__(**kw)
        self.self_attn = Attention(d_model, num_heads, attention_dropout, next(keys), name="self_attention")
        self.cross_attn = Attention(d_model, num_heads, attention_dropout, next(keys), name="cross_attention") if cross else None
        self.ffn_in = tf.keras.layers.Dense(ffn_dim, activation="relu", name="ffn_in")
        self.ffn_out = tf.keras.layers.Dense(d_model, name="ffn_out")
        self.relu_drop = SeededDropout(relu_dropout, next(keys), name="relu_dropout")
        n = 3 if cross else 2
        self.drops = [SeededDropout(dropout, next(keys), name=f"residual_dropout_{i}") for i in range(n)]
        self.norms = [tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"norm_{i}") for i in range(n)]

    def call(self, x, self_bias, memory=None, memory_bias=None, training=False, seed=None, copies=1):
        kw = dict(training=training, seed=seed, copies=copies)
        subs = [lambda y: self.self_attn(y, y, self_bias, **kw)]
        if self.cross_attn is not None:
            subs.append(lambda y: self.cross_attn(y, memory, memory_bias, **kw))
        subs.append(lambda y: self.ffn_out(self.relu_drop(self.ffn_in(y), **kw)))
        for sub, drop, norm in zip(subs, self.drops, self.norms):
            x = norm(x + drop(sub(x), **kw))
        return x


class Transformer(tf.keras.Model):
    """Encoder-decoder Transformer with shared embeddings; ``call((src, tgt_in)) -> logits``.

    Args:
      vocab_size: shared source/target vocabulary (padding id 0).
      d_model, num_heads, ffn_dim, encoder_layers, decoder_layers: sizes (base:
        512, 8, 2048, 6, 6).
      dropout: residual and embedding dropout (0.1).
      attention_dropout, relu_dropout: (0.0).
    """

    def __init__(self, vocab_size: int, d_model: int = 512, num_heads: int = 8, ffn_dim: int = 2048,
                 encoder_layers: int = 6, decoder_layers: int = 6, dropout: float = 0.1,
                 attention_dropout: float = 0.0, relu_dropout: float = 0.0, name: str = "transformer"):
        super().__init__(name=name)
        self.vocab_size, self.d_model = vocab_size, d_model
        keys = itertools.count()
        self.embeddings = self.add_weight(
            name="shared_embeddings", shape=(vocab_size, d_model),
            initializer=tf.keras.initializers.RandomNormal(stddev=d_model ** -0.5))
        self.src_drop = SeededDropout(dropout, next(keys), name="source_embedding_dropout")
        self.tgt_drop = SeededDropout(dropout, next(keys), name="target_embedding_dropout")
        args = (d_model, num_heads, ffn_dim, dropout, attention_dropout, relu_dropout, keys)
        self.encoder = [_Block(*args, cross=False, name=f"encoder_{i}") for i in range(encoder_layers)]
        self.decoder = [_Block(*args, cross=True, name=f"decoder_{i}") for i in range(decoder_layers)]

    def _embed(self, ids, drop, training, seed, copies):
        x = tf.gather(self.embeddings, ids) * self.d_model ** 0.5
        x += positional_encoding(tf.shape(ids)[1], self.d_model)[None]
        return drop(x, training=training, seed=seed, copies=copies)

    def encode(self, src, training=False, seed=None, copies: int = 1):
        """``src [b, S]`` -> ``(memory [b, S, d], source attention bias [b, 1, 1, S])``."""
        bias = tf.cast(tf.equal(src, PAD), tf.float32)[:, None, None, :] * NEG_INF
        x = self._embed(src, self.src_drop, training, seed, copies)
        for layer in self.encoder:
            x = layer(x, bias, training=training, seed=seed, copies=copies)
        return x, bias

    def decode(self, tgt_in, memory, memory_bias, training=False, seed=None, copies: int = 1):
        """``tgt_in [b, T]`` (BOS first) -> logits ``[b, T, vocab]`` (position t predicts token t+1)."""
        t = tf.shape(tgt_in)[1]
        causal = (1.0 - tf.linalg.band_part(tf.ones([t, t]), -1, 0))[None, None] * NEG_INF
        x = self._embed(tgt_in, self.tgt_drop, training, seed, copies)
        for layer in self.decoder:
            x = layer(x, causal, memory, memory_bias, training=training, seed=seed, copies=copies)
        return tf.einsum("btd,vd->btv", x, self.embeddings)

    def call(self, inputs, training=False, seed: Optional[tf.Tensor] = None, copies: int = 1):
        src, tgt_in = inputs
        memory, bias = self.encode(src, training=training, seed=seed, copies=copies)
        return self.decode(tgt_in, memory, bias, training=training, seed=seed, copies=copies)
