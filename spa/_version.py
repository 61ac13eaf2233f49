"""The spa version, in a module of its own so that code inside the package can stamp files
with it without importing the package's public API (`spa/__init__` re-exports it)."""

__version__ = "0.1.0"
