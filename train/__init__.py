"""Training: typed configs, DeepSpeed trainer, stage objectives, checkpoints, logging, pipeline."""
