"""What the UNet is conditioned on: prompt hidden states; on SDXL pooled text and sizes.

SD 1.x/2.x read one ``[B, L, d]`` tensor; SDXL (Podell et al. 2023, Sec. 2.2) also reads the
second text encoder's pooled, projected embedding (``text_embeds``) and per sample the
original size, the crop's top-left corner and the target size (``time_ids``). One value
holds all three, so that guidance, padding and batching treat them the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextConditioning:
    """The UNet's conditioning for a batch.

    Attributes:
        hidden_states: ``[B, L, d]`` prompt hidden states (SDXL: both encoders' concatenated).
        pooled: ``[B, p]`` SDXL's pooled text embedding, else ``None``.
        time_ids: ``[B, 6]`` SDXL's micro-conditioning ``(h0, w0, top, left, h, w)``, else
            ``None`` (filled in from the image size where it is missing).
    """

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TextConditioning:
        """Apply ``fn`` to every tensor held (a row-wise operation)."""
        return TextConditioning(*(None if x is None else fn(x) for x in self._fields()))

    def _fields(self) -> tuple[torch.Tensor | None, ...]:
        return self.hidden_states, self.pooled, self.time_ids

    def expand(self, count: int) -> TextConditioning:
        """Broadcast one row (or ``count`` rows) to ``count`` rows without a copy."""
        return self.map(lambda x: x.expand(count, *x.shape[1:]))

    def with_time_ids(self, time_ids: torch.Tensor | None) -> TextConditioning:
        """Return this conditioning with ``time_ids`` (``[B, 6]`` or one row) where it has none."""
        if self.pooled is None or self.time_ids is not None or time_ids is None:
            return self
        ids = time_ids.to(self.hidden_states.device, torch.float32)
        return TextConditioning(self.hidden_states, self.pooled, ids.expand(len(self), -1))

    def unet_kwargs(self, dtype: torch.dtype) -> dict:
        """Keyword arguments of ``UNet2DConditionModel.forward`` in the UNet's ``dtype``."""
        kwargs: dict = {"encoder_hidden_states": self.hidden_states.to(dtype)}
        if self.pooled is not None:
            if self.time_ids is None:
                raise ValueError("SDXL conditioning without time_ids (micro-conditioning)")
            kwargs["added_cond_kwargs"] = {
                "text_embeds": self.pooled.to(dtype),
                "time_ids": self.time_ids.to(dtype),
            }
        return kwargs


def as_conditioning(value: torch.Tensor | TextConditioning) -> TextConditioning:
    """Wrap a bare ``[B, L, d]`` tensor (SD 1.x/2.x) as a :class:`TextConditioning`."""
    return value if isinstance(value, TextConditioning) else TextConditioning(value)


def cat_conditioning(items: Sequence[TextConditioning]) -> TextConditioning:
    """Concatenate conditionings row-wise (e.g. the two halves of guidance)."""
    fields = list(zip(*(item._fields() for item in items), strict=True))
    return TextConditioning(*(None if x[0] is None else torch.cat(list(x)) for x in fields))


def micro_conditioning(
    original_sizes: torch.Tensor, crops_top_left: torch.Tensor, target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL's ``add_time_ids`` rows: ``(h0, w0, top, left, h, w)`` per sample (Sec. 2.2).

    Args:
        original_sizes: ``[B, 2]`` each image's height and width before resizing.
        crops_top_left: ``[B, 2]`` the crop's top and left corner in the resized image.
        target_size: the trained or rendered ``(height, width)`` in pixels.
    """
    target = torch.empty_like(original_sizes)
    target[:, 0], target[:, 1] = target_size  # filled on the device: no host copy
    return torch.cat([original_sizes, crops_top_left, target], dim=1).float()


def repad(ids: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """Re-pad ``[B, L]`` ids of one CLIP tokenizer with another one's ``pad_id``.

    SDXL's two tokenizers share the vocabulary and differ only in padding (``<|endoftext|>``
    against ``!``): every position after a row's first ``eos_id`` is padding. Found on the
    device, without a host round trip.
    """
    is_eos = ids == eos_id
    seen = is_eos.int().cumsum(dim=1)
    after_first = (seen > 1) | ((seen == 1) & ~is_eos)
    return ids.masked_fill(after_first, pad_id)
