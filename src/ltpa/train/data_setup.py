"""Data for training runs: in-memory uint8 splits, batch-level augmentation on the training
device, and a seeded batch iterator whose order depends only on (seed, epoch).

Images stay uint8 until a batch is drawn; augmentation (flip, padded crop) runs on the whole
uint8 batch, then the batch becomes float in [0, 1] and is normalised with the train split's
per-channel mean/std. That is what models see.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data.distributed import DistributedSampler

from ..runs.preprocess import Preprocessing
from ..runs.config import TrainConfig
from ..data.splits import derive_seed, stratified_split
from ..errors import Setting, UserError

__all__ = [
    "DataSplits",
    "build_data",
    "stratified_split",
    "channel_mean_std",
    "augment_batch",
    "BatchLoader",
    "derive_seed",
    "AUGMENT_STREAM",
    "DROPOUT_STREAM",
]

logger = logging.getLogger(__name__)


@dataclass
class DataSplits:
    """Train / validation / test tensors of one run, on the CPU.

    ``*_images`` are ``(N, 3, H, W)`` uint8 RGB, ``*_targets`` ``(N,)`` int64. The validation
    split is carved out of the train data (class-stratified); it is empty when
    ``val_fraction == 0``.
    """

    train_images: Tensor
    train_targets: Tensor
    val_images: Tensor
    val_targets: Tensor
    test_images: Tensor
    test_targets: Tensor
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        return (f"train {len(self.train_targets)}, val {len(self.val_targets)}, "
                f"test {len(self.test_targets)} images of {tuple(self.train_images.shape[1:])}, "
                f"{self.num_classes} classes")


# Disjoint stream ranges per purpose, so that no rank's stream equals another purpose's.
AUGMENT_STREAM = 1 << 20
DROPOUT_STREAM = 2 << 20


def channel_mean_std(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images ``(N, C, H, W)``, in [0, 1] pixel units.

    Accumulates in float64 chunk by chunk, so large sets need little extra memory.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _synthetic(config: TrainConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    from ltpa.data.synthetic import SyntheticLocalisation

    common = dict(image_size=config.image_size, num_classes=config.num_classes, seed=config.data_seed)
    train = SyntheticLocalisation(config.num_train, split="train", **common)
    test = SyntheticLocalisation(config.num_test, split="test", **common)
    return train.images, train.targets, test.images, test.targets, tuple(train.class_names)


def _real(config: TrainConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """Any other spec ("cifar100:/path", "cub:/path", ...) through ltpa.data.sources."""
    try:
        from ltpa.data.sources import load_data
    except ImportError as err:  # the sources module is newer than the trainer
        raise ValueError(
            f"data {config.data!r} needs ltpa.data.sources, which this installation lacks; "
            f"use data=synthetic"
        ) from err
    source = load_data(config.data, synthetic_options=dict(
        num_train=config.num_train, num_test=config.num_test, image_size=config.image_size,
        num_classes=config.num_classes, seed=config.data_seed))
    for message in getattr(source, "warnings", ()) or ():
        logger.warning("data %s: %s", config.data, message)
    train_x = _decoded(source.train, config, "train")
    test_x = _decoded(source.test, config, "test")
    train_y = torch.as_tensor(source.train.targets, dtype=torch.int64)
    test_y = torch.as_tensor(source.test.targets, dtype=torch.int64)
    return train_x, train_y, test_x, test_y, tuple(source.class_names)


def _decoded(split, config: TrainConfig, name: str) -> Tensor:
    """The split as uint8 ``(N, 3, S, S)`` with ``S = config.image_size``: in-memory images
    of that size as they are, anything else decoded/resized once by ``materialise``."""
    images = split.images
    size = (config.image_size, config.image_size)
    if images is not None and tuple(images.shape[-2:]) == size:
        return torch.as_tensor(images)
    from ltpa.data.materialise import materialise

    logger.info("decoding the %s split to %dx%d (%s)", name, *size, config.resize_mode)
    images, _, _ = materialise(split, size=config.image_size, mode=config.resize_mode)
    return torch.as_tensor(images)


def _subset(images: Tensor, targets: Tensor, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """A class-stratified subset of about ``count`` images (all when count is 0 or too big)."""
    if count <= 0 or count >= len(targets):
        return images, targets
    _, keep = stratified_split(targets, count / len(targets), seed)
    return images[keep], targets[keep]


def build_data(config: TrainConfig) -> DataSplits:
    """Build the run's splits from ``config.data``.

    ``"synthetic"`` is generated here; any other spec (``"cifar100:/path"``, ``"cub:/path"``,
    ...) is read by ``ltpa.data.sources.load_data`` and decoded to ``image_size`` when needed.
    ``subset_train``/``subset_test`` then keep class-stratified subsets, and the validation
    split is carved (class-stratified) out of the train split. The test split is untouched.

    Raises:
        ValueError: unknown data source (from the sources module).
    """
    loader = _synthetic if config.data == "synthetic" else _real
    train_x, train_y, test_x, test_y, names = loader(config)
    train_x, train_y = _subset(train_x, train_y, config.subset_train, config.data_seed)
    test_x, test_y = _subset(test_x, test_y, config.subset_test, config.data_seed + 1)
    train_idx, val_idx = stratified_split(train_y, config.val_fraction, config.data_seed)
    return DataSplits(
        train_images=train_x[train_idx], train_targets=train_y[train_idx],
        val_images=train_x[val_idx], val_targets=train_y[val_idx],
        test_images=test_x, test_targets=test_y, class_names=names,
    )


def augment_batch(images: Tensor, *, hflip: bool, crop_padding: int, generator: torch.Generator) -> Tensor:
    """Random horizontal flip and random crop after zero padding, for a whole batch at once.

    Args:
        images: ``(B, C, H, W)`` uint8 (or float) on any device; not modified.
        hflip: flip each image left-right with probability 1/2.
        crop_padding: pad by this many zero pixels on every side, then crop ``H x W`` at a
            uniformly random offset per image (0 = no crop).
        generator: a generator on ``images.device``; all randomness comes from it.

    Returns:
        A new ``(B, C, H, W)`` tensor of the same dtype.
    """
    b, c, h, w = images.shape
    device = images.device
    out = images
    if hflip:
        flip = torch.rand(b, generator=generator, device=device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    if crop_padding > 0:
        p = crop_padding
        padded = torch.nn.functional.pad(out, (p, p, p, p))  # zeros: black, as RandomCrop(padding)
        oy = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=device)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=device)
        rows = (oy[:, None] + torch.arange(h, device=device))[:, None, :, None]  # (B, 1, H, 1)
        cols = (ox[:, None] + torch.arange(w, device=device))[:, None, None, :]  # (B, 1, 1, W)
        batch = torch.arange(b, device=device)[:, None, None, None]
        chans = torch.arange(c, device=device)[None, :, None, None]
        out = padded[batch, chans, rows, cols]  # (B, C, H, W)
    return out if out is not images else images.clone()


class BatchLoader:
    """Iterates ``(images, targets)`` batches of one split, ready for the model.

    The whole split is moved to ``device`` once (uint8). Each batch is gathered, optionally
    augmented, converted to float in [0, 1], then normalised by ``mean``/``std`` (or passed to
    ``whiten``, e.g. a fitted ZCA) and laid out in ``memory_format``. With ``shuffle`` the
    order of epoch ``e`` comes from a generator seeded by ``derive_seed(seed, e, ...)``, so a
    resumed run sees exactly the batches it would have seen; call :meth:`set_epoch` before
    iterating.

    With ``world_size > 1`` each rank sees its own shard: a ``DistributedSampler`` shuffles and
    splits the training set (padding by repeating a few images unless ``drop_last``), and an
    evaluation split (``shuffle=False``) is dealt out as ``rank, rank + W, ...``, so every image
    is seen by exactly one rank and none twice. Augmentation draws from a per-rank stream.

    Args:
        images: ``(N, 3, H, W)`` uint8; targets: ``(N,)`` int64.
        batch_size: images per batch (per rank).
        mean, std: per-channel normalisation in [0, 1] pixel units.
        device: where batches are produced.
        shuffle: new random order every epoch (train) or the stored order (eval).
        drop_last: drop the final partial batch (logged once when it drops images).
        augment: apply :func:`augment_batch` with ``hflip``/``crop_padding``.
        seed: run seed for order and augmentation.
        memory_format: e.g. ``torch.channels_last``.
        limit_batches: > 0 stops each epoch after this many batches.
        name: split name for log messages.
        whiten: instead of mean/std, a function of the float ``(B, C, H, W)`` batch in [0, 1]
            that returns the model's input (the same shape).
        rank, world_size: this process's shard.
    """

    def __init__(self, images: Tensor, targets: Tensor, *, batch_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], device: torch.device, shuffle: bool = False,
                 drop_last: bool = False, augment: bool = False, hflip: bool = True,
                 crop_padding: int = 0, seed: int = 0,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 limit_batches: int = 0, name: str = "data",
                 whiten: Callable[[Tensor], Tensor] | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"{name}: expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{name}: {len(images)} images but {len(targets)} targets")
        if batch_size < 1:
            raise ValueError(f"{name}: batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"{name}: rank {rank} is outside world_size {world_size}")
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.sampler = None
        if world_size > 1 and shuffle:
            self.sampler = DistributedSampler(
                range(len(images)), num_replicas=world_size, rank=rank, shuffle=True,
                seed=derive_seed(seed, 0, 2) % 2**62, drop_last=drop_last)
        elif world_size > 1:  # evaluation: a fixed interleaved shard, nothing padded
            images, targets = images[rank::world_size], targets[rank::world_size]
        self.images = images.to(self.device)
        self.targets = targets.to(self.device, dtype=torch.int64)
        self.batch_size = batch_size
        self.shuffle, self.drop_last, self.augment = shuffle, drop_last, augment
        self.hflip, self.crop_padding = hflip, crop_padding
        self.seed, self.epoch = seed, 0
        self._start, self._start_state, self._aug_gen = 0, None, None
        self.memory_format = memory_format
        self.limit_batches = limit_batches
        self.name = name
        self.whiten = whiten
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"{name}: mean/std need {channels} values, got {mean} / {std}")
        self.preprocess = Preprocessing(mean, std, zca=whiten, device=self.device)  # the run's one
        shard = self._shard_size
        dropped = shard % batch_size if drop_last else 0
        if drop_last and shard < batch_size:
            per_rank = " per process" if world_size > 1 else ""
            raise UserError(
                f"the {name} split has {shard} images{per_rank}, fewer than a batch of {batch_size}, "
                f"so drop_last=true leaves no batch at all; lower batch_size (", Setting("batch_size"),
                ") or ", Setting("drop_last", False)
            )
        if dropped and rank == 0:
            logger.info("%s: dropping the last partial batch of %d of %d images each epoch%s "
                        "(drop_last=True; the images dropped change with the shuffle)",
                        name, dropped, shard, " on each rank" if world_size > 1 else "")
        if self.sampler is not None and rank == 0:
            total = self.sampler.total_size
            if total != len(images):
                logger.info("%s: %d images over %d ranks: %s %d image(s) per epoch", name,
                            len(images), world_size, "drops" if drop_last else "repeats",
                            abs(total - len(images)))

    @property
    def _shard_size(self) -> int:
        return self.sampler.num_samples if self.sampler is not None else len(self.images)

    def set_epoch(self, epoch: int, *, start_batch: int = 0, generator_state: Tensor | None = None) -> None:
        """Iterate epoch ``epoch`` next, from batch ``start_batch`` (a resumed mid-epoch
        checkpoint) with the augmentation generator in ``generator_state`` (what
        :meth:`generator_state` returned after batch ``start_batch - 1``)."""
        self.epoch = epoch
        self._start, self._start_state = start_batch, generator_state
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def generator_state(self) -> Tensor | None:
        """The augmentation generator's state after the last batch yielded (None without
        augmentation), so that a mid-epoch checkpoint can continue the same draws."""
        return None if self._aug_gen is None else self._aug_gen.get_state()

    def __len__(self) -> int:
        n = self._shard_size
        count = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return min(count, self.limit_batches) if self.limit_batches > 0 else count

    @property
    def num_samples(self) -> int:
        """Images yielded per epoch by this rank (after drop_last and limit_batches)."""
        return min(self._shard_size, len(self) * self.batch_size)

    def _order(self) -> Tensor:
        if self.sampler is not None:
            return torch.tensor(list(self.sampler), dtype=torch.int64, device=self.device)
        n = len(self.images)
        if self.shuffle:
            order_gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2))
            return torch.randperm(n, generator=order_gen).to(self.device)
        return torch.arange(n, device=self.device)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        aug_gen = None
        if self.augment:
            aug_gen = torch.Generator(device=self.device)
            # rank 0 keeps stream 3, so one process draws what it always did
            aug_gen.manual_seed(derive_seed(self.seed, self.epoch, AUGMENT_STREAM + self.rank))
            if self._start_state is not None:
                aug_gen.set_state(self._start_state)
        self._aug_gen = aug_gen
        start, self._start, self._start_state = self._start, 0, None  # once: the next epoch is whole
        for i in range(start, len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            images = self.images[idx]
            if self.augment:
                images = augment_batch(images, hflip=self.hflip, crop_padding=self.crop_padding,
                                       generator=aug_gen)
            images = self.preprocess(images)  # (B, C, H, W) float: mean/std or ZCA, as everywhere
            yield images.contiguous(memory_format=self.memory_format), self.targets[idx]
