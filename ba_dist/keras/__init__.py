"""Batch Augmentation for your own Horovod + Keras script.

    import ba_dist.keras as ba
    ctx = ba.init(m_ranks=2, m_local=2)            # after (or instead of) hvd.init()
    data = ba.ba_dataset(ds, "cifar", per_rank_unique=64, num_classes=10)
    model.fit(data.dataset, steps_per_epoch=data.steps_per_epoch,
              callbacks=ba.ba_callbacks(data=data) + your_callbacks)

``init`` starts Horovod with the BA groups registered, so call it instead of
``hvd.init()`` (calling ``hvd.init()`` first would register no groups). The
same pieces serve ``ba-train``: the BA batching (:func:`ba_dist.data.batching.ba_batches`),
the group broadcast, the seeds, the LR regimes and ghost batch norm are one
implementation with two faces. See docs/api.md.
"""
from ba_dist.dist import Context, Topology, TopologyError
from ba_dist.dist import init
from ba_dist.keras.callbacks import BADataCallback, BARegimeCallback, GradNormCallback, ba_callbacks
from ba_dist.keras.data import BADataset, ba_dataset
from ba_dist.models.ghost_bn import GhostBatchNormalization
from ba_dist.optim import make_schedule, scale_lr

__all__ = ["init", "Context", "Topology", "TopologyError", "ba_dataset", "BADataset", "ba_callbacks",
           "BARegimeCallback", "GradNormCallback", "BADataCallback", "GhostBatchNormalization",
           "make_schedule", "scale_lr"]
