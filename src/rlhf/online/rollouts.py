"""Asynchronous rollouts: sampling the next rollouts while the trainer trains on this one.

An engine whose workers sample beside the trainer (:class:`AsyncEngine`:
``rlhf.distributed.rollout.RemoteEngine``) takes a rollout with ``submit`` and returns it with
``result``. :class:`RolloutQueue` keeps up to ``max_staleness`` rollouts in flight ahead of the
one being trained (one-step off-policy for 1, as in Noukhovitch et al. 2024, "Asynchronous
RLHF"): rollout ``i + s`` is submitted, with the weights of that moment, when rollout ``i`` is
taken, so it was sampled by a policy ``s`` updates older than the one that trains on it. That
lag is logged per rollout (``rollout_staleness``) and is what ``mismatch.correction`` corrects:
the trainer recomputes the old log-probs with its current weights and the engine's sampling
log-probs ride along (``RolloutBatch.engine_logps``).

Exact resume: a checkpoint (at an iteration boundary) waits for the rollouts in flight and
keeps them, so a resumed run trains on the very rollouts the uninterrupted run would have
(they were sampled with older weights than the checkpoint holds, which cannot be sampled
again).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

from rlhf.data.records import Text
from rlhf.rollout.types import RolloutBatch, SamplingParams

# iteration -> the prompts and sampling of that rollout
Request = Callable[[int], tuple[Sequence[Text], SamplingParams]]


class AsyncEngine(Protocol):
    """An engine that samples beside the caller. ``submit`` returns at once (the rollout is
    sampled with the weights as they are then); ``collect`` waits for the samples, in this
    process alone (with several training ranks, the first gets them, the others None);
    ``finish`` turns them into the rollout every rank trains on (with several ranks: a
    collective, as the trainer's log-probs of it are)."""

    def submit(self, prompts: Sequence[Text], params: SamplingParams) -> Any: ...

    def collect(self, handle: Any) -> RolloutBatch | None: ...

    def finish(self, batch: RolloutBatch | None, params: SamplingParams) -> RolloutBatch: ...


def is_async(engine: object) -> TypeGuard[AsyncEngine]:
    """Whether ``engine`` can sample in the background (:class:`AsyncEngine`)."""
    return all(callable(getattr(engine, name, None)) for name in ("submit", "collect", "finish"))


@dataclass
class _Rollout:
    submitted: int  # the iteration whose take() submitted it: sampled by the policy after
    # submitted − 1 updates
    handle: Any = None  # the engine's, while in flight
    collected: bool = False  # its samples are in ``batch`` (collected or from a checkpoint)
    batch: RolloutBatch | None = None  # as sampled (not yet finished)


@dataclass
class Taken:
    """A rollout as the trainer gets it."""

    batch: RolloutBatch
    staleness: int  # policy updates (rollout iterations) between its weights and the trainer's
    wait_seconds: float  # how long the trainer waited for it

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "rollout_staleness": float(self.staleness),
            "rollout_wait_seconds": self.wait_seconds,
        }


class RolloutQueue:
    """Rollouts ``1 … last`` of an online run, each sampled up to ``max_staleness`` policy
    updates ahead of its training (0: synchronous). Stateful: a part of the experience
    buffer's checkpoint state."""

    def __init__(
        self, engine: AsyncEngine, request: Request, *, max_staleness: int, last: int
    ) -> None:
        if max_staleness < 0:
            raise ValueError(f"distributed.max_staleness must be >= 0, got {max_staleness}")
        self.engine, self.request = engine, request
        self.max_staleness, self.last = max_staleness, last
        self._rollouts: dict[int, _Rollout] = {}  # iteration -> in flight or returned

    def take(self, iteration: int) -> Taken:
        """Rollout ``iteration``, after submitting those up to ``iteration + max_staleness``
        that are not yet (with the current weights)."""
        stale = [i for i in self._rollouts if i < iteration]
        if stale:
            raise ValueError(
                f"rollout {iteration} taken while rollout {stale[0]} was never trained on"
            )
        for ahead in range(iteration, min(iteration + self.max_staleness, self.last) + 1):
            if ahead not in self._rollouts:
                prompts, params = self.request(ahead)
                self._rollouts[ahead] = _Rollout(iteration, self.engine.submit(prompts, params))
        started = time.perf_counter()
        rollout = self._collected(self._rollouts.pop(iteration))
        # the trainer's log-probs of it are taken now, with the weights that train on it
        batch = self.engine.finish(rollout.batch, self.request(iteration)[1])
        return Taken(batch, iteration - rollout.submitted, time.perf_counter() - started)

    def _collected(self, rollout: _Rollout) -> _Rollout:
        if not rollout.collected:
            rollout.batch, rollout.handle = self.engine.collect(rollout.handle), None
            rollout.collected = True
        return rollout

    def state_dict(self) -> dict[str, Any]:
        """The rollouts sampled ahead, waited for: in this process alone (the trainer's first
        rank checkpoints the loader's state; the others have no samples, and no state here)."""
        rollouts = [(i, self._collected(r)) for i, r in sorted(self._rollouts.items())]
        return {
            "rollouts": [
                {"iteration": i, "submitted": r.submitted, "batch": r.batch.to_state()}
                for i, r in rollouts
                if r.batch is not None
            ]
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._rollouts = {
            int(saved["iteration"]): _Rollout(
                int(saved["submitted"]),
                collected=True,
                batch=RolloutBatch.from_state(saved["batch"]),
            )
            for saved in state["rollouts"]
        }
