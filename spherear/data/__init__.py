"""Data: prepare-data sources, the synthetic set, crops, and the latent cache."""
