"""Named failpoints: the one place where tests reach into production code.

In the manner of etcd's gofail, the code marks a point by name (``failpoints.hit("commit-begin")``)
and a test turns points on from outside; when no point is on, ``hit`` is one truth test of
an empty dict. No other module reads the environment for test hooks.

Turning points on (read once, when this module is first imported):

``SIMX_FAILPOINTS="name=action;name=action"``
    the general form. Actions: ``kill`` / ``kill(N)`` (SIGKILL this process the Nth time the
    point is reached, default 1), ``sleep(S)`` (sleep S seconds at every hit), ``pidfile(DIR)``
    (write ``DIR/<pid>`` holding the point's payload, e.g. the Ray node id).

The black-box tests drive four older variables from the shell; they keep working and map
onto the same points:

============================  =============================================
``SIMX_TEST_CRASH=POINT:N``   ``POINT=kill(N)``
``SIMX_TEST_DELAY=S``         ``batch=sleep(S)``
``SIMX_TEST_RAY_DELAY=S``     ``ray-task=sleep(S)``
``SIMX_TEST_RAY_PID_DIR=D``   ``ray-actor-start=pidfile(D)``
============================  =============================================

The points (``POINTS``): ``commit-begin``, ``commit-written``, ``commit-rename``,
``commit-manifest``, ``commit-done`` (a cache commit, in order), ``compact-begin``,
``compact-done`` (compaction), ``batch`` (``simx embed``, after each batch is handed to the
cache writer), ``ray-task``
(a Ray actor, before each block) and ``ray-actor-start`` (a Ray actor, once it starts).

Ray workers are other processes: ``forward_env()`` gives the variables to hand them.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

POINTS = (
    "commit-begin", "commit-written", "commit-rename", "commit-manifest", "commit-done",
    "compact-begin", "compact-done", "batch", "ray-task", "ray-actor-start",
)
ENV = "SIMX_FAILPOINTS"
LEGACY = ("SIMX_TEST_CRASH", "SIMX_TEST_DELAY", "SIMX_TEST_RAY_DELAY", "SIMX_TEST_RAY_PID_DIR")
_ACTION = re.compile(r"^(kill|sleep|pidfile)(?:\((.*)\))?$")


class FailpointError(ValueError):
    """A failpoint setting that cannot be parsed (a test's mistake: fail loudly)."""


def parse(env: Mapping[str, str]) -> dict[str, list[tuple[str, str]]]:
    """The points that ``env`` turns on: name -> [(action, argument), ...]."""
    specs: list[tuple[str, str]] = []
    for item in filter(None, (s.strip() for s in env.get(ENV, "").split(";"))):
        name, sep, action = item.partition("=")
        if not sep:
            raise FailpointError(f"{ENV}: {item!r} is not name=action")
        specs.append((name.strip(), action.strip()))
    if env.get("SIMX_TEST_CRASH"):
        point, _, n = env["SIMX_TEST_CRASH"].partition(":")
        specs.append((point, f"kill({n or 1})"))
    if float(env.get("SIMX_TEST_DELAY", "0") or 0):
        specs.append(("batch", f"sleep({env['SIMX_TEST_DELAY']})"))
    if float(env.get("SIMX_TEST_RAY_DELAY", "0") or 0):
        specs.append(("ray-task", f"sleep({env['SIMX_TEST_RAY_DELAY']})"))
    if env.get("SIMX_TEST_RAY_PID_DIR"):
        specs.append(("ray-actor-start", f"pidfile({env['SIMX_TEST_RAY_PID_DIR']})"))
    out: dict[str, list[tuple[str, str]]] = {}
    for name, action in specs:
        if name not in POINTS:
            raise FailpointError(f"unknown failpoint {name!r}; the points are: {', '.join(POINTS)}")
        m = _ACTION.match(action)
        if not m:
            raise FailpointError(f"failpoint {name}: unknown action {action!r} (kill(N), sleep(S), pidfile(DIR))")
        out.setdefault(name, []).append((m.group(1), m.group(2) or ""))
    return out


_ACTIVE: dict[str, list[tuple[str, str]]] = parse(os.environ)
_hits: dict[str, int] = {}


def hit(name: str, payload: Callable[[], str] | None = None) -> None:
    """Mark failpoint ``name``; does nothing unless a test turned it on."""
    if not _ACTIVE:
        return
    for action, arg in _ACTIVE.get(name, ()):
        if action == "kill":
            _hits[name] = _hits.get(name, 0) + 1
            if _hits[name] >= int(arg or 1):
                os.kill(os.getpid(), signal.SIGKILL)
        elif action == "sleep":
            time.sleep(float(arg))
        elif action == "pidfile":
            Path(arg, str(os.getpid())).write_text(payload() if payload else "")


def enable(env: Mapping[str, str]) -> None:
    """Turn on the points ``env`` names (in-process tests); ``enable({})`` turns all off."""
    _ACTIVE.clear()
    _ACTIVE.update(parse(env))
    _hits.clear()


def forward_env() -> dict[str, str]:
    """The failpoint variables set now, to hand to worker processes (Ray's runtime_env)."""
    return {k: v for k, v in os.environ.items() if k == ENV or k in LEGACY}
