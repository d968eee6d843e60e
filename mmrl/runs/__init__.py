"""What a training run owns besides its algorithm: its directory and lock, its configs over resumed segments, its
logger and trackers, its thread count, and the `TrainingRun` that ties them to processes, model and checkpoints."""
