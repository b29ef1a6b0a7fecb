"""The package version, and the version of any installed package (one place for both)."""

from __future__ import annotations

__version__ = "0.1.0"


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (e.g. ``openvino``), None if absent."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except (PackageNotFoundError, ValueError):
        return None
