"""spherear: train, sample, evaluate and publish SphereAR image generators."""

__version__ = "0.1.0"
