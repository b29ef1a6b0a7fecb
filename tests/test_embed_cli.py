"""`simx embed` as users run it: exit codes, the bad-input corpus, kill -9, two writers.

Each run is a real subprocess (`python -m simx.cli embed ...`) with the tiny model, so
SIGKILL and flock behave exactly as in production.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_cache import assert_same_cache, leftovers, make_format_1  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402

from simx.cache import NEW, FeatureCache, canonical_path

SUMMARY = re.compile(r"embedded (\d+), unchanged (\d+), removed (\d+), failed (\d+); "
                     r"([\d.]+) img/s; providers (\S+); cache (.+) \((\d+) rows\)")


def simx_embed(*args: object, env: dict[str, str] | None = None, timeout: float = 120,
               wait: bool = True):
    cmd = [sys.executable, "-m", "simx.cli", "embed", *map(str, args)]
    full_env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def summary(out: str) -> dict[str, int]:
    m = SUMMARY.search(out)
    assert m, out
    keys = ("embedded", "unchanged", "removed", "failed")
    return dict(zip(keys, map(int, m.groups()[:4])))


@pytest.fixture(scope="module")
def forty(tmp_path_factory, rgb_photos) -> Path:
    """40 small real photos (crops of the skimage set, odd sizes), JPEG and PNG."""
    from PIL import Image

    d = tmp_path_factory.mktemp("forty")
    arrays = list(rgb_photos.values())
    for i in range(40):
        a = arrays[i % len(arrays)]
        y, x = (i * 7) % 40, (i * 11) % 50
        crop = a[y:y + 60 + 3 * i, x:x + 90 - i][::2, ::2]
        sub = d / f"g{i % 3}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(sub / f"img{i:02d}.{'png' if i % 4 == 0 else 'jpg'}",
                                                         quality=90)
    return d


@pytest.fixture(scope="module")
def clean_forty(forty, tiny, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("clean") / "cache"
    r = simx_embed(forty, "--model", tiny, "--cache", cache, "--batch-size", 4)
    assert r.returncode == 0, r.stderr
    assert summary(r.stdout)["embedded"] == 40
    return cache


def _png_bomb() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (10 gigapixels) and no real data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_help_documents_exit_codes():
    r = subprocess.run([sys.executable, "-m", "simx.cli", "embed", "--help"], capture_output=True,
                       text=True)
    assert r.returncode == 0
    for code in ("0  every image", "1  the run finished", "2  usage"):
        assert code in r.stdout


def test_bad_input_never_aborts(tiny, tmp_path, rgb_photos):
    from PIL import Image

    d = tmp_path / "corpus"
    d.mkdir()
    good = []
    for name in ("astronaut", "coffee", "chelsea"):
        p = d / f"{name}.jpg"
        Image.fromarray(rgb_photos[name][::4, ::4]).save(p, quality=90)
        good.append(p)
    png_named_jpg = d / "really_a_png.jpg"
    Image.fromarray(rgb_photos["rocket"][::4, ::4]).save(png_named_jpg, format="PNG")
    good.append(png_named_jpg)
    jpeg = good[0].read_bytes()
    bad = {
        "zero.jpg": lambda p: p.write_bytes(b""),
        "truncated.jpg": lambda p: p.write_bytes(jpeg[: len(jpeg) // 3]),
        "text.jpg": lambda p: p.write_text("this is not a picture\n"),
        "bomb.png": lambda p: p.write_bytes(_png_bomb()),
        "broken_link.jpg": lambda p: p.symlink_to(d / "does_not_exist.jpg"),
        # Tests run as root, which can read a chmod-000 file; a FIFO cannot be read as an
        # image by anyone (and opening it would block a naive reader forever).
        "fifo.jpg": lambda p: os.mkfifo(p),
    }
    if os.geteuid() != 0:  # root reads a chmod-000 file, so this case only means something for users
        bad["unreadable.jpg"] = lambda p: (p.write_bytes(jpeg), p.chmod(0))
    for name, make in bad.items():
        make(d / name)
    cache = tmp_path / "cache"
    r = simx_embed(d, "--model", tiny, "--cache", cache, timeout=60)
    assert r.returncode == 1, r.stderr  # partial: some files failed
    s = summary(r.stdout)
    assert (s["embedded"], s["failed"]) == (len(good), len(bad))
    failed = [json.loads(x) for x in (cache / "failed.jsonl").read_text().splitlines()]
    assert sorted(f["path"] for f in failed) == sorted(canonical_path(d / n) for n in bad)
    assert all(f["error"] and "\n" not in f["error"] for f in failed)
    by_name = {Path(f["path"]).name: f["error"] for f in failed}
    assert "symbolic link" in by_name["broken_link.jpg"]
    assert "regular file" in by_name["fifo.jpg"]
    assert re.search(r"pixel|bomb|large", by_name["bomb.png"], re.I), by_name["bomb.png"]
    fc = FeatureCache(cache)
    assert sorted(fc.paths) == sorted(canonical_path(p) for p in good)
    # A second run retries the failures, embeds nothing else, and says the same.
    r2 = simx_embed(d, "--model", tiny, "--cache", cache, timeout=60)
    assert r2.returncode == 1 and summary(r2.stdout) == {**s, "embedded": 0, "unchanged": len(good)}


def test_exit_codes(tiny, tmp_path, rgb_photos):
    from PIL import Image

    d = tmp_path / "ok"
    d.mkdir()
    Image.fromarray(rgb_photos["coffee"][::4, ::4]).save(d / "coffee.jpg")
    cache = tmp_path / "cache"
    r = simx_embed(d, "--model", tiny, "--cache", cache)
    assert r.returncode == 0 and summary(r.stdout)["embedded"] == 1
    assert "CPUExecutionProvider" in r.stdout
    assert r.stderr == "" and len(r.stdout.splitlines()) == 1  # no progress bar in a pipe
    not_onnx = tmp_path / "model.onnx"
    not_onnx.write_text("nope")
    r = simx_embed(d, "--model", not_onnx, "--cache", tmp_path / "c2")
    assert r.returncode == 2 and r.stderr.startswith("simx: error:") and len(r.stderr.splitlines()) == 1
    r = simx_embed(tmp_path / "missing", "--model", tiny, "--cache", tmp_path / "c3")
    assert r.returncode == 2 and "no such file" in r.stderr
    other = build_tiny_model(tmp_path / "other.onnx", seed=3, weights="sha256:00")
    r = simx_embed(d, "--model", other, "--cache", cache)
    assert r.returncode == 2 and "--force" in r.stderr
    r = simx_embed(d, "--model", other, "--cache", cache, "--force")
    assert r.returncode == 0 and FeatureCache(cache).meta["spec_hash"] != ""
    r = simx_embed(d, "--model", tiny, "--cache", cache, "--provider", "cuda")
    assert r.returncode == 2 and "cuda" in r.stderr.lower()



def test_format_1_cache_is_one_line_and_force_rebuilds_it(tiny, tmp_path, rgb_photos):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("coffee", "astronaut"):
        Image.fromarray(rgb_photos[name][::4, ::4]).save(d / f"{name}.jpg")
    cache = tmp_path / "cache"
    assert simx_embed(d, "--model", tiny, "--cache", cache).returncode == 0
    make_format_1(cache)
    r = simx_embed(d, "--model", tiny, "--cache", cache)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "format-1 cache" in r.stderr and "--force" in r.stderr
    r = simx_embed(d, "--model", tiny, "--cache", cache, "--force")
    assert r.returncode == 0 and summary(r.stdout)["embedded"] == 2, r.stderr
    assert FeatureCache(cache).meta["format_version"] == 2 and not leftovers(cache)

# Crash points inside a run of 40 images, batch 4, a commit every 8 images:
# before any commit; with the 2nd commit's files written but no manifest; right after
# the 2nd manifest; half way through the 2nd commit's renames; after the 3rd commit.
CRASHES = ["batch:1", "commit-written:2", "commit-manifest:2", "commit-rename:6",
           "commit-done:3"]


@pytest.mark.parametrize("point", CRASHES)
def test_kill_9_at_every_commit_step(point, forty, tiny, clean_forty, tmp_path):
    cache = tmp_path / "cache"
    args = (forty, "--model", tiny, "--cache", cache, "--batch-size", 4, "--commit-every", 8)
    r = simx_embed(*args, env={"SIMX_TEST_CRASH": point})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    committed = 0
    if (cache / "cache.json").exists() or (cache / ("cache.json" + NEW)).exists():
        fc = FeatureCache(cache)  # readable as it is, without any repair
        committed = len(fc)
        clean = FeatureCache(clean_forty)
        for p in fc.paths:  # nothing torn: every committed row is the right vector
            np.testing.assert_array_equal(fc.vector(p), clean.vector(p))
    if point != "batch:1":
        assert committed > 0
    r = simx_embed(*args)
    assert r.returncode == 0, r.stderr
    s = summary(r.stdout)
    assert (s["embedded"], s["unchanged"]) == (40 - committed, committed)  # nothing twice
    assert_same_cache(cache, clean_forty)


def start_slow_run(args: tuple, cache: Path, delay: str) -> subprocess.Popen:
    """Start `simx embed` slowed by ``delay`` s per image; return once its first commit is there."""
    p = simx_embed(*args, env={"SIMX_TEST_DELAY": delay}, wait=False)
    deadline = time.monotonic() + 60
    while not (cache / "cache.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return p


def test_kill_9_from_outside_mid_run(forty, tiny, clean_forty, tmp_path):
    cache = tmp_path / "cache"
    args = (forty, "--model", tiny, "--cache", cache, "--batch-size", 4, "--commit-every", 8)
    p = start_slow_run(args, cache, "0.15")
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    committed = len(FeatureCache(cache))
    assert 0 < committed < 40
    r = simx_embed(*args)
    assert r.returncode == 0 and summary(r.stdout)["embedded"] == 40 - committed
    assert_same_cache(cache, clean_forty)


def test_two_writers(forty, tiny, clean_forty, tmp_path):
    cache = tmp_path / "cache"
    args = (forty, "--model", tiny, "--cache", cache, "--batch-size", 4)
    first = simx_embed(*args, env={"SIMX_TEST_DELAY": "0.4"}, wait=False)  # >= 4 s
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the lock file names its holder once taken
        if (cache / ".lock").exists() and (cache / ".lock").read_text().strip():
            break
        time.sleep(0.02)
    impatient = simx_embed(*args)
    assert impatient.returncode == 2 and "being written by another process" in impatient.stderr
    assert f"pid {first.pid}" in impatient.stderr
    patient = simx_embed(*args, "--lock-timeout", 60)
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert summary(out)["embedded"] == 40
    assert patient.returncode == 0 and summary(patient.stdout)["unchanged"] == 40
    assert_same_cache(cache, clean_forty)


def test_progress_bar_on_a_terminal_only(forty, tiny, tmp_path):
    """tqdm draws on stderr when it is a terminal (a pty here); pipes got none above."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a real size
    try:
        p = subprocess.run([sys.executable, "-m", "simx.cli", "embed", str(forty), "--model",
                            str(tiny), "--cache", str(tmp_path / "cache")],
                           stdout=subprocess.PIPE, stderr=slave, text=True, timeout=120)
        os.close(slave)
        chunks = []
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO once the pty is drained and closed
                break
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(master)
    assert p.returncode == 0
    drawn = b"".join(chunks).decode(errors="replace")
    assert "simx embed" in drawn and "40/40" in drawn


