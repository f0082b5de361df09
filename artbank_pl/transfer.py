"""Host-to-device copies that do not make the host wait for the GPU.

A blocking host-to-CUDA copy synchronises the host with the device: the training step then
stops queueing work until the GPU has drained, once per copy. Copies from pinned memory
with ``non_blocking=True`` are queued on the stream instead, and PyTorch's pinned-memory
allocator keeps the host buffer alive until the copy has run.
"""

from __future__ import annotations

import torch


def upload(data, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``data`` (a host tensor, or nested lists of numbers) as a tensor on ``device``.

    Args:
        data: a tensor or what ``torch.tensor`` takes.
        device: the target device.
        dtype: the dtype of a tensor built from lists (``None``: inferred).
    """
    host = data if torch.is_tensor(data) else torch.tensor(data, dtype=dtype)
    device = torch.device(device)
    if device.type != "cuda" or host.device.type != "cpu":
        return host.to(device)  # the same tensor when it is there already
    return host.pin_memory().to(device, non_blocking=True)
