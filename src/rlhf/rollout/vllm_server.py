"""The engine process of the vLLM engine's ``process`` placement.

``python -m rlhf.rollout.vllm_server SOCKET`` (started by :class:`rlhf.rollout.vllm.EngineProcess`,
usually with the interpreter of a separate environment that has vLLM) listens on the Unix
socket ``SOCKET`` for the one trainer that started it (authenticated with the key in
``RLHF_VLLM_AUTHKEY``), starts a :class:`~rlhf.rollout.vllm_runner.VLLMRunner` when asked and
then answers calls until the trainer hangs up.

Messages are pickled tuples over a ``multiprocessing.connection`` (by :func:`send` and
:func:`receive`: plain pickle, so a tensor travels as its bytes rather than as a shared-memory
handle of torch's multiprocessing pickler): a call is
``(method, kwargs)``; ``("load_weights", {"checksums": bool})`` is followed by bucket messages, each the layout
of a bucket the trainer wrote into shared memory (:mod:`rlhf.rollout.shared_buckets`),
acknowledged with ``("ack", None)`` once copied out, and an end marker (None); the buckets
stream into vLLM's in-place reload one bucket at a
time (so at most one bucket is in flight). Every reply is ``("ok", value)`` or
``("error", type name, message)``.

On CPU, vLLM binds its OpenMP threads to cores and needs PyTorch's libgomp preloaded to use
more than one (it sets ``LD_PRELOAD`` for the processes it spawns; here the engine core runs in
this process), so the server re-executes itself once with it preloaded.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pickle
import sys
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from rlhf.rollout.shared_buckets import SharedBucketReader

AUTHKEY_VARIABLE = "RLHF_VLLM_AUTHKEY"
_REEXECUTED = "RLHF_VLLM_SERVER_PRELOADED"


def _preload_libgomp() -> None:
    """Re-execute with torch's libgomp in LD_PRELOAD (once; not found: carry on)."""
    preload = os.environ.get("LD_PRELOAD", "")
    if os.environ.get(_REEXECUTED) or any(lib in preload for lib in ("libgomp", "libiomp")):
        return
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return
    package = Path(spec.origin).parent
    found = [
        path
        for folder in (package.parent / "torch.libs", package / "lib")
        for path in sorted(glob.glob(str(folder / "libgomp*.so*")))
    ]
    if not found:
        return
    os.environ["LD_PRELOAD"] = ":".join(filter(None, [preload, found[0]]))
    os.environ[_REEXECUTED] = "1"
    os.execv(sys.executable, [sys.executable, "-m", "rlhf.rollout.vllm_server", *sys.argv[1:]])


def send(connection: Connection, message: Any) -> None:
    connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(connection: Connection) -> Any:
    return pickle.loads(connection.recv_bytes())


def _load_streamed(
    runner: Any, connection: Connection, checksums: bool, reader: SharedBucketReader
) -> Any:
    """Load the buckets that follow until the end marker (None), each described in shared
    memory and acknowledged once copied out (the trainer then reuses that memory); on an
    error, read (and acknowledge) the rest of the stream first, so the next message read is a
    call again."""
    ended = False

    def buckets() -> Any:
        nonlocal ended
        while (message := receive(connection)) is not None:
            bucket = reader.read(message)
            send(connection, ("ack", None))
            yield bucket
        ended = True

    try:
        return runner.load_weights(buckets(), checksums=checksums)
    finally:
        while not ended:
            if receive(connection) is None:
                ended = True
            else:
                send(connection, ("ack", None))


def _serve(connection: Connection) -> None:
    from rlhf.rollout.vllm_runner import VLLMRunner

    runner: VLLMRunner | None = None
    reader = SharedBucketReader()
    while True:
        try:
            method, kwargs = receive(connection)
        except EOFError:  # the trainer is gone
            return
        try:
            result: Any = None
            if method == "start":
                runner = VLLMRunner(**kwargs)
            elif runner is None:
                raise RuntimeError(f"{method} before start")
            elif method == "load_weights":
                result = _load_streamed(runner, connection, kwargs["checksums"], reader)
            else:
                result = getattr(runner, method)(**kwargs)
            send(connection, ("ok", result))
        except Exception as error:  # reported to the trainer, which raises it there
            send(connection, ("error", type(error).__name__, str(error)))


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rlhf.rollout.vllm_server SOCKET")
    _preload_libgomp()
    authkey = bytes.fromhex(os.environ.pop(AUTHKEY_VARIABLE))  # not for vLLM's children
    with (
        Listener(sys.argv[1], family="AF_UNIX", authkey=authkey) as listener,
        listener.accept() as connection,
    ):
        _serve(connection)


if __name__ == "__main__":
    main()
