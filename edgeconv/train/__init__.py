"""Training: the loop (`loop`: train, evaluate, checkpoints, resume) and multi-process runs under torchrun
(`distributed`)."""
