"""Run a recipe over Ray: one placement group, rollout workers, and training ranks that each
run the recipe's own function as one rank of a ``torch.distributed`` group.

The driver (the ``rlhf`` command) holds no model. It joins or starts a Ray cluster, reserves
one bundle per worker (``distributed.placement``), starts the rollout workers
(:class:`rlhf.distributed.rollout.RolloutWorker`) and the training ranks (:class:`TrainRank`),
then waits. The first failure stops the run: the other workers are killed (a rank left
waiting in a collective would otherwise wait for ever) and one message names the role that
failed and why (its exception, an out-of-memory, or its process dying). ``--resume`` then
continues from the last checkpoint, on any number of training ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rlhf.distributed.config import DistributedConfig

# a recipe's config (rlhf.recipes.common.RecipeConfig) and result (RunResult): named, not
# imported, since recipes sit above this layer
RecipeConfig = Any
RunResult = Any

logger = logging.getLogger("rlhf")

INSTALL_HINT = "distributed runs need Ray: pip install 'rlhf[distributed]'"
# how long a rank waits in a collective for a peer that stopped answering (a hung NCCL/gloo
# call): long enough for a slow checkpoint, short enough that a wedged run ends
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
# how long the other ranks may take to report their own exception after one rank died
GRACE_S = 5.0


class WorkerFailed(RuntimeError):
    """A worker of a distributed run failed or died; the message names its role."""


class RankFailed(RuntimeError):
    """A training rank's exception, as text (picklable whatever the original class).
    ``peer_lost``: a collective failed because another rank left it (that rank's failure is
    the cause to report)."""

    def __init__(self, message: str, *, out_of_memory: bool, peer_lost: bool = False) -> None:
        super().__init__(message)
        self.message, self.out_of_memory, self.peer_lost = message, out_of_memory, peer_lost

    def __reduce__(self) -> tuple[Any, ...]:
        return _rank_failed, (self.message, self.out_of_memory, self.peer_lost)

    def __str__(self) -> str:
        return self.message


def import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return ray


# ------------------------------------------------------------------------------ workers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


@dataclass
class RankInfo:
    """Where a training rank runs (for the rendezvous and the run's log)."""

    rank: int
    pid: int
    node_ip: str
    node_id: str


class TrainRank:
    """One training rank (a Ray actor): sets up its torch.distributed group and runs the
    recipe's function, which finds the group and shards its model (``rlhf.models.parallel``)."""

    def __init__(self, rank: int, world: int, threads: int) -> None:
        import torch

        self.rank, self.world = rank, world
        torch.set_num_threads(threads)

    def info(self) -> RankInfo:
        ray = import_ray()
        context = ray.get_runtime_context()
        return RankInfo(
            self.rank, os.getpid(), ray.util.get_node_ip_address(), context.get_node_id()
        )

    def rendezvous_port(self) -> int:
        return free_port()

    def run(
        self,
        module: str,
        function: str,
        config: dict[str, Any],
        resume: bool,
        *,
        master: tuple[str, int],
        backend: str,
        cwd: str,
        rollout_workers: list[Any],
        reward_workers: list[Any],
        reference_workers: list[Any],
    ) -> RunResult:
        import torch

        if os.path.isdir(cwd):  # the driver's folder: relative paths in the config mean the same
            os.chdir(cwd)
        _log_like_the_driver(self.rank)
        # the online recipe's engine samples on the rollout workers, its reward scores on the
        # reward workers and π_ref's log-probs come from the reference workers
        from rlhf.distributed.workers import set_role_workers

        set_role_workers("rollout", rollout_workers)
        set_role_workers("reward", reward_workers)
        set_role_workers("reference", reference_workers)
        recipe = importlib.import_module(module)
        run = getattr(recipe, function)
        parsed = _config_class(recipe, run).model_validate(config)
        if self.world > 1:
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = master[0], str(master[1])
            if backend == "nccl":
                torch.cuda.set_device(0)  # Ray shows each rank its own GPU as device 0
            torch.distributed.init_process_group(
                backend, rank=self.rank, world_size=self.world, timeout=COLLECTIVE_TIMEOUT
            )
        try:
            return run(parsed, resume)
        except Exception as error:
            # the traceback stays in this worker's log (Ray shows it on the driver's console)
            logger.error("rank %d stopped", self.rank, exc_info=True)
            # the driver gets the message, whatever the exception's class (not every
            # library's exceptions survive pickling back to it)
            raise RankFailed(
                f"{type(error).__name__}: {error}",
                out_of_memory=_is_oom(error),
                peer_lost=_is_peer_lost(error),
            ) from None
        finally:
            if self.world > 1 and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


def _config_class(module: Any, run: Any) -> Any:
    """The config class of a recipe's run function (its first parameter's annotation)."""
    import inspect
    import typing

    hints = typing.get_type_hints(run, vars(module))
    first = next(iter(inspect.signature(run).parameters))
    return hints[first]


def _log_like_the_driver(rank: int) -> None:
    """The rlhf logger at INFO on rank 0 (warnings only on the others, which repeat it)."""
    level = logging.INFO if rank == 0 else logging.WARNING
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(levelname)s %(message)s"))
    root = logging.getLogger("rlhf")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# ------------------------------------------------------------------------------ the driver


@contextlib.contextmanager
def ray_cluster(settings: DistributedConfig) -> Iterator[Any]:
    """Ray connected for the run: the cluster at ``settings.address``, or a private local one
    sized for the run's workers (shut down after)."""
    ray = import_ray()
    if ray.is_initialized():  # a caller (a test, a notebook) already connected
        yield ray
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    # inside a Ray job (ray job submit, a KubeRay RayJob) Ray names its cluster in RAY_ADDRESS
    address = settings.address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        needed = settings.workers * settings.cpus_per_worker
        cores = os.cpu_count() or 1
        if needed > cores:
            logger.warning(
                "distributed: %d workers × %d cores = %d cores on a machine with %d; they will "
                "share cores and run slower than their count suggests",
                settings.workers, settings.cpus_per_worker, needed, cores,
            )  # fmt: skip
        options["num_cpus"] = max(needed, cores)
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except ConnectionError as error:
        raise WorkerFailed(
            f"distributed.address={address}: cannot join the Ray cluster ({error}); "
            "start it with `ray start --head` or give the head's HOST:PORT"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _placement_group(ray: Any, settings: DistributedConfig) -> Any:
    from ray.util.placement_group import placement_group

    bundle: dict[str, float] = {"CPU": float(settings.cpus_per_worker)}
    if settings.gpus_per_worker:
        bundle["GPU"] = settings.gpus_per_worker
    group = placement_group([dict(bundle) for _ in range(settings.workers)],
                            strategy=settings.placement.upper())  # fmt: skip
    try:
        ray.get(group.ready(), timeout=settings.start_timeout_s)
    except ray.exceptions.GetTimeoutError:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(group)
        raise WorkerFailed(
            f"distributed: Ray could not place {settings.workers} workers of {bundle} each "
            f"(placement={settings.placement}) within {settings.start_timeout_s:.0f} s; the "
            f"cluster has {ray.available_resources()} free. Lower distributed.train_workers, "
            "rollout_workers or cpus_per_worker, or add nodes"
        ) from None
    return group


def _backend(settings: DistributedConfig) -> str:
    if settings.backend != "auto":
        return settings.backend
    return "nccl" if settings.gpus_per_worker > 0 else "gloo"


def describe_failure(role: str, error: BaseException) -> str:
    """One line naming the role and what happened to it."""
    ray = import_ray()
    exceptions = ray.exceptions
    if isinstance(error, exceptions.OutOfMemoryError):
        return f"{role} ran out of memory (Ray's memory monitor stopped it): {error}"
    if isinstance(error, exceptions.RayTaskError):
        cause = error.cause
        if _is_oom(cause) or getattr(cause, "out_of_memory", False):
            return f"{role} ran out of memory: {cause}"
        if isinstance(cause, RankFailed):
            text = cause.message
        else:
            text = f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
        return f"{role} failed: {text}"
    if isinstance(error, exceptions.RayActorError):
        return (
            f"{role} died (its process was killed or crashed: a SIGKILL, the kernel's "
            f"out-of-memory killer, a segfault); {_first_line(error)}"
        )
    return f"{role} failed: {type(error).__name__}: {error}"


def _rank_failed(message: str, out_of_memory: bool, peer_lost: bool) -> RankFailed:
    return RankFailed(message, out_of_memory=out_of_memory, peer_lost=peer_lost)


# what gloo and NCCL say when the other end of a collective went away
PEER_LOST = (
    "Connection reset by peer",
    "Connection closed by peer",
    "NCCL communicator was aborted",
)


def _is_peer_lost(error: BaseException) -> bool:
    return any(sign in str(error) for sign in PEER_LOST)


def _is_oom(error: BaseException | None) -> bool:
    import torch

    return isinstance(error, (MemoryError, torch.OutOfMemoryError))


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def launch(module: str, function: str, config: RecipeConfig, resume: bool) -> RunResult:
    """Run ``module.function(config, resume)`` (a recipe's run function) on the workers
    ``config.distributed`` asks for; rank 0's result is the run's."""
    settings = config.distributed
    with ray_cluster(settings) as ray:
        from ray.util.placement_group import remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = _placement_group(ray, settings)
        actors: list[Any] = []
        rollout: list[Any] = []
        rewarding: list[Any] = []
        referencing: list[Any] = []
        try:
            run_id = uuid.uuid4().hex[:8]  # actors' names: rlhf-<run>-train-<rank>, ...

            def placed(index: int, name: str) -> dict[str, Any]:
                return {
                    "name": f"rlhf-{run_id}-{name}",
                    "num_cpus": settings.cpus_per_worker,
                    "num_gpus": settings.gpus_per_worker,
                    "scheduling_strategy": PlacementGroupSchedulingStrategy(group, index),
                    "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(settings.cpus_per_worker)}},
                }

            ranks = [
                ray.remote(TrainRank)
                .options(**placed(rank, f"train-{rank}"))
                .remote(rank, settings.train_workers, settings.cpus_per_worker)
                for rank in range(settings.train_workers)
            ]
            threads = settings.cpus_per_worker
            rollout = started(
                ray, placed, "rollout", settings.rollout_workers, first=len(ranks), threads=threads
            )
            rewarding = started(
                ray,
                placed,
                "reward",
                settings.reward_workers,
                first=len(ranks) + len(rollout),
                threads=threads,
            )
            referencing = started(
                ray,
                placed,
                "reference",
                settings.reference_workers,
                first=len(ranks) + len(rollout) + len(rewarding),
                threads=threads,
            )
            actors = ranks + rollout + rewarding + referencing
            infos = _wait(ray, [rank.info.remote() for rank in ranks])
            for info in infos:
                logger.info(
                    "training rank %d: pid %d on node %s (%s)",
                    info.rank, info.pid, info.node_ip, info.node_id[:12],
                )  # fmt: skip
            roles = (("rollout", rollout), ("reward", rewarding), ("reference", referencing))
            for role, workers in roles:
                for index, at in enumerate(ray.get([w.info.remote() for w in workers])):
                    logger.info(
                        "%s worker %d: pid %d on node %s (%s)",
                        role, index, at["pid"], at["node_ip"], at["node_id"][:12],
                    )  # fmt: skip
            port = ray.get(ranks[0].rendezvous_port.remote())
            calls = [
                rank.run.remote(
                    module,
                    function,
                    config.model_dump(mode="json"),
                    resume,
                    master=(infos[0].node_ip, port),
                    backend=_backend(settings),
                    cwd=os.getcwd(),
                    rollout_workers=rollout,
                    reward_workers=rewarding,
                    reference_workers=referencing,
                )
                for rank in ranks
            ]
            results = _wait(ray, calls)
            return results[0]
        finally:
            # a rollout worker's engine may have a process of its own (vLLM's): closed first
            with contextlib.suppress(Exception):
                helpers = rollout + rewarding + referencing
                ray.get([worker.close.remote() for worker in helpers], timeout=30)
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            with contextlib.suppress(Exception):
                remove_placement_group(group)


def started(ray: Any, placed: Any, role: str, count: int, *, first: int, threads: int) -> list[Any]:
    """``count`` workers of ``role`` ("rollout": :class:`~rlhf.distributed.rollout.
    RolloutWorker`, "reward": :class:`~rlhf.distributed.reward.RewardWorker`, "reference":
    :class:`~rlhf.distributed.reference.ReferenceWorker`) in the placement group's bundles
    ``first`` … ``first + count - 1``."""
    if not count:
        return []
    if role == "rollout":
        from rlhf.distributed.rollout import RolloutWorker as worker_class
    elif role == "reward":
        from rlhf.distributed.reward import RewardWorker as worker_class
    else:
        from rlhf.distributed.reference import ReferenceWorker as worker_class
    return [
        ray.remote(worker_class)
        .options(**placed(first + index, f"{role}-{index}"))
        .remote(threads=threads, index=index)
        for index in range(count)
    ]


def _wait(ray: Any, calls: list[Any]) -> list[Any]:
    """The results of ``calls`` (one per training rank, in rank order); the first failure
    raises :class:`WorkerFailed` naming its role. A rollout worker's failure reaches the
    trainer at its next call to it (:class:`rlhf.distributed.rollout.RemoteEngine` names the
    worker), and so a training rank's failure here."""
    pending = {ref: rank for rank, ref in enumerate(calls)}
    results: dict[int, Any] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in done:
            rank = pending.pop(ref)
            try:
                results[rank] = ray.get(ref)
            except Exception as error:
                raise WorkerFailed(_first_cause(ray, rank, error, pending)) from None
    return [results[rank] for rank in range(len(calls))]


def _first_cause(ray: Any, rank: int, error: Exception, others: dict[Any, int]) -> str:
    """The failure to report when ``rank`` failed with ``error``. A rank that raised takes
    its peers down with it (a collective whose other end left aborts them), and its peer's
    death may reach us first: the others get a moment to report an exception of their own,
    which names the cause, before the death is reported."""
    failures = [(rank, error)]
    if others:
        done, _ = ray.wait(list(others), num_returns=len(others), timeout=GRACE_S)
        for ref in done:
            try:
                ray.get(ref)
            except Exception as other:
                failures.append((others[ref], other))

    def weight(failure: tuple[int, Exception]) -> int:
        """Its own exception first, then a death, then a collective that lost its peer."""
        error = failure[1]
        if not isinstance(error, ray.exceptions.RayTaskError):
            return 1
        return 2 if getattr(error.cause, "peer_lost", False) else 0

    rank, error = min(failures, key=weight)
    return describe_failure(f"training rank {rank}", error)
