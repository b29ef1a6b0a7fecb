#!/usr/bin/env python3
"""Write ``runtime/model/catalogue.json``: every model simx can export, read from the libraries.

Why a committed snapshot: the runtime (``simx models``, id lookups) never imports torch,
timm or open_clip, yet must list what they offer. This script asks every family in
``simx.export.families.FAMILIES`` for its entries (open_clip's ``list_pretrained`` and
configs, timm's DINOv2/DINOv3 names) and writes them; ``tests/test_catalogue.py`` checks
that the file equals what the installed libraries list, so an upgrade that adds tags
fails the test until this script is re-run.

    python scripts/make_catalogue.py          # rewrite the snapshot
    python scripts/make_catalogue.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parent.parent / "runtime" / "model" / "catalogue.json"


def snapshot() -> dict[str, Any]:
    """The catalogue document, as the installed libraries describe it."""
    import warnings

    import open_clip
    import timm

    from simx.export.families import catalogue
    from simx.export.weights import quiet_logging

    with quiet_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = catalogue()
    return {
        "generated_by": "scripts/make_catalogue.py",
        "versions": {"open_clip": open_clip.__version__, "timm": timm.__version__},
        "models": rows,
    }


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = ap.parse_args(argv)
    text = render(snapshot())
    if args.check:
        stale = not PATH.exists() or PATH.read_text() != text
        print(f"{PATH}: {'stale' if stale else 'up to date'}")
        return int(stale)
    PATH.write_text(text)
    print(f"wrote {PATH} ({len(json.loads(text)['models'])} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
