"""The runtime never imports torch: checked in a fresh interpreter, after importing the
runtime modules and after a real `simx embed` run in that same process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tiny_model import build_tiny_model  # noqa: E402

HEAVY = ("torch", "torchvision", "timm", "open_clip", "onnx", "simx.export")


def test_runtime_and_simx_embed_never_import_torch(tmp_path, rgb_photos):
    from PIL import Image

    model = build_tiny_model(tmp_path / "tiny.onnx")
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(rgb_photos[name][::4, ::4]).save(d / f"{name}.jpg")
    code = textwrap.dedent(f"""
        import importlib, json, pkgutil, sys
        import simx, simx.cli
        # every runtime module, room by room (the export stage is the one allowed to need torch)
        for m in pkgutil.walk_packages(simx.__path__, "simx."):
            if not m.name.startswith("simx.export") and m.name != "simx.cli.__main__":
                importlib.import_module(m.name)
        after_import = sorted(m for m in {HEAVY!r} if m in sys.modules)
        enc = simx.Encoder({str(model)!r}, provider="cpu")
        enc.embed([{str(d / "coffee.jpg")!r}])
        try:
            simx.cli.main(["embed", {str(d)!r}, "--model", {str(model)!r},
                           "--cache", {str(tmp_path / "cache")!r}], standalone_mode=False)
        except SystemExit:
            pass
        print(json.dumps({{"after_import": after_import,
                          "after_embed": sorted(m for m in {HEAVY!r} if m in sys.modules),
                          "rows": len(simx.FeatureCache({str(tmp_path / "cache")!r}))}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"after_import": [], "after_embed": [], "rows": 2}, out
