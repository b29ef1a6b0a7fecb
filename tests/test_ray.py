"""`simx embed --engine ray` against a real two-node Ray cluster started on this machine.

The session fixture runs `ray start --head` and a second `ray start --address ...` (one CPU
each, loopback, no dashboard), so blocks really go to actors in other processes on other
raylets. Every test compares the Ray-filled cache with a single-process run of the same
files: the same paths once each, the same failures, rows within 1e-5.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data")

sys.path.insert(0, str(Path(__file__).parent))
from test_embed_cli import SUMMARY, simx_embed  # noqa: E402

from simx.cache import FeatureCache

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
START_TIMEOUT = 90.0  # seconds for one `ray start` to report the node up
# Token authentication would need a token file shared by every node and driver; a test
# cluster bound to this machine does without.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


_TAKEN: set[int] = set()  # every port handed out this session, so no two components share one


def _free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports, never one handed out before in this session. The
    sockets stay bound until all `n` are chosen, so the kernel cannot give one twice."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in _TAKEN:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    _TAKEN.update(ports)
    return ports


def _free_range(width: int) -> int:
    """The low end of `width` consecutive free ports below the kernel's ephemeral range
    (32768+), so the ports the kernel hands out elsewhere never land inside it."""
    rng = random.Random(os.getpid())
    for _ in range(200):
        lo = rng.randrange(20000, 32000 - width)
        span = range(lo, lo + width + 1)
        if _TAKEN.isdisjoint(span) and all(_bindable(p) for p in span):
            _TAKEN.update(span)
            return lo
    raise RuntimeError(f"no {width} consecutive free ports in 20000-32000")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    """One `ray start --block` in its own process group, every port free, distinct and
    private, so no two components (and no second cluster on the machine) collide."""
    lo = _free_range(40)
    names = ["--node-manager-port", "--object-manager-port", "--metrics-export-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
             "--runtime-env-agent-port"]
    ports: dict[str, int] = dict(zip(names, _free_ports(len(names))))
    ports.update({"--min-worker-port": lo, "--max-worker-port": lo + 40})
    cmd = [*RAY, "start", "--block", "--num-cpus", "1", "--num-gpus", "0",
           "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
           *[str(x) for kv in ports.items() for x in kv], *args]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, **RAY_ENV})
    deadline = time.monotonic() + START_TIMEOUT
    while "Ray runtime started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text()[-2000:]
            _stop_node(proc)
            pytest.fail(f"ray start did not come up ({' '.join(args)}):\n{tail}")
        time.sleep(0.2)
    return proc


def _stop_node(proc: subprocess.Popen) -> None:
    """SIGTERM the node's process group, then SIGKILL what is left of it."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(3)  # a node drains for up to 30 s; nothing here needs draining
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def _kill_leftover_workers(temp_dir: Path) -> None:
    """Ray workers start their own sessions, so the group kill misses them; their pids are
    in their log file names (``worker-<id>-<job>-<pid>.out``) under our temp dir only."""
    for log in temp_dir.glob("session_*/logs/worker-*.out"):
        pid = int(log.stem.rsplit("-", 1)[-1])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if cmdline.startswith(b"ray::") or str(temp_dir).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real two-node Ray cluster on loopback; yields its address. Always torn down."""
    base = tmp_path_factory.mktemp("ray")
    temp_dir = Path("/tmp") / f"simx-ray-{os.getpid()}"  # short: unix socket paths are capped
    port, dashboard_port = _free_ports(2)
    nodes: list[subprocess.Popen] = []
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # for the in-process drivers of the API tests
    try:
        nodes.append(_start_node(["--head", "--port", str(port), "--include-dashboard=false",
                                  "--dashboard-port", str(dashboard_port), "--temp-dir",
                                  str(temp_dir)], base / "head.log"))
        nodes.append(_start_node(["--address", f"127.0.0.1:{port}"], base / "worker.log"))
        yield f"127.0.0.1:{port}"
    finally:
        for proc in reversed(nodes):
            _stop_node(proc)
        _kill_leftover_workers(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    """Real photos in two folders, plus one file that is not an image."""
    d = tmp_path_factory.mktemp("ray-images")
    for i, p in enumerate(sorted(photo_dir.iterdir())):
        sub = d / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        shutil.copy2(p, sub / p.name)
    (d / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, images: Path, tiny: Path) -> Path:
    """The single-process `simx embed` of ``images``: what every Ray run must equal."""
    cache = tmp_path_factory.mktemp("ref") / "cache"
    r = simx_embed(images, "--model", tiny, "--cache", cache)
    assert r.returncode == 1, r.stderr  # the broken file: a partial run
    return cache


def assert_same_rows(got: Path, want: Path) -> None:
    a, b = FeatureCache(got), FeatureCache(want)
    assert len(set(a.paths)) == len(a.paths), "a path appears twice"
    # Format 2 keeps rows in the order their segments were committed, so compare by path.
    assert sorted(a.paths) == sorted(b.paths)
    assert [(f.path, f.error) for f in a.failures] == [(f.path, f.error) for f in b.failures]
    assert len(a.paths) > 5 and a.failures
    ea, eb = np.asarray(a.embeddings), np.asarray(b.embeddings)
    for p in b.paths:
        np.testing.assert_allclose(ea[a.row(p)], eb[b.row(p)], rtol=0, atol=1e-5)


def _counts(stdout: str) -> tuple[int, int, int, int]:
    m = SUMMARY.search(stdout)
    assert m, stdout
    return int(m[1]), int(m[2]), int(m[3]), int(m[4])


def test_cli_ray_run_equals_single_process_and_rerun_embeds_nothing(ray_cluster, images, tiny,
                                                                     reference, tmp_path):
    cache = tmp_path / "cache"
    args = (images, "--model", tiny, "--cache", cache, "--engine", "ray",
            "--address", ray_cluster, "--workers", "2")
    r = simx_embed(*args, env=RAY_ENV, timeout=180)
    assert r.returncode == 1, r.stderr  # same partial run as the reference
    n = len(FeatureCache(reference).paths)
    assert _counts(r.stdout) == (n, 0, 0, 1)
    assert "providers ray:CPUExecutionProvider" in r.stdout
    assert_same_rows(cache, reference)

    again = simx_embed(*args, env=RAY_ENV, timeout=180)
    assert _counts(again.stdout) == (0, n, 0, 1)  # only the broken file is retried
    assert_same_rows(cache, reference)


def test_api_blocks_spread_over_actors_equal_single_process(ray_cluster, images, tiny,
                                                            reference, tmp_path, monkeypatch):
    from simx.embed.ray_engine import embed_on_ray

    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("SIMX_TEST_RAY_PID_DIR", str(pids))
    # Slow tasks, so the job outlasts the second actor's start-up.
    monkeypatch.setenv("SIMX_TEST_RAY_DELAY", "0.5")
    rep = embed_on_ray([images], tiny, tmp_path / "cache", address=ray_cluster, workers=2,
                       rows_per_task=1, commit_every=3)
    nodes = [p.read_text() for p in pids.iterdir()]
    assert len(nodes) == 2 and len(set(nodes)) == 2  # two actors, one per node (one CPU each)
    assert rep.commits >= 2  # committed as blocks came back, not once at the end
    assert_same_rows(tmp_path / "cache", reference)


def test_killed_worker_loses_and_duplicates_no_row(ray_cluster, images, tiny, reference,
                                                   tmp_path, monkeypatch):
    from simx.embed.ray_engine import embed_on_ray

    pids = tmp_path / "pids"
    pids.mkdir()
    monkeypatch.setenv("SIMX_TEST_RAY_PID_DIR", str(pids))
    monkeypatch.setenv("SIMX_TEST_RAY_DELAY", "0.7")  # per task, so the kill lands mid-job
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["report"] = embed_on_ray([images], tiny, tmp_path / "cache",
                                            address=ray_cluster, workers=2, rows_per_task=1,
                                            commit_every=2)
        except BaseException as e:  # surfaced by the assertion below
            result["error"] = e

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.1)
    time.sleep(1.0)  # both actors are working on a task now
    victim = int(sorted(pids.iterdir(), key=lambda p: p.stat().st_mtime)[0].name)
    os.kill(victim, signal.SIGKILL)
    t.join(180)
    assert not t.is_alive() and "error" not in result, result.get("error")
    assert len(list(pids.iterdir())) >= 3, "Ray should have restarted the killed actor"
    assert_same_rows(tmp_path / "cache", reference)


def test_killed_driver_resumes_where_it_stopped(ray_cluster, images, tiny, reference, tmp_path):
    cache = tmp_path / "cache"
    args = (images, "--model", tiny, "--cache", cache, "--engine", "ray",
            "--address", ray_cluster, "--workers", "1", "--commit-every", "1")
    # A slow driver (0.5 s after each block) is killed once its first commits are on disk.
    p = simx_embed(*args, env={**RAY_ENV, "SIMX_TEST_DELAY": "0.5"}, wait=False)
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline:
        try:
            if len(FeatureCache(cache).paths) >= 1:
                break
        except Exception:  # not a cache yet
            pass
        time.sleep(0.05)
    p.kill()
    p.communicate(timeout=30)
    kept = len(FeatureCache(cache).paths)
    n = len(FeatureCache(reference).paths)
    assert 1 <= kept < n, "the kill should land part way through"
    r = simx_embed(*args, env=RAY_ENV, timeout=180)
    assert _counts(r.stdout)[:2] == (n - kept, kept)  # nothing committed is embedded again
    assert_same_rows(cache, reference)


def test_ray_options_need_the_ray_engine(images, tiny, tmp_path):
    r = simx_embed(images, "--model", tiny, "--cache", tmp_path / "c", "--workers", "2")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["simx: error: --workers: only with --engine ray"]
    r = simx_embed(f"file://{images}", "--model", tiny, "--cache", tmp_path / "c")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"simx: error: the URI file://{images}: only with "
                                             "--engine ray"]
    assert not (tmp_path / "c").exists()


def test_file_uris_are_listed_and_read_through_pyarrow(ray_cluster, images, tiny, reference,
                                                       tmp_path):
    """``file://`` goes through pyarrow's filesystems, the code ``s3://`` and ``gs://`` use."""
    from simx.embed.ray_engine import embed_on_ray

    cache = tmp_path / "cache"
    uri = f"file://{images}"
    rep = embed_on_ray([uri], tiny, cache, address=ray_cluster, workers=2)
    want = FeatureCache(reference)
    got = FeatureCache(cache)
    assert sorted(got.paths) == sorted(f"file://{p}" for p in want.paths)  # keyed by the URI
    assert [(f.path, f.error) for f in got.failures] == [(f"file://{f.path}", f.error)
                                                          for f in want.failures]
    eg, ew = np.asarray(got.embeddings), np.asarray(want.embeddings)
    for p in want.paths:
        np.testing.assert_allclose(eg[got.row(f"file://{p}")], ew[want.row(p)], rtol=0, atol=1e-5)
    assert (rep.embedded, rep.failed) == (len(want.paths), 1)
    # pyarrow's size and mtime make the re-run diff work as it does for local files.
    again = embed_on_ray([uri], tiny, cache, address=ray_cluster, workers=2)
    assert (again.embedded, again.unchanged, again.removed) == (0, len(want.paths), 0)
    victim = sorted(images.rglob("*.png"))[0]
    st = victim.stat()
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        third = embed_on_ray([uri], tiny, cache, address=ray_cluster, workers=1)
    finally:
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # the module's files are shared
    assert (third.embedded, third.unchanged) == (1, len(want.paths) - 1)


def test_without_address_a_private_local_instance_does_the_work(ray_cluster, images, tiny,
                                                                reference, tmp_path):
    """No --address: simx starts (and stops) its own Ray, even with a cluster running here
    (joining the RAY_ADDRESS cluster would fail: ray.init refuses num_cpus for a join)."""
    r = simx_embed(images, "--model", tiny, "--cache", tmp_path / "cache", "--engine", "ray",
                   "--workers", "1", env={**RAY_ENV, "RAY_ADDRESS": ray_cluster}, timeout=180)
    assert r.returncode == 1, r.stderr
    assert "providers ray:CPUExecutionProvider" in r.stdout
    assert_same_rows(tmp_path / "cache", reference)
