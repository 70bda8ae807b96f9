"""Run one test case in a forked child process, so that a crash (SIGSEGV, SIGABRT, SIGILL...), a hang
or a runaway allocation fails that case instead of killing the whole pytest run.

Invariants: the child runs with one torch thread (fastq's parallel_for then never opens an OpenMP
region, which is not fork-safe after the parent used one), reports back through a pipe as JSON
(the exception's type name and message, or the case's return value), and always leaves with
``os._exit`` (no atexit handlers, no pytest teardown in the child). The parent kills a child that
outlives ``timeout`` seconds: a hang guard, not a speed assertion. Imported by bare name.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest

HANG_TIMEOUT_S = 120.0  # far above any case's run time on a loaded 2-core machine

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="crash isolation forks a child process")


@dataclass
class Outcome:
    """What happened to a case in its child process."""

    status: str  # "ok", "raised", "signal", "timeout" or "exit"
    error: str = ""  # exception type name (raised) or signal name (signal)
    message: str = ""
    value: Any = None  # the case's JSON-serialisable return value (ok)
    rss_growth_mb: float = 0.0  # peak RSS of the child above its RSS at the start of the case

    def describe(self) -> str:
        return f"{self.status} {self.error}: {self.message[:500]}"


def run_isolated(fn: Callable[..., Any], *args, timeout: float = HANG_TIMEOUT_S) -> Outcome:
    """``fn(*args)`` in a forked child; its outcome (never raises for what the child did)."""
    import torch._dynamo  # noqa: F401 - imported once here, not in every child: torch.library ops import
    # it lazily on their first call, which costs seconds

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        payload: dict
        try:
            import torch

            torch.set_num_threads(1)
            start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                value = fn(*args)
                payload = {"status": "ok", "value": value if _jsonable(value) else repr(value)[:2000]}
            except BaseException as exc:  # noqa: BLE001 - report every exception type to the parent
                payload = {"status": "raised", "error": type(exc).__name__, "message": str(exc)[:4000]}
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            payload["rss_growth_mb"] = max(0, peak - start) / 1024.0
            data = json.dumps(payload).encode()[:60000]
            os.write(w, data)
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    chunks = []
    status = None
    while True:
        ready, _, _ = select.select([r], [], [], 0.05)
        if ready:
            chunk = os.read(r, 65536)
            if chunk:
                chunks.append(chunk)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return Outcome("timeout", message=f"no result after {timeout:.0f} s (killed)")
    while True:  # whatever is still in the pipe
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return Outcome("signal", error=signal.Signals(sig).name, message=f"child killed by signal {sig}")
    if not chunks:
        return Outcome("exit", message=f"child exited with status {os.WEXITSTATUS(status)} and no report")
    payload = json.loads(b"".join(chunks))
    return Outcome(payload["status"], payload.get("error", ""), payload.get("message", ""), payload.get("value"),
                   payload.get("rss_growth_mb", 0.0))


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def expect_error(outcome: Outcome, error: str | tuple, match: Optional[str] = None) -> None:
    """The case must have raised ``error`` (a type name or several) whose message contains ``match``."""
    errors = (error,) if isinstance(error, str) else error
    assert outcome.status == "raised" and outcome.error in errors, \
        f"expected {' or '.join(errors)}, got {outcome.describe()}"
    if match is not None:
        assert match in outcome.message, f"{outcome.error} message lacks {match!r}: {outcome.message[:500]}"


def expect_no_crash(outcome: Outcome, allowed: tuple = ("LoadError", "ValueError", "TypeError")) -> None:
    """The case finished (normally or with one of the ``allowed`` clear exceptions): no signal, no
    hang, no other exception type."""
    assert outcome.status == "ok" or (outcome.status == "raised" and outcome.error in allowed), outcome.describe()