def test_ctrl_c_commits_what_is_done(forty, tiny, clean_forty, tmp_path):
    cache = tmp_path / "cache"
    args = (forty, "--model", tiny, "--cache", cache, "--batch-size", 4, "--commit-every", 8)
    p = start_slow_run(args, cache, "0.2")  # it is embedding once the first commit is there
    time.sleep(0.3)  # between two periodic commits
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    committed = len(FeatureCache(cache))
    assert 0 < committed < 40
    r = simx_embed(*args)
    assert r.returncode == 0 and summary(r.stdout)["embedded"] == 40 - committed
    assert_same_cache(cache, clean_forty)


def test_sim_bench_method_config(tiny, tmp_path, rgb_photos):
    """`simx embed --config` takes sim-bench's YAML keys; command-line options win."""
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for i, a in enumerate(list(rgb_photos.values())[:3]):
        Image.fromarray(a[::4, ::4]).save(d / f"{i}.jpg")
    cfg = tmp_path / "dinov2.yaml"
    cfg.write_text(f"method: dinov2\nvariant: small\nbatch_size: 2\ndevice: cpu\n"
                   f"normalize: true\ndistance: cosine\ncache_dir: {tmp_path / 'from_cfg'}\n"
                   f"onnx: {tiny}\n")
    r = simx_embed(d, "--config", cfg)
    assert r.returncode == 0, r.stderr
    assert summary(r.stdout)["embedded"] == 3
    assert len(FeatureCache(tmp_path / "from_cfg")) == 3

    r = simx_embed(d, "--config", cfg, "--cache", tmp_path / "from_cli")
    assert r.returncode == 0, r.stderr
    assert len(FeatureCache(tmp_path / "from_cli")) == 3

    r = simx_embed(d, "--cache", tmp_path / "x")
    assert r.returncode == 2 and "give --model" in r.stderr

    cfg.write_text("method: dinov2\nvariant: small\nnormalize: false\n")
    r = simx_embed(d, "--config", cfg, "--cache", tmp_path / "y")
    assert r.returncode == 2 and "normalize: false is not supported" in r.stderr
