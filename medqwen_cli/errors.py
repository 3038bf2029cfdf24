"""Known errors. Each says what was expected, what was found, and how to fix it.

The CLI turns any `MedqwenError` into two lines on stderr (`Error: ...` / `Hint: ...`) and exit
code 1; anything else is a bug and shows a traceback only under `MEDQWEN_DEBUG=1`.
"""

from __future__ import annotations


class MedqwenError(Exception):
    """Base class: `message` says what is wrong, `hint` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class RecipeError(MedqwenError):
    """A recipe file or a `--set` override is invalid. `problems` lists every (path, message)."""

    def __init__(
        self, message: str, hint: str | None = None, problems: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message, hint)
        self.problems = problems or []


class BaseModelError(MedqwenError):
    """A base model cannot be found or loaded."""


class BundleError(MedqwenError):
    """A bundle is missing, corrupt, locked, or from a newer format."""


class BundleLockedError(BundleError):
    """Another process holds the bundle's write lock."""


class BundleIntegrityError(BundleError):
    """Files of a bundle are missing or differ from their recorded sha256.

    `damaged` maps each such file, as a path relative to the bundle, to what is wrong with it.
    """

    def __init__(
        self, message: str, hint: str | None = None, damaged: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, hint)
        self.damaged = damaged or {}


class AdapterError(MedqwenError):
    """Adapter settings do not fit the model (rank too large, no target matched, ...)."""


class DataError(MedqwenError):
    """A dataset file or record is invalid; the message names the file and line."""


class MissingSplit(DataError):
    """A dataset has no records for the split asked for: a single file holds one split, the
    training one. Training and `--watch` fail on it; `validate` warns, and `evaluate` and
    `continue` leave the dataset out of the scores with a note."""


class TrainingError(MedqwenError):
    """Training cannot go on (non-finite loss, ...); the last good checkpoint is kept."""


class AlreadyTrained(TrainingError):
    """The head version already trained a task the run asks for, another way (another recipe,
    other tasks beside it); `version` is the head. `--again` trains the task again."""

    def __init__(self, message: str, hint: str | None = None, version: str = "") -> None:
        super().__init__(message, hint)
        self.version = version


class EvaluationError(MedqwenError):
    """An evaluation cannot be run or a report cannot be built."""


class Interrupted(BaseException):
    """Ctrl-C stopped a command mid-way: `message` says where, `hint` how to go on (exit 130).

    A BaseException like KeyboardInterrupt, not a MedqwenError, so no handler of errors swallows
    it; and not a KeyboardInterrupt, which typer turns into a silent exit 130.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
