"""Error kinds and their exit codes.

User errors (a bad flag, a bad model, an op the target cannot run, failed validation) are reported
as one line with a documented exit code. Anything else is an internal error: the CLI says so and
writes a reproducer. The codes are part of the CLI contract and listed in the README.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BAD_MODEL = 3
EXIT_VALIDATION_FAILED = 4
EXIT_UNSUPPORTED = 5
EXIT_INTERNAL = 70


class MccError(Exception):
    """Base of every error mcc reports to a user as one line."""

    exit_code = EXIT_INTERNAL
    kind = "error"


class UsageError(MccError):
    """Bad command-line usage: unknown pass, malformed option, unwritable output."""

    exit_code = EXIT_USAGE
    kind = "usage error"


class ModelError(MccError):
    """The input model cannot be read, checked or made static."""

    exit_code = EXIT_BAD_MODEL
    kind = "bad model"


class UnsupportedError(MccError):
    """The model uses something the chosen target's backend cannot compile."""

    exit_code = EXIT_UNSUPPORTED
    kind = "unsupported"


class ValidationFailed(MccError):
    """The compiled artifact disagrees with the reference beyond tolerance."""

    exit_code = EXIT_VALIDATION_FAILED
    kind = "validation failed"


class PassError(MccError):
    """A pass broke an invariant (precondition or verification after it ran).

    This is a defect of mcc (or of a plugin pass), so it exits as an internal error.
    """

    exit_code = EXIT_INTERNAL
    kind = "internal error"

    def __init__(self, pass_name: str, message: str):
        super().__init__(f"pass '{pass_name}': {message}")
        self.pass_name = pass_name
