"""spherear: train, sample, evaluate and publish SphereAR image generators."""

from spherear.version import __version__

__all__ = ["__version__", "from_pretrained"]


def __getattr__(name: str):
    # lazy, so that `import spherear` (and `spherear --help`) does not load torch
    if name == "from_pretrained":
        from spherear.checkpoints import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'spherear' has no attribute {name!r}")
