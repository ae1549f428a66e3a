"""``key=value`` overrides of a :class:`~ltpa.runs.config.TrainConfig` (the CLI's ``--set``),
each parsed by the field's type. Keys are flat (``lr=0.05``, as nanoGPT and the presets write
them), with their section (``optimisation.lr=0.05``), or one entry of a dict field
(``model_options.width=0.25``)."""
from __future__ import annotations

import difflib
import json
import math
import typing
from typing import Any


from ..errors import Setting, UserError
from .config import SECTION_OF, SECTIONS, TrainConfig, _coerce, _field_types, _is_union, _type_name

__all__ = ["apply_overrides"]


def apply_overrides(config: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """Return a copy of ``config`` with ``"key=value"`` strings applied, each parsed by type.

    Values are parsed against the field's annotation: ``int``, ``float`` (``1e-3``, ``inf`` is
    rejected), ``bool`` (``true/false/1/0/yes/no``), ``str``, tuples (``60,120,160`` or JSON
    ``[60, 120]``), ``None`` for optional fields (``none``/``null``), dicts as JSON. A nested key
    sets one entry of a dict field, its value parsed as JSON when it is valid JSON, else kept as
    a string: ``model_options.width=0.25``, ``model_options.compat=dp``. A key may be written
    with its section: ``optimisation.lr=0.05`` is ``lr=0.05``.

    Raises:
        ValueError: the key, the value, the expected type and the valid keys; an unknown key
            suggests the closest one.
    """
    hints = _field_types()
    values = config.to_dict()
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(
                f"override {item!r} is not of the form key=value, e.g. lr=0.05 or "
                f"model_options.width=0.5"
            )
        key, raw = item.split("=", 1)
        key, raw = key.strip(), raw.strip()
        top, _, sub = key.partition(".")
        if top in SECTIONS and SECTION_OF.get(sub) == top:  # section.key: optimisation.lr=0.05
            top, sub = sub, ""
        elif top in SECTIONS and top not in hints:
            fields = [k for k, section in SECTION_OF.items() if section == top]
            raise ValueError(f"override {item!r}: section {top!r} has no key {sub!r}; its keys are "
                             f"{', '.join(fields)}")
        if top not in hints:
            close = difflib.get_close_matches(top, hints, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"unknown config key {top!r} in override {item!r}.{hint} "
                f"Valid keys: {', '.join(hints)}."
            )
        if sub:
            if hints[top] is not dict and typing.get_origin(hints[top]) is not dict:
                raise ValueError(
                    f"override {item!r}: {top!r} is a {_type_name(hints[top])}, not a dict, so "
                    f"it has no sub-key {sub!r}; write {top}=<value>"
                )
            nested = dict(values[top])
            nested[sub] = _parse_json_or_str(raw)
            values[top] = nested
        else:
            values[top] = _parse(top, raw, hints[top])
    return TrainConfig.from_dict(values)


def _parse_json_or_str(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _no_constant(name: str) -> Any:
    """``parse_constant`` for json.loads: config.json is strict JSON, so no NaN or Infinity."""
    raise ValueError(f"{name} is not a finite number")


def _json_value(raw: str, kind: type, as_what: str, fail) -> Any:
    """``raw`` parsed as strict JSON of type ``kind`` (no NaN/Infinity), or ``fail(as_what ...)``."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise fail(f"{as_what} ({err.msg})") from None
    except ValueError as err:
        raise fail(f"{as_what} ({err})") from None
    if not isinstance(value, kind):
        raise fail(as_what)
    return value


def _parse(key: str, raw: str, tp: Any) -> Any:
    """Parse the command-line string ``raw`` for field ``key`` of type ``tp``."""
    def fail(detail: str = "") -> ValueError:
        return UserError(f"cannot set {key}={raw!r}: expected {_type_name(tp)}{detail}. Example: ",
                         Setting(key, _example(tp)))

    if _is_union(tp):
        options = typing.get_args(tp)
        if type(None) in options and raw.lower() in ("none", "null"):
            return None
        # bool before str so that "true" in Union[str, bool] means True
        ordered = sorted(options, key=lambda t: (t is str, t is type(None)))
        for option in ordered:
            if option is type(None):
                continue
            try:
                return _parse(key, raw, option)
            except ValueError:
                continue
        raise fail()
    origin = typing.get_origin(tp)
    if tp is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise fail(" (true/false)")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise fail() from None
    if tp is float:
        try:
            value = float(raw)
        except ValueError:
            raise fail() from None
        if not math.isfinite(value):
            raise fail(" (a finite number)")
        return value
    if tp is str:
        return raw
    if tp is dict or origin is dict:
        return _json_value(raw, dict, " as a JSON object", fail)
    if origin is tuple:
        (item_tp, *_) = typing.get_args(tp) or (str,)
        text = raw.strip()
        if text in ("", "()", "[]"):
            return ()
        if text.startswith("["):
            items = _json_value(text, list, " as a JSON list", fail)
            return tuple(_coerce(key, v, item_tp) for v in items)
        return tuple(_parse(key, part.strip(), item_tp) for part in text.strip("()").split(","))
    raise fail()


def _example(tp: Any) -> str:
    examples = {int: "3", float: "0.05", bool: "true", str: "name", dict: '\'{"width": 0.5}\''}
    if _is_union(tp):
        return _example(next(t for t in typing.get_args(tp) if t is not type(None)))
    if typing.get_origin(tp) is tuple:
        return "60,120,160" if typing.get_args(tp)[0] is int else "0.5,0.5,0.5"
    if typing.get_origin(tp) is dict:
        return examples[dict]
    return examples.get(tp, "...")
