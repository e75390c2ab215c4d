"""A run across two Ray nodes: a head and a second node started with `ray start` on this
machine (their own raylets, object stores and CPUs, as on two hosts), joined by the `rlhf`
command through ``distributed.address``, with ``placement=strict_spread`` so the training
rank and the rollout worker must land on different nodes.

The nodes are torn down by signalling the `ray start --block` processes this test started
(and killing what is left of their processes by pid), never with `ray stop`, which would
also stop every other Ray cluster on the machine (another test's, another user's).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip(
    "ray", reason="the two-node test starts Ray nodes: pip install 'rlhf[distributed]'"
)

from safetensors.torch import load_file

ITERATIONS = 3  # rollouts: two optimiser steps each with the tiny preset's minibatch
# a node that has not joined within this long is a broken setup, not a slow machine
NODE_START_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def ray_executable() -> str:
    """The `ray` command of the environment running the tests (not whatever is on PATH)."""
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        pytest.fail(
            f"Ray is importable but its `ray` command is neither beside {sys.executable} nor on PATH"
        )
    return found


@dataclass
class TwoNodes:
    address: str  # HOST:PORT of the head's GCS
    env: dict[str, str]  # what a process needs to join (the auth token)


def _start_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    # its own session, so a Ctrl-C of pytest does not reach it before the teardown does
    with log.open("w") as sink:
        return subprocess.Popen(
            [ray_executable(), "start", "--block", *args],
            stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip


def _wait_until_started(process: subprocess.Popen, log: Path, what: str) -> None:
    """`ray start --block` prints this line once its node runs (for a second node: once its
    raylet has registered with the head)."""
    deadline = time.monotonic() + NODE_START_S
    while "block forever" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            state = (
                f"exited with {process.returncode}"
                if process.poll() is not None
                else "still starting"
            )
            pytest.fail(
                f"{what} did not start ({state}); its log:\n{log.read_text(errors='replace')[-4000:]}"
            )
        time.sleep(0.2)


def _processes_under(folder: Path) -> list[int]:
    """Pids of processes whose command line names ``folder`` (every Ray process of a node
    names its temp dir: raylet, GCS, agents, workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if str(folder).encode() in command:
            pids.append(int(entry.name))
    return pids


def _stop(processes: list[subprocess.Popen], temp: Path) -> None:
    # SIGTERM: `ray start --block` drains its node and stops the processes it started
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # anything a node left behind (a worker that outlived its raylet), by pid
    deadline = time.monotonic() + 10
    while (
        left := [pid for pid in _processes_under(temp) if pid != os.getpid()]
    ) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def two_nodes() -> Iterator[TwoNodes]:
    # under /tmp, not pytest's tmp_path: Ray's unix sockets live in the temp dir, and a socket
    # path may not exceed 107 bytes (tmp_path plus Ray's session folder would)
    temp = Path(tempfile.mkdtemp(prefix="rlhf-ray-", dir="/tmp"))
    # Ray 2.60 turns token authentication on by itself when it finds ~/.ray/auth_token (a local
    # ray.init writes one): one token, given to every process of this cluster by environment,
    # makes the nodes and the driver agree whatever that file holds, and writes none
    env = os.environ | {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "OMP_NUM_THREADS": "1",
    }
    port = free_port()
    # 127.0.0.1 (Ray resolves it to the machine's own address, the same for both nodes: they
    # are told apart by node id); one CPU per node, so each holds exactly one worker; a small
    # object store (the default takes 30% of RAM per node); every other port picked free, so
    # the nodes collide neither with each other nor with another cluster on the machine (the
    # dashboard agent's and Ray Client's ports have fixed defaults)
    common = [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--num-gpus=0",
        "--object-store-memory=200000000",
        "--disable-usage-stats",
        "--dashboard-agent-listen-port=0",
    ]
    processes: list[subprocess.Popen] = []
    try:
        # each node its own temp dir: nodes sharing one also share a log folder, and each
        # node's log monitor then forwards every worker's lines to the driver, twice
        (temp / "head").mkdir()
        (temp / "node").mkdir()
        head_log, node_log = temp / "head.log", temp / "node.log"
        processes.append(
            _start_node(
                ["--head", f"--port={port}", "--include-dashboard=false",
                 f"--ray-client-server-port={free_port()}", f"--temp-dir={temp / 'head'}", *common],
                head_log, env,
            )
        )  # fmt: skip
        _wait_until_started(processes[0], head_log, "the Ray head")
        address = f"127.0.0.1:{port}"
        processes.append(
            _start_node(
                [f"--address={address}", f"--temp-dir={temp / 'node'}", *common], node_log, env
            )
        )
        _wait_until_started(processes[1], node_log, "the second Ray node")
        yield TwoNodes(address, env)
    finally:
        _stop(processes, temp)


WHERE = re.compile(r"(training rank 0|rollout worker 0): pid \d+ on node \S+ \(([0-9a-f]{12})\)")


@pytest.mark.slow
def test_grpo_across_two_nodes(two_nodes, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "rlhf.cli", "grpo", "--preset", "tiny", f"out={out}"]
    command += [
        "progress=false",
        "tensorboard=false",
        "init_sft.train.max_steps=10",  # a starting policy, not a good one: this tests placement
        f"rollout.iterations={ITERATIONS}",
        "eval.prompts=8",
        f"distributed.address={two_nodes.address}",
        "distributed.rollout_workers=1",
        "distributed.max_staleness=1",  # rollouts sampled on the other node while this one trains
        "mismatch.correction=truncated_is",
        "distributed.placement=strict_spread",
        "distributed.start_timeout_s=60",
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=two_nodes.env, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    print(f"two-node GRPO: {time.monotonic() - started:.1f} s")

    # the driver's own lines (once each): where each worker was placed
    nodes = dict(WHERE.findall(output))
    assert set(nodes) == {"training rank 0", "rollout worker 0"}, output
    assert nodes["training rank 0"] != nodes["rollout worker 0"], output
    # and the trainer really sampled on that worker, on that node
    assert re.search(
        rf"rollout worker 0: hf engine on \{{'node': '{nodes['rollout worker 0']}", output
    ), output

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [row for row in rows if row["split"] == "train"]
    # one row per rollout; the first was sampled by the very weights that train on it
    staleness = [row["rollout_staleness"] for row in train if "rollout_staleness" in row]
    assert staleness == [0] + [1] * (ITERATIONS - 1), staleness

    # the exported policy: the starting policy trained by the GRPO steps
    policy = load_file(out / "model" / "model.safetensors")
    start = load_file(out / "init-sft" / "model" / "model.safetensors")
    assert policy.keys() == start.keys()
    assert any(not policy[name].equal(start[name]) for name in policy)
