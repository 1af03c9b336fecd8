"""Word-level LSTM language model (Merity et al. 2017, as in the paper's PTB row).

Paper section 4.3: "a 3-layered LSTM of width 1,150 and embedding size of 400,
with Dropout regularization on both input (p = 0.4) and hidden state
(p = 0.25), with no fine-tuning". These are AWD-LSTM's ``dropouti=0.4`` (on
the embeddings fed to the first layer) and ``dropouth=0.25`` (on the outputs
between layers); its ``dropout=0.4`` on the last layer's output is kept too.
As in AWD-LSTM the last layer has the embedding width so the output layer
shares the embedding matrix, and every dropout is *locked* (variational):
one mask per sequence, shared over the time steps of a BPTT chunk. AWD-LSTM's
weight drop, embedding dropout, AR/TAR and NT-ASGD are not implemented.

Batch Augmentation: the ``copies`` of a stream in a rank's batch get
different masks through :class:`ba_dist.seq.dropout.SeededDropout`.

The recurrent state is explicit: ``call(tokens, states) -> (logits, states)``,
so the trainer carries it across BPTT steps and evaluation keeps its own.
Without recurrent dropout Keras' LSTM runs on cuDNN on a GPU.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from ba_dist.seq.dropout import SeededDropout

__all__ = ["LSTMLanguageModel"]


class LSTMLanguageModel(tf.keras.Model):
    """Embedding -> locked dropout -> L x LSTM (locked dropout between) -> tied softmax.

    Args:
      vocab_size: words incl. padding/``<eos>``/``<unk>``.
      embed_dim: embedding width (400); also the last LSTM's width if tied.
      hidden: width of the other LSTM layers (1150).
      num_layers: LSTM layers (3).
      input_dropout: on the embeddings (0.4).
      hidden_dropout: on the outputs between LSTM layers (0.25).
      output_dropout: on the last LSTM's output (0.4).
      tie_weights: share the embedding matrix with the output layer.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 400, hidden: int = 1150, num_layers: int = 3,
                 input_dropout: float = 0.4, hidden_dropout: float = 0.25, output_dropout: float = 0.4,
                 tie_weights: bool = True, name: str = "lstm_lm"):
        super().__init__(name=name)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.vocab_size, self.tie_weights = vocab_size, tie_weights
        init = tf.keras.initializers.RandomUniform(-0.1, 0.1)  # AWD-LSTM's embedding init
        self.embedding = tf.keras.layers.Embedding(vocab_size, embed_dim, embeddings_initializer=init,
                                                   name="embedding")
        last = embed_dim if tie_weights else hidden
        self.units = [hidden] * (num_layers - 1) + [last]
        self.lstms = [tf.keras.layers.LSTM(u, return_sequences=True, return_state=True, name=f"lstm_{i}")
                      for i, u in enumerate(self.units)]
        # one key per dropout site: masks of different sites are independent
        self.drop_in = SeededDropout(input_dropout, key=0, shared_axes=(1,), name="input_dropout")
        self.drop_hidden = [SeededDropout(hidden_dropout, key=1 + i, shared_axes=(1,), name=f"hidden_dropout_{i}")
                            for i in range(num_layers - 1)]
        self.drop_out = SeededDropout(output_dropout, key=num_layers, shared_axes=(1,), name="output_dropout")
        if tie_weights:
            self.out_bias = self.add_weight(name="output_bias", shape=(vocab_size,), initializer="zeros")
        else:
            self.proj = tf.keras.layers.Dense(vocab_size, name="output")

    def initial_state(self, rows: int) -> list[tf.Tensor]:
        """Zero ``[h, c]`` of every layer for a batch of ``rows`` streams."""
        return [tf.zeros([rows, u]) for u in self.units for _ in range(2)]

    def state_shapes(self, rows: int) -> list[tuple[int, int]]:
        return [(rows, u) for u in self.units for _ in range(2)]

    def call(self, tokens, states: Optional[Sequence[tf.Tensor]] = None, training=False,
             seed: Optional[tf.Tensor] = None, copies: int = 1):
        """``tokens [rows, T]`` -> ``(logits [rows, T, vocab], new states)``."""
        if states is None:
            states = self.initial_state(tf.shape(tokens)[0])
        x = self.drop_in(self.embedding(tokens), training=training, seed=seed, copies=copies)
        new_states = []
        for i, lstm in enumerate(self.lstms):
            x, h, c = lstm(x, initial_state=list(states[2 * i:2 * i + 2]), training=training)
            new_states += [h, c]
            drop = self.drop_hidden[i] if i < len(self.drop_hidden) else self.drop_out
            x = drop(x, training=training, seed=seed, copies=copies)
        if self.tie_weights:
            logits = tf.einsum("btd,vd->btv", x, self.embedding.embeddings) + self.out_bias
        else:
            logits = self.proj(x)
        return logits, new_states
