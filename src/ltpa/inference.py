"""Load a trained ltpa checkpoint and run it on images: the library behind ``ltpa attend``.

Images are prepared exactly as the run prepared its data: the same decoding
(:func:`ltpa.data.images.open_image`), the run's ``image_size`` and ``resize_mode`` (the same
crop and resize as :func:`ltpa.data.materialise.materialise`), then its mean/std or ZCA.
Image files have no boxes, so for a run trained with ``resize_mode=bbox_crop`` they are
resized as ``resize_crop`` (short side to the size, centre square) instead, with one warning:
the object then fills less of the picture than in training, so crop such images around the
object first for results comparable with the run's. Data sets with boxes (``--data cub:PATH``)
get the run's ``bbox_crop``.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .attention import attention_grid, compute_maps, save_figure
from .attention.ground_truth import EvaluationSet, load_evaluation_set
from .data.images import find_images
from .data.materialise import BBOX_MARGIN, materialise
from .data.sources import Split
from .runs.checkpoints import CheckpointError
from .runs.config import TrainConfig
from .runs.ownership import OutputFolder
from .runs.preprocess import Preprocessing
from .runs.run import Run

PREDICTIONS_FILE = "predictions.json"

__all__ = ["TrainedModel", "load_trained", "normalise", "class_names_for", "attend_files", "attend_images",
           "load_files_as_trained", "evaluation_set"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedModel:
    """A model rebuilt from a checkpoint, with what is needed to feed it.

    Attributes:
        model: in eval mode, on the CPU.
        config: the training config (model name, options, image size, normalisation).
        class_names: one name per class.
        checkpoint: the sidecar it came from.
        whiten: the run's ZCA whitening (float [0, 1] batch in, whitened out), or None.
        preprocessing: the run's one input preprocessing (:class:`ltpa.runs.preprocess.Preprocessing`).
    """

    model: nn.Module
    config: TrainConfig
    class_names: tuple[str, ...]
    checkpoint: Path
    whiten: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    preprocessing: Preprocessing | None = field(default=None, repr=False)

    def _preprocessing(self) -> Preprocessing:
        if self.preprocessing is not None:
            return self.preprocessing
        return Preprocessing(self.config.mean, self.config.std, zca=self.whiten)

    def prepare(self, images: Tensor) -> Tensor:
        """uint8 images ``(B, 3, H, W)`` -> the model's input, exactly as in training (ZCA or mean/std)."""
        return self._preprocessing().to(images.device)(images)

    def prepare_float(self, images: Tensor) -> Tensor:
        """Float pixels in [0, 1] ``(B, 3, H, W)`` -> the model's input; differentiable (attacks)."""
        return self._preprocessing().to(images.device).float(images)


def class_names_for(config: TrainConfig, run_dir: Path | None = None) -> tuple[str, ...]:
    """Class names of a run: its ``classes.json``, else derived from the data (numbers at worst)."""
    return Run(run_dir, config, None).class_names


def load_trained(path: str | Path) -> TrainedModel:
    """Rebuild the model of an ltpa checkpoint (``.json`` sidecar, ``.safetensors`` or stem).

    Raises:
        CheckpointError: not an ltpa checkpoint, corrupt (sha256 mismatch) or not matching its
            own config.
    """
    run = Run.open(path)
    if run.checkpoint is None:
        raise CheckpointError(f"run {run.folder} has no checkpoint yet (it stopped before its first one); "
                              f"continue the run to make one")
    preprocessing = run.preprocessing
    whiten = preprocessing._whiten if run.config.zca else None
    return TrainedModel(run.load_model(), run.config, run.class_names, run.checkpoint, whiten, preprocessing)


def load_files_as_trained(config: TrainConfig, paths: Sequence[str | Path], *,
                          size: int | None = None) -> tuple[Tensor, str]:
    """Read image files into uint8 ``(N, 3, S, S)`` exactly as the run's data was decoded.

    Args:
        config: the run's config (``image_size``, ``resize_mode``).
        paths: image files.
        size: ``S``; default the run's ``image_size``.

    Returns:
        ``(images, resize_mode)``: the mode used, which is ``resize_crop`` for a ``bbox_crop``
        run (files have no boxes; logged once as a warning).

    Raises:
        ImageReadError: files that cannot be read (a ValueError naming them).
    """
    size = size or config.image_size
    mode = config.resize_mode
    if mode == "bbox_crop":
        logger.warning("this run was trained with resize_mode=bbox_crop (a square around each annotated box); "
                       "image files have no boxes, so they are resized as resize_crop (short side to %d px, centre "
                       "square) instead: crop them around the object for results comparable with training", size)
        mode = "resize_crop"
    files = Split(torch.zeros(len(paths), dtype=torch.int64), files=[Path(p) for p in paths], name="")
    images, _, _ = materialise(files, size, mode, workers=0)
    return images, mode


def evaluation_set(config: TrainConfig, spec: str | None = None, *, limit: int | None = None,
                   split: str = "test") -> EvaluationSet:
    """:func:`~ltpa.attention.ground_truth.load_evaluation_set` with a run's own preprocessing
    (``config``, e.g. ``trained.config``): its image size, resize mode and bbox margin, and for
    ``synthetic`` its class count, seed and test size. ``spec`` defaults to the run's data."""
    defaults = {"num_classes": config.num_classes, "seed": config.data_seed, "num_test": config.num_test}
    return load_evaluation_set(spec or config.data, image_size=config.image_size, limit=limit, split=split,
                               synthetic_defaults=defaults, resize_mode=config.resize_mode,
                               bbox_margin=BBOX_MARGIN)


def normalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 images ``(B, 3, H, W)`` -> float, normalised as in training (mean/std in [0, 1] units)."""
    return Preprocessing(mean, std, device=images.device)(images)


def attend_files(
    trained: TrainedModel,
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    size: int | None = None,
    mode: str = "mass",
    cmap: str = "jet",
    overwrite: bool = False,
    batch_size: int = 64,
) -> dict:
    """Predict and write per-level attention for image files and folders.

    Writes into ``out``: ``<stem>.png`` (the image and one overlay per level), ``<stem>.<level>.npy``
    (the raw map at feature resolution, ``(h, w)`` float32) and ``predictions.json``.

    Args:
        trained: from :func:`load_trained`.
        inputs: image files and/or folders (searched recursively).
        out: output folder: new, empty, or (with ``overwrite``) an earlier ``attend`` output; a
            training run or a folder ltpa did not write is refused (:class:`ltpa.runs.OutputFolder`).
        size: the side of the square images; default the training image size. The run's resize
            mode applies (``bbox_crop`` falls back to ``resize_crop``: see the module docstring).
        mode: overlay colour scale, ``"mass"``, ``"shared"`` or ``"per-map"``.
        cmap: matplotlib colormap name.
        overwrite: replace an earlier ``attend`` output in ``out`` (only the files its manifest
            lists; the user's other files are kept).
        batch_size: images per forward pass.

    Returns:
        The content of ``predictions.json``.

    Raises:
        FileNotFoundError: an input does not exist or a folder holds no images.
        ValueError: an unreadable image, an ``out`` that may not be written, or a model
            without attention maps.
    """
    paths = find_images(inputs)  # every check on the inputs runs before anything is written
    images, resize_mode = load_files_as_trained(trained.config, paths, size=size)
    preprocessing = {"image_size": int(images.shape[-1]), "resize_mode": resize_mode,
                     "trained_resize_mode": trained.config.resize_mode}
    return attend_images(trained, images, [str(p) for p in paths], out, stems=_unique_stems(paths),
                         mode=mode, cmap=cmap, overwrite=overwrite, batch_size=batch_size,
                         preprocessing=preprocessing)


def attend_images(
    trained: TrainedModel,
    images: Tensor,
    names: Sequence[str],
    out: str | Path,
    *,
    stems: Sequence[str] | None = None,
    targets: Tensor | None = None,
    mode: str = "mass",
    cmap: str = "jet",
    overwrite: bool = False,
    batch_size: int = 64,
    preprocessing: dict | None = None,
) -> dict:
    """:func:`attend_files` for uint8 images ``(N, 3, H, W)`` already in memory (e.g. a data set).

    Args:
        names: one name per image (recorded in ``predictions.json``).
        stems: output file stems (default ``image_00000``...).
        targets: optional true classes ``(N,)``, shown in the titles and recorded.
        preprocessing: how the images were made (size, resize mode), recorded as is.
    """
    folder = OutputFolder(out, "attend", overwrite=overwrite, what="attention maps").check()  # before the work
    maps = compute_maps(trained.model, trained.prepare(images), batch_size=batch_size)
    with folder:  # the lock; on success the earlier run's files not written again are removed
        probabilities = maps.logits.float().softmax(dim=1)
        stems = list(stems) if stems is not None else [f"image_{i:05d}" for i in range(len(images))]
        pixels = images.permute(0, 2, 3, 1).numpy()
        records = []
        for index, (name, stem) in enumerate(zip(names, stems)):
            top = probabilities[index].topk(min(5, probabilities.shape[1]))
            label = trained.class_names[int(top.indices[0])]
            title = f"pred: {label} ({float(top.values[0]):.0%})"
            record = {"image": name, "stem": stem, "prediction": label}
            if targets is not None:
                record["truth"] = trained.class_names[int(targets[index])]
                title += f"\ntrue: {record['truth']}"
            figure = attention_grid(
                pixels[index:index + 1], [m[index:index + 1] for m in maps.upsampled],
                level_names=[level.name for level in maps.levels], strides=[level.stride for level in maps.levels],
                titles=[title], mode=mode, cmap=cmap)
            save_figure(figure, folder.record(f"{stem}.png"))
            for level, level_map in zip(maps.levels, maps.maps):
                buffer = io.BytesIO()
                np.save(buffer, level_map[index, 0].float().numpy())
                folder.write_bytes(f"{stem}.{level.name}.npy", buffer.getvalue())
            record["top5"] = [{"class": trained.class_names[int(k)], "probability": float(p)}
                              for p, k in zip(top.values, top.indices)]
            records.append(record)
        summary = {"checkpoint": str(trained.checkpoint), "model": trained.config.model,
                   "normalisation": maps.normalisation, "display_mode": mode,
                   **({"preprocessing": preprocessing} if preprocessing else {}),
                   "levels": [{"name": lv.name, "stride": lv.stride, "offset": lv.offset} for lv in maps.levels],
                   "images": records}
        folder.write_json(PREDICTIONS_FILE, summary)
    return summary


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, with ``_1``, ``_2``... added until each is unused (a/x.png, b/x.png, x_1.png)."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, count = path.stem, 0
        while stem in used:
            count += 1
            stem = f"{path.stem}_{count}"
        used.add(stem)
        stems.append(stem)
    return stems


def overlay_grid_from_arrays(images_uint8: Tensor, maps, titles, *, mode: str = "mass"):
    """An images x levels figure for uint8 ``(B, 3, H, W)`` images and :class:`AttentionMaps`."""
    pixels = images_uint8.permute(0, 2, 3, 1).numpy()
    return attention_grid(pixels, list(maps.upsampled), level_names=[lv.name for lv in maps.levels],
                          strides=[lv.stride for lv in maps.levels], titles=titles, mode=mode)

