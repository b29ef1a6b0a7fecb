"""The release as a user gets it (issue 12 item 2): a wheel, installed with only [cpu] into a
fresh virtual environment without this machine's packages, runs the runtime on a model
exported elsewhere and never imports torch. An editable install hides missing subpackages
and package data (the BPE vocabulary); this does not.

The install needs the package index (PyPI) for numpy, OpenCV and onnxruntime; without it
this test fails, it does not skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{cmd[:4]}... failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(out), str(ROOT)], timeout=600)
    (whl,) = out.glob("simx_embed-*.whl")
    return whl


@pytest.fixture(scope="module")
def fresh_python(wheel, tmp_path_factory) -> Path:
    """A venv with nothing but the wheel and its [cpu] dependencies."""
    d = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(d)
    py = d / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
          f"{wheel}[cpu]"], timeout=1500, env=env)
    return py


def test_wheel_holds_every_subpackage_and_the_vocabulary(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    # every module of every room, and of the export stage, at its import path
    want = [f"simx/{p.relative_to(ROOT / 'runtime').as_posix()}" for p in (ROOT / "runtime").rglob("*.py")]
    want += [f"simx/export/{p.relative_to(ROOT / 'export').as_posix()}" for p in (ROOT / "export").rglob("*.py")]
    missing = sorted(set(want) - set(names))
    assert len(want) > 80 and missing == [], missing
    assert "simx/run/data/bpe_simple_vocab_16e6.txt.gz" in names
    assert "simx/model/catalogue.json" in names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Name: simx-embed" in text and "Provides-Extra: cpu" in text


def test_cpu_install_embeds_without_torch(fresh_python, exported, photo_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    model = exported["dinov2-small"]
    probe = (
        "import sys, json\n"
        "import simx\n"
        "from simx import Encoder\n"
        "from simx.run.tokenizer import get_tokenizer\n"
        f"e = Encoder({str(model)!r}, provider='cpu')\n"
        f"v = e.embed([{str(photo_dir / 'coffee.jpg')!r}, {str(photo_dir / 'rocket.jpg')!r}])\n"
        "ids = get_tokenizer(77)(['a photo of a cat'])\n"
        "print(json.dumps({'file': simx.__file__, 'shape': list(v.shape),\n"
        "                  'distinct': float(abs(v[0] - v[1]).max()), 'tokens': int((ids > 0).sum()),\n"
        "                  'torch': 'torch' in sys.modules}))\n")
    r = _run([str(fresh_python), "-c", probe], timeout=300, env=env, cwd=tmp_path)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "site-packages" in out["file"]  # the wheel, not this checkout
    assert out["shape"] == [2, 384] and out["distinct"] > 1e-3
    assert out["tokens"] > 2 and out["torch"] is False
    # The console script, end to end: a cache folder, then a search against it.
    simx = fresh_python.parent / "simx"
    r = _run([str(simx), "embed", str(photo_dir), "--model", str(model), "--cache",
              str(tmp_path / "cache")], timeout=600, env=env, cwd=tmp_path)
    assert "embedded" in r.stdout
    r = _run([str(simx), "search", "--cache", str(tmp_path / "cache"),
              str(photo_dir / "coffee.jpg"), "-k", "1", "--json"], timeout=300, env=env, cwd=tmp_path)
    assert Path(json.loads(r.stdout)[0]["hits"][0]["path"]).name == "coffee.jpg"
    # simx export on this runtime-only install: one line naming the extra, exit 2.
    r = subprocess.run([str(simx), "export", "dinov2", "--variant", "small"], capture_output=True,
                       text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "simx-embed[export]" in r.stderr and "Traceback" not in r.stderr
