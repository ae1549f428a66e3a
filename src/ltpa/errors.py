"""User errors that say how to fix them, in the caller's own terms.

A library message must not prescribe command-line flags (a library caller has none), and the
CLI must not make its users translate argument names into flags. So a :class:`UserError` holds
its fix as structured *remedies* between plain text parts::

    raise UserError(f"output folder {str(out)!r} is not empty; choose a new folder or ",
                    Option("overwrite"), " to replace the earlier result")

``str(err)`` reads in library terms (``... or pass overwrite=True to replace ...``);
``err.render(cli=True)`` reads in the CLI's (``... or pass --overwrite to replace ...``), which
is what ``ltpa`` prints. It is a ``ValueError``, so ``except ValueError`` keeps working.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Remedied", "UserError", "MissingFileError", "Remedy", "Setting", "Option", "Phrase", "render_error"]


class Remedy:
    """A fix the user can apply, rendered for a library caller or for the command line."""

    def library(self) -> str:
        raise NotImplementedError

    def cli(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Setting(Remedy):
    """Change a training-config key: ``set lr=0.01 in the config`` / ``pass --set lr=0.01``.

    ``value`` None leaves the value to the user (``lr=...``).
    """

    key: str
    value: Any = None

    def _assignment(self, cli: bool) -> str:
        return f"{self.key}={'...' if self.value is None else _text(self.value, cli)}"

    def library(self) -> str:
        return f"set {self._assignment(False)} in the config"

    def cli(self) -> str:
        return f"pass --set {self._assignment(True)}"


@dataclass(frozen=True)
class Option(Remedy):
    """Pass a function argument / a command option: ``pass overwrite=True`` / ``pass --overwrite``.

    Args:
        name: the argument name (``overwrite``, ``batch_size``); the flag is the same name with
            dashes unless ``flag`` says otherwise.
        value: the value to pass; None or True for a switch (``True`` in the library, the bare
            flag on the command line), False to leave a switch out (``drop --download``).
        flag: the command-line flag when it is not ``--`` + ``name`` with dashes.
    """

    name: str
    value: Any = None
    flag: str | None = None

    def library(self) -> str:
        return f"pass {self.name}={'True' if self.value is None else _text(self.value, False)}"

    def cli(self) -> str:
        flag = self.flag or "--" + self.name.replace("_", "-")
        if self.value is None or self.value is True:
            return f"pass {flag}"
        if self.value is False:  # a switch to leave out
            return f"drop {flag}"
        return f"pass {flag} {_text(self.value, True)}"


@dataclass(frozen=True)
class Phrase(Remedy):
    """A fix worded once for each audience, when no single argument maps onto one flag
    (``hold_out(evaluation, 50)`` in the library is ``--calibrate 50`` on the command line)."""

    library_text: str
    cli_text: str

    def library(self) -> str:
        return self.library_text

    def cli(self) -> str:
        return self.cli_text


def _text(value: Any, cli: bool) -> str:
    if isinstance(value, bool):  # Python's spelling in the library, the config parser's on the command line
        return ("true" if value else "false") if cli else repr(value)
    return str(value)


class Remedied:
    """The message-with-remedies behaviour shared by :class:`UserError`, :class:`MissingFileError`
    and the trainer's stop errors; mix it in before the exception type."""

    def __init__(self, *parts: str | Remedy):
        for part in parts:
            if not isinstance(part, (str, Remedy)):
                raise TypeError(f"{type(self).__name__} parts must be str or Remedy, got {type(part).__name__}")
        self.parts = parts
        super().__init__(self.render())

    @property
    def remedies(self) -> tuple[Remedy, ...]:
        return tuple(part for part in self.parts if isinstance(part, Remedy))

    def render(self, *, cli: bool = False) -> str:
        """The message with each remedy in library terms, or as command-line flags (``cli``)."""
        return "".join(part if isinstance(part, str) else (part.cli() if cli else part.library())
                       for part in self.parts)

    def __str__(self) -> str:
        return self.render()

    def __reduce__(self):  # picklable across processes (e.g. a DataLoader worker)
        return (type(self), self.parts)


_Remedied = Remedied  # the earlier name


class UserError(Remedied, ValueError):
    """A ``ValueError`` whose message is text parts and :class:`Remedy` parts.

    Args:
        parts: ``str`` pieces and remedies, joined in order.
    """


class MissingFileError(Remedied, FileNotFoundError):
    """A ``FileNotFoundError`` whose message is text parts and :class:`Remedy` parts (as
    :class:`UserError`), for files the user can fetch or create."""


def render_error(err: BaseException, *, cli: bool = False) -> str:
    """``err``'s message, its remedies rendered for the command line when ``cli``."""
    return err.render(cli=cli) if isinstance(err, Remedied) else str(err)
