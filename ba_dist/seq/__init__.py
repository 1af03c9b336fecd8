"""Batch Augmentation for sequence models: M copies of every sequence, each with its own dropout masks.

Modules: ``data`` (corpora, vocabularies), ``batching`` (BA batches per group),
``dropout`` (seeded per-copy masks), ``lstm_lm`` and ``transformer`` (models),
``beam`` (beam search), ``schedules``, ``trainer`` (the BA step), ``evaluation``
(perplexity, BLEU), ``callbacks``, ``train`` (``ba-train-seq``), ``evaluate``
(``ba-eval-seq``). See docs/sequence.md.
"""
