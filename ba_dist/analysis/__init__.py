"""The paper's section 3 measurements as tools (``ba-analyze``, ``ba-bench``).

* :mod:`~ba_dist.analysis.grad_corr`  gradient correlation under augmentation (Table 1)
* :mod:`~ba_dist.analysis.gradstats`  per-step gradient norm and variance over ranks (Figure 2)
* :mod:`~ba_dist.analysis.throughput` images/s vs batch size (Table 3) and data-parallel scaling
* :mod:`~ba_dist.analysis.cli`        the command lines; ``ba_dist.plot`` draws the curves

Submodules are imported on demand: importing this package loads no TensorFlow.
"""

__all__ = ["GRAD_LOG"]

# Per-step gradient statistics of a run, written by gradstats.GradStatsLogger, read by ba-plot.
GRAD_LOG = "grad_norm.jsonl"
