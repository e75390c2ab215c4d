"""A data loader whose position is part of the checkpoint, so resumed runs see the same batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import torch

Item = TypeVar("Item")
Batch = TypeVar("Batch")


class ResumableLoader(Generic[Item, Batch]):
    """Shuffled mini-batches over an in-memory dataset, epoch after epoch.

    The order of epoch ``e`` is a permutation drawn from ``seed + e`` alone, so the loader's
    whole state is ``(epoch, batches already taken this epoch)``: a run resumed from a
    checkpoint continues with exactly the batch it would have seen next.
    """

    def __init__(
        self,
        items: Sequence[Item],
        batch_size: int,
        collate: Callable[[list[Item]], Batch],
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        lengths: Sequence[int] | None = None,
        group_batches: int = 50,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if len(items) < (batch_size if drop_last else 1):
            raise ValueError(f"{len(items)} training examples cannot fill a batch of {batch_size}")
        if lengths is not None and len(lengths) != len(items):
            raise ValueError(f"{len(lengths)} lengths for {len(items)} items")
        self.items, self.batch_size, self.collate = items, batch_size, collate
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        # group by length: each window of `group_batches` batches of the shuffled order is
        # sorted by length, so a batch holds items of similar length and pads little
        self.lengths, self.group_batches = lengths, max(group_batches, 1)
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None
        self._rank, self._world = 0, 1

    def shard(self, rank: int, world: int) -> None:
        """Read only rank ``rank``'s share of each batch (every ``world``-th item of it) under
        data parallelism. The order and the state stay those of the whole batch, so a
        checkpoint resumes on any number of ranks."""
        if self.batch_size < world:
            raise ValueError(
                f"train.batch_size {self.batch_size} is smaller than the "
                f"{world} training ranks (distributed.train_workers): each rank needs a row"
            )
        self._rank, self._world = rank, world

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(len(self.items), self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def _epoch_order(self) -> list[int]:
        if self._order is None:
            self._order = self._order_of(self.epoch, self.seed)
        return self._order

    def _order_of(self, epoch: int, seed: int) -> list[int]:
        """The item order of ``epoch`` under ``seed``: a function of those two alone."""
        if not self.shuffle:
            return list(range(len(self.items)))
        generator = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(len(self.items), generator=generator).tolist()
        if self.lengths is not None:
            order = self._grouped_by_length(order, generator)
        return order

    def upcoming(self, batches: int, state: dict[str, Any] | None = None) -> list[list[int]]:
        """The items (positions in ``items``) of the next ``batches`` batches, in order, from
        the current position or from ``state`` (a :meth:`state_dict`), without moving: what a
        run that takes that many batches will read. The list ends early at the batch that has
        shown every item at least once (later ones read nothing new)."""
        epoch, position = (self.epoch, self.position) if state is None else (
            state["epoch"], state["position"]
        )  # fmt: skip
        seed = self.seed if state is None else state["seed"]
        order = self._order_of(epoch, seed)
        seen: set[int] = set()
        planned: list[list[int]] = []
        for _ in range(batches):
            if position >= len(self):
                epoch, position = epoch + 1, 0
                order = self._order_of(epoch, seed)
            start = position * self.batch_size
            planned.append(order[start : start + self.batch_size])
            position += 1
            seen.update(planned[-1])
            if len(seen) == len(self.items):
                break
        return planned

    def _grouped_by_length(self, order: list[int], generator: torch.Generator) -> list[int]:
        """``order`` with each window of ``group_batches`` batches sorted longest first, then
        its batches in a random order (drawn from the epoch's generator: still resumable)."""
        assert self.lengths is not None
        lengths, size = self.lengths, self.batch_size
        window = size * self.group_batches
        batches: list[list[int]] = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: -lengths[i])
            batches.extend(chunk[i : i + size] for i in range(0, len(chunk), size))
        # a short batch (the data's remainder) stays last, where drop_last drops it
        full = [batch for batch in batches if len(batch) == size]
        rest = [batch for batch in batches if len(batch) != size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return [index for batch in (*shuffled, *rest) for index in batch]

    def next_batch(self) -> Batch:
        """The next batch, rolling over to a new epoch when this one is used up."""
        if self.position >= len(self):
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        order = self._epoch_order()
        start = self.position * self.batch_size
        self.position += 1
        batch = order[start : start + self.batch_size][self._rank :: self._world]
        return self.collate([self.items[i] for i in batch])

    def __iter__(self) -> Iterator[Batch]:
        """One pass over the data in order, without touching the resumable state (evaluation)."""
        for start in range(0, len(self.items), self.batch_size):
            yield self.collate(list(self.items[start : start + self.batch_size]))

    @property
    def can_checkpoint(self) -> bool:
        """Whether a checkpoint now resumes exactly: always (the state is two numbers)."""
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
        self._order = None
