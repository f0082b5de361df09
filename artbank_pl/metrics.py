"""Metrics that reduce correctly across DDP ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.data import dim_zero_cat

from artbank_pl.vision import clip_preprocess


class PerCollectionMean(Metric):
    """Mean of a per-sample value within each collection, summed over ranks before dividing.

    Every rank holds the same ``[K]`` states, so the reduction is one collective even
    when a rank saw no sample of some collection.

    Args:
        num_collections: K.
    """

    full_state_update = False

    def __init__(self, num_collections: int) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(num_collections, dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros(num_collections, dtype=torch.float64), "sum")

    def update(self, values: torch.Tensor, collection_idx: torch.Tensor) -> None:
        """Add per-sample ``values`` ``[B]`` of collections ``collection_idx`` ``[B]``."""
        values = values.detach().to(self.total.dtype)
        self.total.index_add_(0, collection_idx, values)
        self.count.index_add_(0, collection_idx, torch.ones_like(values))

    def compute(self) -> dict[str, torch.Tensor]:
        """Return ``{"mean": [K] (nan where no sample), "count": [K], "overall": scalar}``.

        Use :meth:`per_collection` to read it: torchmetrics squeezes one-element results,
        so with K = 1 the ``[K]`` tensors come back 0-dim from ``compute()``.
        """
        mean = self.total / self.count.clamp(min=1)
        mean = torch.where(self.count > 0, mean, torch.nan)
        overall = self.total.sum() / self.count.sum().clamp(min=1)
        return {"mean": mean.float(), "count": self.count, "overall": overall.float()}

    def per_collection(self) -> dict[str, torch.Tensor]:
        """``compute()`` (synced across ranks) with ``mean`` and ``count`` shaped ``[K]``."""
        result = self.compute()
        k = self.total.shape[0]
        return result | {"mean": result["mean"].reshape(k), "count": result["count"].reshape(k)}


class CLIPImageEncoder(nn.Module):
    """Unit-norm CLIP image embeddings of ``[0, 1]`` images, as a torchmetrics feature model.

    Args:
        vision: a frozen ``CLIPVisionModelWithProjection`` (the run's own, or one loaded by
            name with :func:`artbank_pl.vision.load_vision_encoder`).
    """

    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        self.vision = vision

    @property
    def num_features(self) -> int:
        """Embedding width (read by torchmetrics' FID)."""
        return self.vision.config.projection_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed ``[N, 3, H, W]`` images in ``[0, 1]`` (uint8 is rescaled) as ``[N, d]``."""
        if images.dtype == torch.uint8:
            images = images.float() / 255
        device = next(self.vision.parameters()).device
        dtype = next(self.vision.parameters()).dtype
        pixels = clip_preprocess(images.to(device) * 2 - 1, self.vision.config.image_size)
        embeds = self.vision(pixel_values=pixels.to(dtype)).image_embeds.float()
        return F.normalize(embeds, dim=-1)


class LabeledFeatures(Metric):
    """Feature vectors with their collection index, gathered from every rank on compute."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("features", [], dist_reduce_fx="cat")
        self.add_state("labels", [], dist_reduce_fx="cat")

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add ``[B, d]`` features of collections ``[B]``."""
        self.features.append(features.detach().float())
        self.labels.append(labels.detach().to(features.device))

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return all features ``[N, d]`` and labels ``[N]``."""
        return dim_zero_cat(self.features), dim_zero_cat(self.labels)

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``compute()`` with labels shaped ``[N]`` (torchmetrics squeezes N = 1 to 0-dim)."""
        features, labels = self.compute()
        return features.reshape(-1, features.shape[-1]), labels.reshape(-1)


class _Identity(nn.Module):
    """Feature model for torchmetrics that takes already-computed features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the features as they are (float64 for FID's covariance)."""
        return features.double()


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """KID (Binkowski et al. 2018, Eq. 4: unbiased MMD^2, cubic polynomial kernel) of two sets."""
    metric = KernelInceptionDistance(
        feature=_Identity(real.shape[1]), subset_size=min(len(real), len(fake)),
        subsets=1, sync_on_compute=False,
    )  # fmt: skip
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):  # the subset draw: the same on every rank and run
        torch.manual_seed(0)
        return float(metric.compute()[0])


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID (Heusel et al. 2017, Eq. 6) of two feature sets, through torchmetrics."""
    metric = FrechetInceptionDistance(feature=_Identity(real.shape[1]), sync_on_compute=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


class StyleTransferMetrics(nn.Module):
    """Style, content and distribution metrics per collection, reduced across DDP ranks.

    - ``style_sim``: cosine similarity of CLIP features between each output and its
      collection's exemplars (their normalised mean feature);
    - ``content_sim``: cosine similarity of CLIP features between output and content;
    - ``ssim``: SSIM between output and content (torchmetrics);
    - ``kid`` (and ``fid`` once both sets hold ``fid_min_samples``): KID and FID on CLIP
      features (torchmetrics), outputs against the collection's exemplars.

    Exemplars are given to every rank alike; outputs are gathered from all ranks, so the
    values do not depend on the number of processes.

    With ``judges`` (the planted world's classifiers, :mod:`artbank_pl.world.judges`):

    - ``style_accuracy``: the fraction of outputs the style judge assigns to the style its
      exemplars are judged to have (their majority vote);
    - ``content_accuracy``: the fraction of outputs whose shape the content judge reads as
      the shape it reads in the content image (a prompt naming the shape can supply it);
    - ``content_iou``: the mean IoU of the shape masks the mask judge reads in output and
      content image (position and size, which no prompt supplies), when the judges have one.

    Args:
        encoder: the CLIP feature model.
        collections: collection (style) names, in index order.
        fid_min_samples: samples per set below which FID is not reported (default: the
            feature width, under which the covariance is singular).
        judges: the world's judges, or ``None``.
    """

    def __init__(
        self,
        encoder: CLIPImageEncoder,
        collections: list[str],
        fid_min_samples: int | None = None,
        judges=None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.collections = list(collections)
        k = len(self.collections)
        self.style_sim = PerCollectionMean(k)
        self.content_sim = PerCollectionMean(k)
        self.ssim = PerCollectionMean(k)
        self.style_accuracy = PerCollectionMean(k)
        self.content_accuracy = PerCollectionMean(k)
        self.content_iou = PerCollectionMean(k)
        self.outputs = LabeledFeatures()
        self.exemplars: dict[int, torch.Tensor] = {}
        self.judges = judges
        self.intended_styles: dict[int, str] = {}
        self.fid_min_samples = fid_min_samples or encoder.num_features

    @torch.no_grad()
    def set_exemplars(self, collection: int, images: torch.Tensor) -> None:
        """Record a collection's exemplar images ``[N, 3, H, W]`` in ``[0, 1]``."""
        self.exemplars[collection] = self.encoder(images)
        if self.judges is not None:
            votes = self.judges.predict("style", images)
            self.intended_styles[collection] = max(set(votes), key=votes.count)

    def _update_judged(self, outputs, contents, idx: torch.Tensor) -> None:
        styles = self.judges.predict("style", outputs)
        intended = [self.intended_styles[k] for k in idx.tolist()]
        hits = [float(a == b) for a, b in zip(styles, intended, strict=True)]
        self.style_accuracy.update(torch.tensor(hits, device=idx.device), idx)
        shapes = self.judges.predict("content", outputs)
        expected = self.judges.predict("content", contents)
        hits = [float(a == b) for a, b in zip(shapes, expected, strict=True)]
        self.content_accuracy.update(torch.tensor(hits, device=idx.device), idx)
        if self.judges.mask is not None:
            self.content_iou.update(self.judges.content_iou(outputs, contents).to(idx.device), idx)

    @torch.no_grad()
    def update(self, outputs: torch.Tensor, contents: torch.Tensor, collection_idx) -> None:
        """Add outputs and their contents (``[B, 3, H, W]``, ``[0, 1]``) of collections ``[B]``."""
        out_f, content_f = self.encoder(outputs), self.encoder(contents)
        idx = torch.as_tensor(collection_idx, device=out_f.device)
        centres = torch.stack(
            [F.normalize(self.exemplars[k].mean(0), dim=-1) for k in idx.tolist()]
        )
        self.style_sim.update((out_f * centres).sum(-1), idx)
        self.content_sim.update((out_f * content_f).sum(-1), idx)
        ssim = structural_similarity_index_measure(
            outputs.float(), contents.float().to(outputs.device), data_range=1.0, reduction="none"
        )
        self.ssim.update(ssim.to(idx.device), idx)
        self.outputs.update(out_f, idx)
        if self.judges is not None:
            self._update_judged(outputs, contents, idx)

    def compute(self) -> dict[str, dict[str, float]]:
        """Return ``{metric: {collection: value}}`` for the collections that have outputs."""
        result: dict[str, dict[str, float]] = {}
        counts = self.style_sim.per_collection()["count"]
        names = ["style_sim", "content_sim", "ssim"]
        names += ["style_accuracy", "content_accuracy"] if self.judges is not None else []
        names += ["content_iou"] if self.judges is not None and self.judges.mask else []
        for name in names:
            means = getattr(self, name).per_collection()["mean"]
            result[name] = {c: float(means[k]) for k, c in enumerate(self.collections) if counts[k]}
        features, labels = self.outputs.gathered()
        for k, c in enumerate(self.collections):
            fake, real = features[labels == k], self.exemplars.get(k)
            if real is None or min(len(fake), len(real)) < 2:
                continue
            result.setdefault("kid", {})[c] = kernel_inception_distance(real, fake)
            if min(len(fake), len(real)) >= self.fid_min_samples:
                result.setdefault("fid", {})[c] = frechet_distance(real, fake)
        return result

    def reset(self) -> None:
        """Forget the outputs (exemplars stay)."""
        for metric in self.tracked():
            metric.reset()

    def tracked(self) -> tuple[Metric, ...]:
        """Return the torchmetrics states that accumulate outputs."""
        return (
            self.style_sim, self.content_sim, self.ssim, self.style_accuracy,
            self.content_accuracy, self.content_iou, self.outputs,
        )  # fmt: skip
