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
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if len(items) < (batch_size if drop_last else 1):
            raise ValueError(f"{len(items)} training examples cannot fill a batch of {batch_size}")
        self.items, self.batch_size, self.collate = items, batch_size, collate
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(len(self.items), self.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def _epoch_order(self) -> list[int]:
        if self._order is None:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed + self.epoch)
                self._order = torch.randperm(len(self.items), generator=generator).tolist()
            else:
                self._order = list(range(len(self.items)))
        return self._order

    def next_batch(self) -> Batch:
        """The next batch, rolling over to a new epoch when this one is used up."""
        if self.position >= len(self):
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        order = self._epoch_order()
        start = self.position * self.batch_size
        self.position += 1
        return self.collate([self.items[i] for i in order[start : start + self.batch_size]])

    def __iter__(self) -> Iterator[Batch]:
        """One pass over the data in order, without touching the resumable state (evaluation)."""
        for start in range(0, len(self.items), self.batch_size):
            yield self.collate(list(self.items[start : start + self.batch_size]))

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
        self._order = None
