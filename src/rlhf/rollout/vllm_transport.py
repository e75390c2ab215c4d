"""Where the vLLM engine runs, seen from the trainer: :class:`LocalRunner` (vLLM in this
process, the ``trainer`` placement) and :class:`EngineProcess` (vLLM in an engine process of
its own, :mod:`rlhf.rollout.vllm_server`, the ``process`` placement). Both answer
``call(method, **kwargs)`` and ``load_weights(buckets)``, so :class:`rlhf.rollout.vllm.VLLMEngine`
does not care which it talks to.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

import torch

from rlhf.rollout.shared_buckets import SharedBucketWriter
from rlhf.rollout.vllm_runner import INSTALL_HINT, EngineStartError, VLLMRunner
from rlhf.rollout.vllm_server import receive, send


class EngineError(RuntimeError):
    """The engine process failed a call (the message is its error)."""


def engine_python(option: str | None) -> str:
    """The engine process's interpreter: the option, $RLHF_VLLM_PYTHON, the .venv-vllm beside
    this environment, or this Python."""
    if option:
        return option
    if os.environ.get("RLHF_VLLM_PYTHON"):
        return os.environ["RLHF_VLLM_PYTHON"]
    beside = Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
    return str(beside) if beside.exists() else sys.executable


def checked_interpreter(python: str) -> str:
    """The path of ``python`` (a path, or a name on PATH), or :class:`EngineStartError` saying
    how to get one."""
    interpreter = shutil.which(python) or python
    if not Path(interpreter).exists():
        raise EngineStartError(f"sampling.vllm.python: {python} does not exist; {INSTALL_HINT}")
    return interpreter


class LocalRunner:
    """The ``trainer`` placement: the runner in this process, called directly."""

    def __init__(self, runner: VLLMRunner) -> None:
        self.runner = runner

    def call(self, method: str, **kwargs: Any) -> Any:
        return getattr(self.runner, method)(**kwargs)

    def load_weights(
        self, buckets: Iterable[list[tuple[str, torch.Tensor]]], *, checksums: bool = True
    ) -> dict[str, tuple[int, int]]:
        return self.runner.load_weights(buckets, checksums=checksums)

    def close(self) -> None:
        self.runner = None  # type: ignore[assignment]


class EngineProcess:
    """The ``process`` placement: :mod:`rlhf.rollout.vllm_server` in a child process with
    interpreter ``python``, its output in ``log`` (named in every error).

    The conversation is strictly one call, one reply. A call interrupted on this side (an
    error while making a bucket, Ctrl-C) would leave a reply unread or a stream unfinished,
    and the next call would read the wrong answer; so any such interruption stops the engine
    process, and later calls say so. A process that dies is noticed within a second, whatever
    the call; ``start`` (vLLM loading) is bounded by ``timeout``.
    """

    def __init__(self, python: str, scratch: Path, *, timeout: float) -> None:
        interpreter = checked_interpreter(python)
        self.socket = str(scratch / "engine.sock")
        self.log = scratch / "engine.log"
        self.timeout = timeout
        self.broken: str | None = None  # why the conversation cannot go on
        self.shared = SharedBucketWriter()  # weight buckets travel through shared memory
        authkey = secrets.token_bytes(32)
        env = dict(os.environ, RLHF_VLLM_AUTHKEY=authkey.hex(), PYTHONUNBUFFERED="1")
        env.pop("OMP_NUM_THREADS", None)  # vLLM binds its own threads
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [interpreter, "-m", "rlhf.rollout.vllm_server", self.socket],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        # the process ends with this object, or with the interpreter at the latest
        self._finalizer = weakref.finalize(self, _stop_process, self.process)
        self.connection = self._connect(authkey)

    def _connect(self, authkey: bytes) -> Connection:
        deadline = time.monotonic() + self.timeout
        while True:
            if self.process.poll() is not None:
                raise EngineStartError(self._died("exited before it listened"))
            try:
                return Client(self.socket, family="AF_UNIX", authkey=authkey)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    self.close()
                    raise EngineStartError(
                        f"the vLLM engine process did not listen within {self.timeout:.0f} s "
                        f"(sampling.vllm.start_timeout_s); its log: {self.log}"
                    ) from None
                time.sleep(0.2)

    def _died(self, what: str) -> str:
        tail = self.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        if any("No module named 'rlhf'" in line for line in tail):
            return f"the vLLM engine's Python cannot import rlhf; {INSTALL_HINT}"
        return f"the vLLM engine process {what}; last lines of {self.log}: " + " | ".join(tail)

    def _reply(self, method: str, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.connection.poll(1.0):
            if self.process.poll() is not None:
                raise EngineError(self._died(f"ended during {method}"))
            if deadline is not None and time.monotonic() > deadline:
                raise EngineStartError(
                    f"the vLLM engine did not answer {method} within {timeout:.0f} s "
                    f"(sampling.vllm.start_timeout_s); its log: {self.log}"
                )
        try:
            reply = receive(self.connection)
        except EOFError:
            raise EngineError(self._died(f"ended during {method}")) from None
        if reply[0] in ("ok", "ack"):  # an answer, or a bucket acknowledged
            return reply[1]
        _, kind, message = reply
        if kind == "EngineStartError":
            raise EngineStartError(message)
        raise EngineError(f"the vLLM engine failed in {method}: {kind}: {message} ({self.log})")

    def _conversation(self, method: str, exchange: Callable[[], Any]) -> Any:
        if self.broken:
            raise EngineError(f"the vLLM engine process was stopped: {self.broken}")
        try:
            return exchange()
        except (EngineError, EngineStartError) as error:  # answered in order, or dead
            if self.process.poll() is not None or isinstance(error, EngineStartError):
                self._stop(f"{method} failed")
            raise
        except BaseException:
            self._stop(f"{method} was interrupted before its reply was read")
            raise

    def call(self, method: str, **kwargs: Any) -> Any:
        def exchange() -> Any:
            send(self.connection, (method, kwargs))
            return self._reply(method, self.timeout if method == "start" else None)

        return self._conversation(method, exchange)

    def load_weights(
        self, buckets: Iterable[list[tuple[str, torch.Tensor]]], *, checksums: bool = True
    ) -> dict[str, tuple[int, int]]:
        def exchange() -> Any:
            send(self.connection, ("load_weights", {"checksums": checksums}))
            for bucket in buckets:  # made one at a time: at most one bucket in memory here
                send(self.connection, self.shared.write(bucket))
                self._reply("load_weights", None)  # copied out: the memory is free again
            send(self.connection, None)
            return self._reply("load_weights", None)

        return self._conversation("load_weights", exchange)

    def _stop(self, why: str) -> None:
        self.broken = why
        self.close()

    def close(self) -> None:
        self._close_connection()
        self._finalizer()
        self.shared.close()

    def _close_connection(self) -> None:
        connection = getattr(self, "connection", None)
        if connection is not None:
            connection.close()
            self.connection = None  # type: ignore[assignment]


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
