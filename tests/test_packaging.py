"""Install-time trust (issue 12 items 1, 3, 4, 16): the distribution name, the extras' hints,
old OpenCV, bugs that must not pass as bad images, and files too big to read blindly."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]
DIST = "simx-embed"  # `simx` on PyPI is an unrelated 2014 project that does not build


def test_distribution_name_is_the_free_one():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["name"] == DIST
    from importlib.metadata import distribution

    assert distribution(DIST).metadata["Name"] == DIST


def test_no_hint_names_the_squatted_package():
    bad = []
    files = [*ROOT.glob("runtime/**/*.py"), *ROOT.glob("export/*.py"), *ROOT.glob("benchmarks/*.*"),
             *ROOT.glob("scripts/*"), *ROOT.glob("*.md"), *ROOT.glob("docs/*.md")]
    for f in files:
        if f.is_file() and f.suffix in (".py", ".md", ".sh", ""):
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                if re.search(r"(?<![\w-])simx\[|pip install '?simx'?(\s|$)", line):
                    bad.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", ["onnx", "torch", "open_clip", "onnxruntime"])
def test_export_without_the_extra_is_one_line_exit_2(module, monkeypatch, tmp_path):
    from simx.cli.app import main

    monkeypatch.setitem(sys.modules, module, None)  # what an install without it looks like
    r = CliRunner().invoke(main, ["export", "dinov2", "--variant", "small", "--weights", "random",
                                  "--output-dir", str(tmp_path)])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and module in lines[0] and "pip install 'simx-embed[" in lines[0]
    assert not list(tmp_path.iterdir())


def test_opencv_without_imread_color_rgb_decodes_the_same(photo_dir, monkeypatch):
    from simx.images import decode as image

    path = photo_dir / "coffee.jpg"
    want = image.load_rgb(path)
    monkeypatch.setattr(image, "_CV2_RGB", None)  # OpenCV < 4.11
    np.testing.assert_array_equal(image.load_rgb(path), want)


def test_a_bug_in_decoding_is_not_filed_as_a_bad_image(photo_dir, monkeypatch, tiny_enc):
    from simx.run import encoder as encoder

    def broken(*a, **k):
        raise TypeError("unexpected keyword (a bug, not a bad file)")

    monkeypatch.setattr(encoder, "load_rgb", broken)
    with pytest.raises(TypeError, match="a bug"):
        list(tiny_enc.iter_embed([photo_dir / "coffee.jpg"]))


def test_a_corrupt_file_is_still_one_failure(photo_dir, tmp_path, tiny_enc):
    bad = tmp_path / "bad.jpg"
    data = (photo_dir / "coffee.jpg").read_bytes()
    bad.write_bytes(data[:200] + b"\x00" * 50)
    (b,) = list(tiny_enc.iter_embed([bad, photo_dir / "coffee.jpg"], 4))
    assert b.indices == [1] and len(b.failures) == 1


def _png_header(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))


@pytest.mark.parametrize("head", ["garbage", "small-png", "huge-png"])
def test_huge_sparse_file_is_refused_without_reading_it(tmp_path, head):
    """A 3 GB sparse file costs no RAM to refuse: the header is read first."""
    p = tmp_path / "huge.jpg"
    first = {"garbage": b"\x17" * 64, "small-png": _png_header(64, 48),
             "huge-png": _png_header(100_000, 100_000)}[head]
    with open(p, "wb") as f:
        f.write(first)
        f.truncate(3 << 30)
    code = ("import resource, sys\n"
            "from simx.images.decode import load_rgb, ImageError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n"
            f"    load_rgb({str(p)!r}); print('loaded')\n"
            "except ImageError as e:\n"
            "    print('refused:', e)\n"
            "grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
            "print('grew_kb', grew)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ})
    assert "refused:" in r.stdout, (r.stdout, r.stderr)
    grew = int(r.stdout.rsplit("grew_kb", 1)[1])
    assert grew < 200_000, f"RSS grew {grew} kB to refuse a sparse file"


def test_namespace_trap_of_a_clone_named_simx_is_documented(tmp_path):
    """Item 5: from the folder above a clone named ``simx/``, ``import simx`` finds that folder
    as an empty namespace package (cwd is first on sys.path). No layout change fixes this
    short of moving runtime/ into simx/, so the README says what happens and what to do; the
    console script is unaffected."""
    (tmp_path / "simx").mkdir()
    (tmp_path / "simx" / "setup.cfg").write_text("[metadata]\nname = simx-embed\n")
    probe = "import simx; print(getattr(simx, '__file__', None))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.stdout.strip() == "None"  # the trap, reproduced
    r = subprocess.run([sys.executable, "-I", "-c", probe], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.stdout.strip().endswith("__init__.py")  # isolated mode: the installed package
    readme = (ROOT / "README.md").read_text()
    assert "Troubleshooting: `import simx` finds an empty package." in readme
