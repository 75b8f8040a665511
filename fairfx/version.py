"""The package version: the one constant that ``pyproject.toml`` reads (setuptools ``attr:``)
and ``fairfx.__version__`` / ``fairfx --version`` report."""

__version__ = "0.1.0"
