"""Which samples each DDP rank takes, and the seeds of every seeded choice in the data package.

Training shards come from torch's ``DistributedSampler`` (shuffled with ``seed + epoch``, the
remainder dropped, so every rank gets as many batches); evaluation shards from
:class:`ShardSampler` (each sample once over all ranks, in order). Seeds derived with
``sd_tune.seeds.seed_from`` give each (seed, epoch, rank) its own random stream.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler, Sampler

# Seed stream tags: every seeded choice draws from its own stream of ``split_seed``.
TAG_VAL, TAG_TRAIN_SUBSET, TAG_VAL_SUBSET, TAG_TEST_SUBSET, TAG_SYNTHETIC = range(5)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` below ``n``: the shards cover each index once.

    >>> [list(ShardSampler(7, rank, 3)) for rank in range(3)]
    [[0, 3, 6], [1, 4], [2, 5]]
    """

    def __init__(self, n: int, rank: int, world_size: int):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        """No-op: the order is fixed."""


def rank_sampler(
    dataset: Sized, *, train: bool, rank: int, world_size: int, seed: int
) -> DistributedSampler | ShardSampler:
    """The sampler of one rank: for training a ``DistributedSampler`` (shuffled with
    ``seed + epoch`` once ``set_epoch`` is called, remainder dropped), for evaluation a
    :class:`ShardSampler`.

    >>> sampler = rank_sampler(range(10), train=True, rank=1, world_size=4, seed=0)
    >>> len(sampler), len(rank_sampler(range(10), train=False, rank=1, world_size=4, seed=0))
    (2, 3)
    """
    if train:
        return DistributedSampler(
            dataset,  # type: ignore[arg-type]
            num_replicas=world_size,
            rank=rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
    return ShardSampler(len(dataset), rank, world_size)
