"""Cross-domain transfer by linear probe (Jetley et al. 2018, Sec. 5): frozen features, a linear classifier.

The paper uses CIFAR-trained models as frozen feature extractors on other data sets: the
concatenated attended descriptors ``g_a`` for attention models, the penultimate layer for the
baselines, images downsampled to the model's input size, and a linear classifier on top::

    from ltpa.transfer.probe import linear_probe

    result = linear_probe("runs/c100_att3/checkpoints/best.json", "folder:/data/101_ObjectCategories",
                          train_per_class=30, test_per_class=50, exclude_classes=["BACKGROUND_Google"])
    print(result.summary())

Features (``features=``):

* ``"attention"`` (default for attention models): the attended vectors ``g_a = sum_i a_i l_i``
  (eq. 4) of every level, concatenated in ``model.levels`` order: the input of the classifier
  head, before its BatchNorm and ReLU.
* ``"penultimate"`` (default for models without attention, e.g. ``vgg``, ``vgg_noatt``,
  ``vgg_gap``): ``AttentionOutput.features``, the input of the final Linear layer (for VGG the
  ReLU after the 512-d fully connected layer; for attention models ReLU(BN(g_a)) concatenated).
* ``"level:NAME"``: the ``g_a`` of one level, e.g. ``level:conv10``.

Protocol: images are decoded at the model's input size (``resize_crop``: short side resized, then
a centre crop; ``squash`` keeps the whole image and changes its aspect ratio); features are
standardised and classified by multinomial logistic regression (scikit-learn), with the inverse
regularisation ``C`` picked by stratified k-fold cross-validation **on the training split only**
(the scaler is refitted inside every fold); the refitted model is scored once on the test split.
The test accuracy comes with a 95% **Wilson score interval** (binomial, test images independent).
Features are cached as safetensors, keyed by the checkpoint's sha256, the data spec, the split
(with its files' paths, sizes and mtimes, or its images' bytes), the feature kind and the
decoding; a stale or unreadable cache file is ignored and rebuilt.

Data layouts for the paper's targets (``folder:ROOT`` takes ``ROOT/<class>/*`` or
``ROOT/train/<class>/*`` + ``ROOT/test/<class>/*``; images are searched recursively):

* Caltech-101: ``folder:.../101_ObjectCategories`` (``<class>/image_0001.jpg``, 102 folders).
  No official split: use ``train_per_class=30, test_per_class=50`` (the usual 30 training
  images, at most 50 test images per class) and ``exclude_classes=["BACKGROUND_Google"]`` for the
  101 object classes.
* Caltech-256: ``folder:.../256_ObjectCategories`` (``001.ak47/001_0001.jpg`` ...
  ``257.clutter``). No official split: ``train_per_class=30`` (or 60), ``test_per_class=25``
  and ``exclude_classes=["257.clutter"]`` are the common choices.
* Event-8 (UIUC sports events, Li & Fei-Fei 2007): ``folder:.../event_img`` (8 folders, e.g.
  ``RockClimbing``, ``badminton``, ``bocce``, ``croquet``, ``polo``, ``Rowing``, ``sailing``,
  ``snowboarding``). Protocol: ``train_per_class=70, test_per_class=60``.
* Scene-67 (MIT Indoor 67): ``folder:.../Images`` (``<category>/*.jpg``). The official split is
  the ``TrainImages.txt``/``TestImages.txt`` lists (80/20 per class, lines ``category/file.jpg``):
  link the listed files into ``ROOT/train/<category>/`` and ``ROOT/test/<category>/`` to use it,
  or approximate it with ``train_per_class=80, test_per_class=20`` (a seeded split, not the
  official one).
* Action-40 (Stanford 40 Actions): ``JPEGImages/<action>_NNN.jpg`` is flat, so it is not a
  class-per-folder layout: link each file listed in ``ImageSplits/train.txt`` and ``test.txt``
  into ``ROOT/train/<action>/`` and ``ROOT/test/<action>/`` (the action is the name without
  ``_NNN.jpg``; 100 training images per action), then use ``folder:ROOT``.
* STL-10: the binary release (``stl10_binary/train_X.bin``, ``train_y.bin``, ``test_X.bin``,
  ``test_y.bin``, ``class_names.txt``) is not a folder: ``X`` is uint8 ``(N, 3, 96, 96)`` stored
  column-major (transpose the last two axes), ``y`` holds labels 1-10. Write each image as
  ``ROOT/train/<class>/<index>.png`` and ``ROOT/test/<class>/<index>.png`` (500 and 800 per class)
  and use ``folder:ROOT``. The paper classified STL-10 directly with the CIFAR-10 model (on the
  classes both share) rather than by a probe.

With ``train_per_class``, the loaded train and test splits are pooled and split again per class
with a generator seeded by ``split_seed``: ``train_per_class`` random images of each class for
training and the next ``test_per_class`` (default: all the rest) for testing. Without it, the
source's own split is used (``folder:`` without ``train/``+``test/`` makes a seeded, stratified
``test_fraction`` split, see :mod:`ltpa.data.folder`).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .features import (FEATURE_KINDS, available_features, check_feature_kind, default_cache_dir, default_features,
                       extract_features, feature_cache_key, read_cached_features, write_cached_features)

__all__ = ["ProbeResult", "wilson_interval", "fit_linear_probe", "linear_probe", "run_probe", "RESULT_FILE",
           "FEATURE_KINDS", "available_features", "default_features", "extract_features", "default_cache_dir"]

RESULT_FILE = "probe.json"
FORMAT = "ltpa-probe"
_RESIZE_MODES = ("resize_crop", "squash")
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 2, 7))


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n`` (95% for the default ``z``).

    Unlike the normal approximation it stays inside ``[0, 1]`` and is not empty at 0 or n successes.

    Raises:
        ValueError: ``n < 1`` or ``successes`` outside ``[0, n]``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# ----------------------------------------------------------------------------- data


@dataclass
class _ProbeSplits:
    train: object  # ltpa.data.sources.Split
    test: object
    class_names: tuple[str, ...]
    notes: list[str]


def _pool(train, test):
    from ..data.sources import Split

    targets = torch.cat([train.targets, test.targets])
    if train.images is not None and test.images is not None and train.images.shape[1:] == test.images.shape[1:]:
        return Split(targets, images=torch.cat([train.images, test.images]), name="all")
    if train.files is not None and test.files is not None:
        sizes = None
        if train.sizes is not None and test.sizes is not None:
            sizes = torch.cat([train.sizes, test.sizes])
        return Split(targets, files=list(train.files) + list(test.files), sizes=sizes, name="all")
    raise ValueError("cannot pool the train and test splits of this data set (mixed storage or image sizes); "
                     "drop train_per_class to use its own split")


def _per_class_split(pooled, names, train_per_class: int, test_per_class: int | None, seed: int):
    counts = torch.bincount(pooled.targets, minlength=len(names))
    short = [f"{names[k]} ({int(c)})" for k, c in enumerate(counts) if int(c) <= train_per_class]
    if short:
        raise ValueError(f"train_per_class={train_per_class} leaves no test image for {len(short)} class(es): "
                         f"{', '.join(short[:5])}{' ...' if len(short) > 5 else ''}; lower train_per_class or "
                         f"drop those classes with exclude_classes")
    generator = torch.Generator().manual_seed(seed)
    train_index, test_index = [], []
    for k in range(len(names)):
        members = torch.nonzero(pooled.targets == k).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        train_index.append(members[:train_per_class])
        end = None if test_per_class is None else train_per_class + test_per_class
        test_index.append(members[train_per_class:end])
    train = pooled.select(torch.cat(train_index).sort().values)
    test = pooled.select(torch.cat(test_index).sort().values)
    train.name, test.name = "train", "test"
    return train, test


def _drop_classes(split, names: tuple[str, ...], exclude: Sequence[str]):
    keep = [k for k, name in enumerate(names) if name not in set(exclude)]
    remap = torch.full((len(names),), -1, dtype=torch.int64)
    remap[keep] = torch.arange(len(keep))
    chosen = split.select(remap[split.targets] >= 0)
    chosen.targets = remap[chosen.targets]
    return chosen


def _load_splits(spec: str, *, image_size: int, train_per_class: int | None, test_per_class: int | None,
                 split_seed: int, exclude_classes: Sequence[str]) -> _ProbeSplits:
    from ..data.sources import load_data

    source = load_data(spec, synthetic_options={"image_size": image_size})
    names = tuple(source.class_names)
    train, test = source.train, source.test
    notes = list(source.warnings)
    if exclude_classes:
        unknown = sorted(set(exclude_classes) - set(names))
        if unknown:
            raise ValueError(f"exclude_classes names unknown class(es) {', '.join(map(repr, unknown))}; the data "
                             f"has {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
        train, test = (_drop_classes(s, names, exclude_classes) for s in (train, test))
        names = tuple(n for n in names if n not in set(exclude_classes))
        notes.append(f"probe: excluded class(es) {', '.join(exclude_classes)}")
    if len(names) < 2:
        raise ValueError(f"a linear probe needs at least 2 classes, {spec!r} has {len(names)}")
    if train_per_class is not None:
        if train_per_class < 1 or (test_per_class is not None and test_per_class < 1):
            raise ValueError(f"train_per_class and test_per_class must be >= 1, got {train_per_class}, "
                             f"{test_per_class}")
        train, test = _per_class_split(_pool(train, test), names, train_per_class, test_per_class, split_seed)
        notes = [n for n in notes if not n.startswith("folder: no train/ and test/")]  # that split was pooled
        notes.append(f"probe: seeded per-class split (seed {split_seed}): {train_per_class} train and "
                     f"{'all remaining' if test_per_class is None else f'up to {test_per_class}'} test images "
                     f"per class, from the pooled data")
    elif test_per_class is not None:
        raise ValueError("test_per_class needs train_per_class (the per-class split pools both splits)")
    for split in (train, test):
        if len(split) == 0:
            raise ValueError(f"the {split.name} split of {spec!r} is empty; give a data set with both splits "
                             f"or use train_per_class")
    return _ProbeSplits(train, test, names, notes)


# ----------------------------------------------------------------------------- classifier


def fit_linear_probe(train_features, train_targets, test_features, test_targets, *,
                     cs: Sequence[float] = DEFAULT_CS, folds: int = 5, seed: int = 0) -> dict:
    """Standardise + logistic regression, ``C`` chosen by stratified CV on the training split only.

    Args:
        train_features, test_features: ``(N, D)`` arrays or tensors.
        train_targets, test_targets: ``(N,)`` class indices.
        cs: candidate inverse regularisation strengths.
        folds: at most this many CV folds (fewer if a class has fewer training images).
        seed: shuffles the CV folds.

    Returns:
        ``{"C", "cv_accuracy", "cv_folds", "cv_grid", "train_accuracy", "predictions",
        "convergence_warnings"}``; ``predictions`` is an int64 array for the test split.

    Raises:
        ValueError: a class with fewer than 2 training images, or an empty ``cs``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = _numpy(train_features, np.float64), _numpy(train_targets, np.int64)
    x_test = _numpy(test_features, np.float64)
    if not len(cs):
        raise ValueError("cs must hold at least one C value, e.g. 0.01, 0.1, 1")
    counts = np.bincount(y_train)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        raise ValueError("every class needs at least 2 training images for the cross-validation of C; a class "
                         "has 1 (raise train_per_class or test_fraction's complement, or exclude the class)")
    folds = int(min(folds, smallest))
    pipeline = Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(max_iter=2000))])
    search = GridSearchCV(pipeline, {"logreg__C": list(cs)}, scoring="accuracy", refit=True,
                          cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        search.fit(x_train, y_train)
    convergence = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    grid = [{"C": float(c), "cv_accuracy": float(m)}
            for c, m in zip(search.cv_results_["param_logreg__C"], search.cv_results_["mean_test_score"])]
    return {"C": float(search.best_params_["logreg__C"]), "cv_accuracy": float(search.best_score_),
            "cv_folds": folds, "cv_grid": grid, "train_accuracy": float(search.score(x_train, y_train)),
            "predictions": search.predict(x_test).astype(np.int64), "convergence_warnings": int(convergence)}


def _numpy(values, dtype) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


# ----------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class ProbeResult:
    """What :func:`linear_probe` measured.

    Attributes:
        checkpoint, model: the feature extractor.
        data: the data spec; features: the resolved feature kind; feature_dim: D.
        class_names: the probe's classes; num_train, num_test: images per split.
        correct: test images classified correctly; accuracy: ``correct / num_test``.
        ci95: the 95% Wilson score interval of the test accuracy.
        chance: ``1 / K``; majority: the test accuracy of always predicting the most frequent
            training class.
        C, cv_accuracy, cv_folds, cv_grid, train_accuracy: the logistic regression and its
            cross-validation on the training split.
        per_class_accuracy: test accuracy of each class.
        image_size, resize_mode: how images were decoded.
        cache: ``"hit"``, ``"built"`` or ``"off"`` for each split.
        notes: the data loader's warnings, then the probe's own (``"probe: ..."``: split, excluded
            classes, C at the edge of the grid, convergence); :meth:`summary` shows the latter.
    """

    checkpoint: str
    model: str
    data: str
    features: str
    feature_dim: int
    class_names: tuple[str, ...]
    num_train: int
    num_test: int
    correct: int
    ci95: tuple[float, float]
    chance: float
    majority: float
    C: float
    cv_accuracy: float
    cv_folds: int
    cv_grid: tuple[dict, ...]
    train_accuracy: float
    per_class_accuracy: dict[str, float | None]
    image_size: int
    resize_mode: str
    cache: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def accuracy(self) -> float:
        return self.correct / self.num_test

    def to_dict(self) -> dict:
        return {"format": FORMAT, "checkpoint": self.checkpoint, "model": self.model, "data": self.data,
                "features": self.features, "feature_dim": self.feature_dim, "num_classes": len(self.class_names),
                "num_train": self.num_train, "num_test": self.num_test, "test_correct": self.correct,
                "test_accuracy": self.accuracy, "test_accuracy_ci95": list(self.ci95), "ci_method": "wilson",
                "chance": self.chance, "majority_baseline": self.majority,
                "classifier": {"kind": "StandardScaler + LogisticRegression (lbfgs, multinomial)", "C": self.C,
                               "C_selection": f"{self.cv_folds}-fold stratified CV on the training split",
                               "cv_accuracy": self.cv_accuracy, "cv_grid": list(self.cv_grid),
                               "train_accuracy": self.train_accuracy},
                "image_size": self.image_size, "resize_mode": self.resize_mode, "cache": dict(self.cache),
                "per_class_accuracy": dict(self.per_class_accuracy), "class_names": list(self.class_names),
                "notes": list(self.notes)}

    def summary(self) -> str:
        low, high = self.ci95
        return (f"linear probe of {self.model} ({self.features}, {self.feature_dim}-d) on {self.data}: "
                f"{len(self.class_names)} classes, {self.num_train} train / {self.num_test} test images\n"
                f"test accuracy {100 * self.accuracy:.1f}% (95% Wilson CI {100 * low:.1f}-{100 * high:.1f}%; "
                f"chance {100 * self.chance:.1f}%, majority {100 * self.majority:.1f}%)\n"
                f"C = {self.C:g} by {self.cv_folds}-fold CV on train (CV accuracy {100 * self.cv_accuracy:.1f}%, "
                f"train accuracy {100 * self.train_accuracy:.1f}%)"
                + "".join(f"\nnote: {n[len('probe: '):]}" for n in self.notes if n.startswith("probe: ")))


def linear_probe(checkpoint, data: str, *, features: str | None = None, train_per_class: int | None = None,
                 test_per_class: int | None = None, split_seed: int = 0, exclude_classes: Sequence[str] = (),
                 resize_mode: str = "resize_crop", cache_dir: str | Path | None = None,
                 cs: Sequence[float] = DEFAULT_CS, folds: int = 5, seed: int = 0, batch_size: int = 128,
                 workers: int = 2) -> ProbeResult:
    """Frozen features of ``checkpoint`` on ``data``, a cross-validated linear classifier, test accuracy.

    Args:
        checkpoint: a checkpoint path or a :class:`~ltpa.inference.TrainedModel`.
        data: a data spec with labels (``folder:PATH``, ``cub:PATH``, ``synthetic``, ``cifar100:PATH``...).
        features: ``"attention"``, ``"penultimate"``, ``"level:NAME"``; None: the paper's choice.
        train_per_class, test_per_class, split_seed: the per-class split (module docstring).
        exclude_classes: class names to drop (e.g. Caltech-101's ``BACKGROUND_Google``).
        resize_mode: ``"resize_crop"`` or ``"squash"`` to the model's input size.
        cache_dir: where to cache features and decoded images (None: no cache).
        cs, folds, seed: see :func:`fit_linear_probe`.
        batch_size: images per forward pass; workers: decoding processes for file-based data.

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: bad options, a feature kind the model lacks, too few images per class.
        FileNotFoundError: missing data.
    """
    from ..data.materialise import materialise
    from ..inference import TrainedModel, load_trained

    if resize_mode not in _RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(_RESIZE_MODES)}, got {resize_mode!r}")
    trained = checkpoint if isinstance(checkpoint, TrainedModel) else load_trained(checkpoint)
    kind = check_feature_kind(trained.model, features)
    size = trained.config.image_size
    splits = _load_splits(data, image_size=size, train_per_class=train_per_class, test_per_class=test_per_class,
                          split_seed=split_seed, exclude_classes=exclude_classes)
    spec_text = data if train_per_class is None else (
        f"{data}|train_per_class={train_per_class}|test_per_class={test_per_class}|seed={split_seed}")
    if exclude_classes:
        spec_text += "|exclude=" + ",".join(sorted(exclude_classes))
    matrices, cache = {}, {}
    for split in (splits.train, splits.test):
        path = key = None
        if cache_dir is not None:
            key = feature_cache_key(trained, spec_text, split, kind, size, resize_mode)
            path = Path(cache_dir) / f"probe-{key[:32]}.safetensors"
            if path.exists():
                cached = read_cached_features(path, key, split.targets)
                if cached is not None:
                    matrices[split.name], cache[split.name] = cached, "hit"
                    continue
        images, _, _ = materialise(split, size=size, mode=resize_mode, workers=workers, cache_dir=cache_dir)
        matrices[split.name] = extract_features(trained, images, kind, batch_size=batch_size)
        cache[split.name] = "off" if path is None else "built"
        if path is not None:
            write_cached_features(path, key, matrices[split.name], split.targets)
    fit = fit_linear_probe(matrices["train"], splits.train.targets, matrices["test"], splits.test.targets,
                           cs=cs, folds=folds, seed=seed)
    truth = splits.test.targets.numpy()
    hits = fit["predictions"] == truth
    correct = int(hits.sum())
    majority_class = int(np.bincount(splits.train.targets.numpy()).argmax())
    per_class = {name: (float(hits[truth == k].mean()) if (truth == k).any() else None)
                 for k, name in enumerate(splits.class_names)}
    notes = list(splits.notes)
    if len(cs) > 1 and fit["C"] in (min(cs), max(cs)):
        notes.append(f"probe: C = {fit['C']:g} is at the edge of the searched grid ({min(cs):g}..{max(cs):g}); "
                     f"a wider grid (cs=...) might fit better")
    if fit["convergence_warnings"]:
        notes.append(f"probe: lbfgs did not converge in {fit['convergence_warnings']} of the CV/refit fits "
                     f"(max_iter=2000); the chosen C is still the best cross-validated one")
    return ProbeResult(
        checkpoint=str(trained.checkpoint), model=trained.config.model, data=data, features=kind,
        feature_dim=int(matrices["train"].shape[1]), class_names=splits.class_names,
        num_train=len(splits.train), num_test=len(splits.test), correct=correct,
        ci95=wilson_interval(correct, len(splits.test)), chance=1.0 / len(splits.class_names),
        majority=float((truth == majority_class).mean()), C=fit["C"], cv_accuracy=fit["cv_accuracy"],
        cv_folds=fit["cv_folds"], cv_grid=tuple(fit["cv_grid"]), train_accuracy=fit["train_accuracy"],
        per_class_accuracy=per_class, image_size=size, resize_mode=resize_mode, cache=cache, notes=tuple(notes))


def run_probe(checkpoint, data: str, out: str | Path | None = None, *, overwrite: bool = False,
              **options) -> ProbeResult:
    """``ltpa probe``: :func:`linear_probe`, then (with ``out``) write ``out/probe.json``.

    ``out`` is checked before any work: a non-empty folder is refused unless ``overwrite`` and it
    holds an earlier ``probe.json``, and then only the files that run recorded are replaced.
    ``options`` are :func:`linear_probe`'s keywords.
    """
    from ..runs.ownership import OutputFolder

    folder = None if out is None else OutputFolder(out, "probe", overwrite=overwrite, what="probe result").check()
    result = linear_probe(checkpoint, data, **options)
    if folder is not None:
        with folder:
            folder.write_json(RESULT_FILE, {**result.to_dict(), "files": [RESULT_FILE]})
    return result
