"""Offline demo: BA (dropout masks) on a small word-level LSTM language model.

The corpus is the English prose of Python's own language reference
(``pydoc_data.topics``, ships with CPython: ~41k training words, 2.5k-word
vocabulary), so it runs anywhere without a download. M = 4 on 2 ranks: both
ranks form one group that trains on the same 8 streams, and each rank repeats
them twice; all 4 copies of a stream see identical tokens and different
dropout masks::

    2 ranks x (2 copies x 8 unique streams) = B 8 unique x M 4 = 32 streams x 35 tokens per step

Launch:
    mpirun -np 2 .venv/bin/ba-train-seq --config configs/seq_lstm_demo.py --workdir workdirs/seq_lstm_demo

Expected (measured): validation perplexity 440 after the first epoch, 233 after
the 4th (612 steps; test 229; uniform would be 2540), ~4 minutes on 2 CPU cores
shared with other jobs. The baselines:
``--config.ba.multiplicity=1 --config.ba.m_ranks=1`` (fixed #steps) and
additionally ``--config.input.batch_size=32 --config.train.epochs=16`` (fixed #samples).
"""
from ba_dist.seq.config import base_config


def get_config():
    c = base_config()
    c.task = "lm"
    c.input.dataset = "python_docs"
    c.input.batch_size = 8            # B unique streams
    c.input.bptt = 35
    c.input.eval_streams = 4
    c.input.test_streams = 1
    c.input.vocab_size = 10000        # keeps every word of this corpus
    c.ba.multiplicity = 4             # M
    c.ba.m_ranks = 2                  # -> 2 copies per rank
    c.model.kwargs.embed_dim = 64
    c.model.kwargs.hidden = 128
    c.model.kwargs.num_layers = 3
    c.model.kwargs.input_dropout = 0.4
    c.model.kwargs.hidden_dropout = 0.25
    c.model.kwargs.output_dropout = 0.4
    c.model.kwargs.tie_weights = True
    c.optim.name = "sgd"
    c.optim.base_lr = 20.0
    c.optim.clip_norm = 0.25
    c.optim.weight_decay = 1.2e-6
    c.train.epochs = 4
    c.eval.final_splits = "valid,test"
    return c
