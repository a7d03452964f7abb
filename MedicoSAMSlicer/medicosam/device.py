"""Torch device choice shared by the CLI, the Slicer effect and training."""

from __future__ import annotations

from .errors import MedicoSAMError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def get_device(name: str = "auto"):
    """`torch.device` for "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda[:n]" or "mps"."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.split(":")[0] not in DEVICE_CHOICES[1:]:
        raise MedicoSAMError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedicoSAMError("device 'cuda' was asked for but torch sees no CUDA GPU: use --device cpu "
                             "or install a CUDA build of torch")
    return torch.device(name)
