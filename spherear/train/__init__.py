"""Training: the shared Accelerate loop, train-vae and train-ar."""
