"""Training: the accelerate loop, resumable checkpoints, and the train/continue drivers."""
