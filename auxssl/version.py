"""The package version, importable without torch (``auxssl --version`` stays instant)."""

__version__ = "0.1.0"
