"""spherear: train, sample, evaluate and publish SphereAR image generators."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy, so that `import spherear` (and `spherear --help`) does not load torch
    if name == "from_pretrained":
        from spherear.hub import from_pretrained

        return from_pretrained
    raise AttributeError(f"module 'spherear' has no attribute {name!r}")
