"""Image inputs named by URI (``file://``, ``s3://``, ``gs://``, ...), for the Ray engine.

Local paths stay what they are everywhere in simx; a URI is read through pyarrow's
filesystems, so every scheme pyarrow knows goes through the same code.
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(key: str) -> bool:
    """Whether ``key`` is a URI (``scheme://...``) rather than a local path."""
    return bool(_SCHEME.match(key))


def image_input(key: str) -> str:
    """What the Encoder is given for a cache key: the local path itself."""
    return key
