"""The package version (`pyproject.toml` reads it; imported without loading the package's API)."""
__version__ = "0.1.0"
