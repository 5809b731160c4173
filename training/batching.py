"""Reproducible, resumable batches: the data order is a pure function of (seed, epoch, offset).

Epoch ``e`` visits the data in the order :func:`epoch_permutation` (``torch.randperm`` seeded by (seed, e)), in
global batches of consecutive indices, dropping the incomplete tail; a checkpoint stores ``(epoch, offset)``, the
samples of that permutation already consumed. Rank ``r`` of ``W`` takes rows ``r, r + W, …`` of each global batch
(:func:`rank_slice`, ``DistributedSampler``'s assignment), so a step of W ranks × B images is the step of one
process with batch W·B, and a checkpoint resumes under any world size with the same global batch.

Batches come from the cached uint8 tensor ``[N, C, H, W]`` in memory (the default) or, with ``num_workers > 0`` or
``--no-cache``, from a DataLoader whose batch sampler is the same index batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from dataset import to_model_range


def derived_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixing ``seed`` with ``keys`` (numpy's SeedSequence), for independent streams."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The visiting order of epoch ``epoch`` (0-based): a LongTensor permutation of ``range(num_samples)``."""
    generator = torch.Generator().manual_seed(derived_seed(seed, 0, epoch))
    return torch.randperm(num_samples, generator=generator)


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Full batches per epoch; a dataset smaller than one batch gives a single (smaller) batch."""
    return max(1, num_samples // batch_size)


def epoch_end_offset(num_samples: int, batch_size: int) -> int:
    """The offset at which an epoch is complete."""
    return steps_per_epoch(num_samples, batch_size) * batch_size if num_samples >= batch_size else num_samples


def epoch_index_batches(num_samples: int, batch_size: int, seed: int, epoch: int, offset: int) -> list[torch.Tensor]:
    """The index batches of epoch ``epoch`` that remain after ``offset`` samples were consumed."""
    remaining = epoch_permutation(num_samples, seed, epoch)[offset:epoch_end_offset(num_samples, batch_size)]
    batches = list(remaining.split(batch_size))
    if batches and len(batches[-1]) < min(batch_size, num_samples):  # only after a batch-size change
        batches.pop()
    return batches


def rank_slice(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s share of a global batch (of indices, or of per-image noise): rows ``rank::world_size``."""
    return batch[rank::world_size] if world_size > 1 else batch


def rank_index_batches(num_samples: int, batch_size: int, seed: int, epoch: int, offset: int, rank: int = 0,
                       world_size: int = 1) -> list[torch.Tensor]:
    """Rank ``rank``'s index batches (``batch_size`` each) of the global batches (``batch_size × world_size``)
    that remain of epoch ``epoch`` after ``offset`` samples."""
    global_batches = epoch_index_batches(num_samples, batch_size * world_size, seed, epoch, offset)
    return [rank_slice(b, rank, world_size) for b in global_batches]


class BatchSource:
    """Yields ``(x0, labels)`` batches — x0 float32 in [−1, 1], labels int64, both on ``device`` — in the order
    of :func:`rank_index_batches`. ``dataset[i]`` is ``(image float [C, H, W] in [−1, 1], label)``; ``in_memory``
    batches from its ``as_tensors() -> (uint8 [N, C, H, W], labels)``, moved to ``device`` once."""

    def __init__(self, dataset, batch_size: int, seed: int, device: torch.device, in_memory: bool,
                 num_workers: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.dataset = dataset
        self.num_samples = len(dataset)
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        if world_size > 1 and self.num_samples < self.global_batch_size:
            raise ValueError(f"the dataset has {self.num_samples} images, fewer than one global batch of "
                             f"{batch_size} per rank × {world_size} ranks = {self.global_batch_size}; lower "
                             "--batch-size or start fewer processes")
        self.images = self.labels = None
        if in_memory:
            images, labels = dataset.as_tensors()
            self.images = images.to(device)  # uint8 (N, C, H, W): ~47 MB for MNIST
            self.labels = torch.as_tensor(labels, dtype=torch.long).to(device)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_samples, self.global_batch_size)

    def __call__(self, epoch: int, offset: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of epoch ``epoch`` after ``offset`` global samples."""
        batches = rank_index_batches(self.num_samples, self.batch_size, self.seed, epoch, offset, self.rank,
                                     self.world_size)
        if self.images is not None:
            for index in batches:
                index = index.to(self.images.device)
                yield to_model_range(self.images[index]), self.labels[index]
            return
        loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in batches], num_workers=self.num_workers,
                            pin_memory=self.device.type == "cuda")
        for x0, labels in loader:
            yield x0.to(self.device, non_blocking=True), torch.as_tensor(labels).to(self.device, non_blocking=True)

    def fixed_batch(self, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` images chosen once by ``seed`` (for visualisation): float32 [count, C, H, W] and their
        int64 labels [count], on CPU."""
        generator = torch.Generator().manual_seed(derived_seed(seed, 1))
        index = torch.randperm(self.num_samples, generator=generator)[: min(count, self.num_samples)]
        if self.images is not None:
            index = index.to(self.images.device)
            return to_model_range(self.images[index]).cpu(), self.labels[index].cpu()
        items = [self.dataset[int(i)] for i in index]
        return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])
