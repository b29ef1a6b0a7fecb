"""The package version, and the version of any installed package (one place for both)."""

from __future__ import annotations

__version__ = "0.1.0"
