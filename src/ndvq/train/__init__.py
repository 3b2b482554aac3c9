"""Training: data, losses, discriminator, the trainer and its checkpoints."""
