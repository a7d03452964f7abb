"""Error types. Every message names the problem and how to fix it."""


class MedicoSAMError(Exception):
    """Base of every error MedicoSAM raises on purpose (bad input, bad file, no network...)."""
