"""Batch Augmentation for sequence models: M copies of every sequence, each with its own dropout masks.

Modules: ``data`` (corpora, vocabularies), ``batching`` (BA batches per group),
``dropout`` (seeded per-copy masks), ``lstm_lm`` and ``transformer`` (models),
``beam`` (beam search), ``schedules``, ``train_step`` (the BA step), ``scoring``
(perplexity, BLEU), ``train`` (the task and ``ba-train-seq``; the fit loop is
``ba_dist.fit``), ``evaluate`` (``ba-eval-seq``). See docs/sequence.md.
"""
