"""fastq.train: the training loop every fastq fine-tune uses (``train_``), its learning-rate
schedules, and data parallelism over ``torchrun`` (``fastq.train.distributed``).

    fastq.train.init_distributed()        # under torchrun: joins the group (gloo on CPU, NCCL on GPU)
    history = fastq.train_(model, batches, lambda m, b: loss(m, b), steps=500, lr=3e-4,
                           schedule="cosine", warmup_steps=50, max_grad_norm=1.0,
                           evaluate=val_metric, eval_every=50, patience=3, checkpoint_dir="ckpt")
    fastq.train.shutdown_distributed()    # after the last collective: barrier, destroy the group
"""

from fastq.train.distributed import init_distributed, is_main, shard_batch, shutdown_distributed, world
from fastq.train.schedules import SCHEDULES, lr_factor
from fastq.train.trainer import CHECKPOINT_FILE, Cycle, TrainConfig, TrainHistory, default_forward, train_

__all__ = ["CHECKPOINT_FILE", "Cycle", "SCHEDULES", "TrainConfig", "TrainHistory", "default_forward",
           "init_distributed", "is_main", "lr_factor", "shard_batch", "shutdown_distributed", "train_",
           "world"]
