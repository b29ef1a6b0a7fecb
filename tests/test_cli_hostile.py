"""Values that once hung or crashed the CLI (issue 12 items 16, 17): each now gets one line
and exit 2, or finishes. Every run is a subprocess with a timeout, so a hang fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def simx(*args: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simx.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("opt, value", [("--seconds", "nan"), ("--seconds", "inf"),
                                        ("--seconds", "0"), ("--threads", "0"),
                                        ("--threads", "-2"), ("--warmup", "-1")])
def test_bench_refuses_values_that_hang_or_mean_nothing(tiny, opt, value):
    r = simx("bench", "--model", tiny, "--provider", "cpu", "--batch-sizes", "1", opt, value,
             timeout=60)
    assert r.returncode == 2 and opt in r.stderr, r.stderr


@pytest.mark.parametrize("opt, value", [("--lock-timeout", "nan"), ("--commit-seconds", "nan"),
                                        ("--threads", "0")])
def test_embed_refuses_the_same_values(tiny, tmp_path, opt, value):
    (tmp_path / "i").mkdir()
    r = simx("embed", tmp_path / "i", "--model", tiny, "--cache", tmp_path / "c", opt, value,
             timeout=60)
    assert r.returncode == 2 and opt in r.stderr, r.stderr


def test_fifo_as_config_does_not_hang(tiny, tmp_path):
    fifo = tmp_path / "method.yaml"
    os.mkfifo(fifo)
    (tmp_path / "i").mkdir()
    r = simx("embed", tmp_path / "i", "--config", fifo, "--cache", tmp_path / "c", timeout=60)
    assert r.returncode == 2 and "not a regular file" in r.stderr, r.stderr


def test_bench_images_with_a_corrupt_file_finishes(tiny, photo_dir, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("coffee.jpg", "rocket.jpg"):
        (imgs / name).write_bytes((photo_dir / name).read_bytes())
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    r = simx("bench", "--model", tiny, "--provider", "cpu", "--batch-sizes", "2", "--images", imgs,
             "--seconds", "0.2", "--rounds", "1", "--sgemm-size", "64", "--json", tmp_path / "b.json",
             timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    d = json.loads((tmp_path / "b.json").read_text())
    assert "skipped 1 file" in r.stderr
    assert json.dumps(d).count('"skipped": 1') == 1


def test_bench_images_with_only_corrupt_files_says_so(tiny, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "broken.jpg").write_bytes(b"nope")
    r = simx("bench", "--model", tiny, "--provider", "cpu", "--batch-sizes", "1", "--images", imgs,
             timeout=120)
    assert r.returncode == 2 and "could be decoded" in r.stderr, r.stderr


def test_bench_synthetic_is_hidden_ignored_and_excludes_images(tmp_path):
    # the default without --images: still accepted (old scripts), no longer advertised
    assert "--synthetic" not in simx("bench", "--help", timeout=60).stdout
    r = simx("bench", "--model", tmp_path / "absent.onnx", "--synthetic", timeout=60)
    assert r.returncode == 2 and "no such option" not in r.stderr.lower(), r.stderr
    r = simx("bench", "--model", tmp_path / "absent.onnx", "--synthetic", "--images", tmp_path,
             timeout=60)
    assert r.returncode == 2 and "--synthetic and --images exclude each other" in r.stderr, r.stderr
