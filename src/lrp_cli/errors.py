"""Error kinds, each with the process exit code the command-line contract gives it (DESIGN §5)."""


class LrpError(Exception):
    """An error reported to the user as one line; `exit_code` is what the command exits with."""

    exit_code = 1


class InputError(LrpError):
    """One input (image, tensor) cannot be explained; a batch goes on past it."""

    exit_code = 1


class OptionError(LrpError):
    """An option value that cannot be used (a usage error)."""

    exit_code = 2


class ModelLoadError(LrpError):
    """The model cannot be loaded or converted to the IR."""

    exit_code = 3
