"""Model registry: each variant is a small builder tagged with ``@register_model``."""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any, Callable

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "is_model", "build", "model_summary"]

_builders: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name; a name registered twice is a programming error."""
    name = fn.__name__
    if name in _builders:
        raise ValueError(f"model name {name!r} is already registered; pick another name")
    _builders[name] = fn
    return fn


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally filtered by a glob (``"vgg_att*"``)."""
    names = sorted(_builders)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def is_model(name: str) -> bool:
    return name in _builders


def model_summary(name: str) -> str:
    """The first line of a registered builder's docstring (one-line description of the model)."""
    doc = (_builders[name].__doc__ or "").strip()
    return doc.splitlines()[0].replace("``", "") if doc else ""


def create_model(name: str, *, num_classes: int = 10, **options) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`, e.g. ``"vgg_att3"``.
        num_classes: number of output classes (>= 2).
        **options: keyword options of that model, e.g. ``compat="dp"``, ``head="indep"``,
            ``input_size=80``, ``width=0.25``.

    Returns:
        The model; its ``forward`` returns :class:`~ltpa.models.output.AttentionOutput`.

    Raises:
        ValueError: unknown name (the closest registered names are suggested) or bad option.
        TypeError: an option the model does not take.
    """
    if name not in _builders:
        close = difflib.get_close_matches(name, _builders, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}."
        )
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return _builders[name](num_classes=num_classes, **options)


def build(cls: type[nn.Module], options: dict[str, Any], **fixed: Any) -> nn.Module:
    """Instantiate ``cls(**fixed, **options)``, naming the valid options when one is unknown.

    Builders call this so that a typo (``compt="dp"``) gets a useful message instead of
    Python's bare "unexpected keyword argument".
    """
    params = inspect.signature(cls).parameters
    valid = [p for p in params if p not in fixed and params[p].kind is params[p].KEYWORD_ONLY]
    for key in options:
        if key in fixed:
            raise TypeError(f"option {key!r} is fixed by this model variant and cannot be set")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"unknown option {key!r} for {cls.__name__}.{hint} Valid options: {', '.join(valid)}."
            )
    return cls(**fixed, **options)
