"""Device and dtype choice: CUDA with bf16/fp16 when present, else CPU fp32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from serving.errors import InvalidInput

if TYPE_CHECKING:
    import torch

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def resolve_placement(device: str, dtype: str) -> Placement:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidInput("device", f"{device!r} requested but CUDA is not available on this machine")
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise InvalidInput("device", f"{device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    dev = torch.device(device)
    if dtype == "auto":
        if dev.type == "cuda":
            chosen = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            chosen = torch.float32
    else:
        chosen = getattr(torch, _DTYPES[dtype])
    return Placement(dev, chosen)
