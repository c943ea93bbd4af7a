"""One exception type for every user-facing failure.

The CLI turns an `EdgeconvError` into one readable line and a non-zero exit; anything else is a bug and keeps its
traceback.
"""


class EdgeconvError(Exception):
    """A failure caused by the user's input or environment, explained in one line."""


class MissingDependencyError(EdgeconvError):
    """An optional backend or extra is not installed."""

    def __init__(self, what: str, hint: str):
        super().__init__(f"{what} is not available: {hint}")
        self.hint = hint
