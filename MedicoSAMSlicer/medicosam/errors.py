"""The error types of every MedicoSAM layer. Each message names the problem and how to fix it.

Five kinds, one per thing that can be wrong, raised directly by every module (core, effect,
training); a subclass exists only where some code catches that case on purpose. `medicosam`
commands turn any of them into one line on stderr and exit status 2; `Cancelled` (and Ctrl-C) into
one "stopped" line and exit status 130, as a shell reports an interrupted command.
"""


class MedicoSAMError(Exception):
    """Base of every error MedicoSAM raises on purpose (bad input, bad file, no network...)."""


class InputError(MedicoSAMError, ValueError):
    """A value the caller chose cannot be used: an argument, a setting, a prompt, a configuration."""


class DataError(MedicoSAMError, ValueError):
    """A file or folder of data cannot be used: a volume, mask, markups, data set, results table."""


class ModelError(MedicoSAMError, ValueError):
    """A model cannot be used: unknown name, damaged or incompatible checkpoint, wrong decoder."""


class DownloadError(MedicoSAMError, OSError):
    """A model file cannot be fetched or cached: network, offline mode, hash, cache folder."""


class RunError(MedicoSAMError, RuntimeError):
    """A run failed part-way: training diverged, a worker died, the device ran out of memory."""


class Cancelled(MedicoSAMError):
    """The user stopped the operation (a download, a propagation); nothing half-done was kept."""
