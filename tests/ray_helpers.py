"""Ray helpers for the distributed tests."""

from __future__ import annotations

import time

import ray


def kill_and_wait(actor, timeout: float = 30.0) -> None:
    """``ray.kill(actor)``, then wait until the actor is really gone: the kill is sent
    asynchronously, and a call made before it lands may still run (a flaky test)."""
    ray.kill(actor)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return
        time.sleep(0.1)
    raise AssertionError(f"{actor} still answers {timeout} s after ray.kill")
