"""The version of spherear: a module of its own, so that any module can name it without
importing the package (whose lazy attributes import the loaders)."""

__version__ = "0.1.0"
