"""``artbank test`` for the stylizer: metrics per style and setting, and a report."""

from __future__ import annotations

import inspect
import itertools
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from artbank_pl.errors import ConfigError, DataError
from artbank_pl.grid import tile
from artbank_pl.metrics import CLIPImageEncoder, StyleTransferMetrics
from artbank_pl.options import check_at_least
from artbank_pl.report import results_text, write_report
from artbank_pl.styles import image_files, load_image, style_image_names
from artbank_pl.tasks.sampling import check_sampling
from artbank_pl.tasks.stylize import StylizeTask
from artbank_pl.vision import clip_resize_crop, load_vision_encoder
from artbank_pl.world.judges import load_judges

log = logging.getLogger(__name__)
MAX_EXEMPLARS = 32


def setting_label(strength: float, guidance_scale: float) -> str:
    """Name of one (strength, guidance) setting, e.g. ``strength=0.7 guidance=10``."""
    return f"strength={strength:g} guidance={guidance_scale:g}"


def exemplar_images(paths: list[Path], size: int) -> torch.Tensor:
    """Load images as one ``[N, 3, size, size]`` batch in ``[0, 1]``.

    Each goes through CLIP's own resize and centre crop, as outputs and contents do in the
    metrics' encoder (which then leaves a ``size`` square as it is).
    """
    return torch.cat([clip_resize_crop(load_image(p), size) for p in paths])


class StyleEvaluation:
    """The evaluation state of one ``artbank test`` run of an :class:`EvaluateTask`.

    Args:
        task: the evaluator (its hyperparameters choose model, exemplars and sweep).
    """

    def __init__(self, task) -> None:
        hp = task.hparams
        self.task = task
        strengths = hp.sweep_strengths or [hp.strength]
        scales = hp.sweep_guidance_scales or [hp.guidance_scale]
        self.settings = list(itertools.product(strengths, scales))
        encoder = CLIPImageEncoder(load_vision_encoder(self._metrics_model())).to(task.device)
        judges = load_judges(hp.judges).to(task.device) if hp.judges else None
        self.metrics = {
            setting_label(*s): StyleTransferMetrics(encoder, task.style_names, judges=judges).to(
                task.device
            )
            for s in self.settings
        }
        size = encoder.vision.config.image_size
        for k, style in enumerate(task.style_names):
            images = exemplar_images(self._exemplar_paths(style), size).to(task.device)
            for metrics in self.metrics.values():
                metrics.set_exemplars(k, images)
        self.samples: dict[str, list[list[Image.Image]]] = {}
        self.sample_keys: list[str] = []  # the content images shown in the grids, in order

    def _metrics_model(self) -> str:
        hp = self.task.hparams
        model = hp.metrics_model or getattr(self.task, "inverter_vision_model", None)
        if not model:
            raise ConfigError(
                "artbank test needs model.metrics_model: a CLIP model id, a local folder or tiny "
                "(pre-stage it with HF_HOME on offline machines)"
            )
        return model

    def _exemplar_paths(self, style: str) -> list[Path]:
        hp = self.task.hparams
        if hp.style_images:
            return [Path(style_image_names(hp.style_images)[style])]
        if not hp.exemplars:
            raise ConfigError(
                "artbank test with a bank needs model.exemplars (one folder per style)"
            )
        folder = Path(hp.exemplars) / style
        paths = image_files(folder) if folder.is_dir() else []
        if not paths:
            raise DataError(f"no exemplar images for style {style!r} in {folder}")
        return paths[:MAX_EXEMPLARS]

    @torch.no_grad()
    def step(self, batch: dict) -> None:
        """Stylize the batch under every setting and style; update the metrics."""
        task, hp = self.task, self.task.hparams
        keys, n = batch["__key__"], len(batch["__key__"])
        captions = batch.get("caption") or [""] * n
        contents = ((batch["pixel_values"] + 1) / 2).clamp(0, 1)
        z0 = task.content_latents(batch["pixel_values"])  # once for every setting and style
        for strength, scale in self.settings:
            label = setting_label(strength, scale)
            for k, style in enumerate(task.style_names):
                seeds = [task.seed_for(key, style) for key in keys]
                images = task._render(style, z0, captions, seeds, strength, scale)
                outputs = images.permute(0, 3, 1, 2).float().div(255).to(task.device)
                self.metrics[label].update(outputs, contents.to(task.device), [k] * n)
                self._keep(style, label, contents, images, hp.report_images)
        self.sample_keys += keys[: hp.report_images - len(self.sample_keys)]

    def _keep(self, style, label, contents, images, limit) -> None:
        rows = self.samples.setdefault(style, [[]])
        if label == setting_label(*self.settings[0]) and len(rows[0]) < limit:
            for c in contents[: limit - len(rows[0])]:
                rows[0].append(Image.fromarray((c * 255).byte().permute(1, 2, 0).cpu().numpy()))
        index = [setting_label(*s) for s in self.settings].index(label) + 1
        while len(rows) <= index:
            rows.append([])
        for image in images[: limit - len(rows[index])]:
            rows[index].append(Image.fromarray(image.numpy()))

    def finish(self, is_global_zero: bool) -> dict[str, dict[str, dict[str, float]]]:
        """Reduce the metrics over ranks; rank 0 writes ``metrics.json`` and the report."""
        results = {label: metrics.compute() for label, metrics in self.metrics.items()}
        if is_global_zero:
            labels = ["content"] + [setting_label(*s) for s in self.settings]
            grids = {}
            for style, rows in self.samples.items():
                grids[style] = tile(rows, self.sample_keys, 96, row_labels=labels)
            hp = self.task.hparams
            info = {
                "rows of each grid": labels, "prompt": hp.prompt, "inversion": hp.inversion,
                "steps": hp.steps, "seed": hp.seed, "styles": self.task.style_names,
            }  # fmt: skip
            paths = write_report(hp.report_dir, results, grids, info)
            print(results_text(results), flush=True)
            log.info("evaluation report: %s", paths["html"])
        return results


class EvaluateTask(StylizeTask):
    """Score stylization with CLIP (and the world's judges), and write a report (``artbank test``).

    It stylizes as :class:`~artbank_pl.tasks.StylizeTask` does (every option of it applies),
    under each (strength, guidance) setting of a sweep, and logs ``test/<metric>/<style>``
    (``test/<setting>/<metric>/<style>`` for a sweep).

    Args:
        metrics_model: CLIP model that scores outputs (a hub id, a local folder or ``tiny``;
            default: the inverter's own vision model).
        exemplars: folder with one sub-folder of images per bank collection, the style
            references (inverter styles use their style image).
        report_dir: where ``metrics.json`` and the report are written.
        sweep_strengths: strengths to compare (default: ``strength``).
        sweep_guidance_scales: guidance scales to compare (default: ``guidance_scale``).
        report_images: content images per style shown in the report's grids.
        judges: the planted world's judges (``world`` or a folder): adds ``style_accuracy``
            and ``content_accuracy`` per style, and ``content_iou`` with a mask judge.
        **stylize_args: the :class:`~artbank_pl.tasks.StylizeTask` options.
    """

    def __init__(
        self,
        metrics_model: str | None = None,
        exemplars: str | None = None,
        report_dir: str = "report",
        sweep_strengths: list[float] | None = None,
        sweep_guidance_scales: list[float] | None = None,
        report_images: int = 4,
        judges: str | None = None,
        **stylize_args: Any,
    ) -> None:
        _check_sweep(sweep_strengths or [], sweep_guidance_scales or [], stylize_args)
        check_at_least("model.report_images", report_images, 0)
        # the evaluation options reach self.hparams through save_hyperparameters, which
        # collects the arguments of every __init__ in the chain; StyleEvaluation reads them
        super().__init__(**stylize_args)

    def on_test_start(self) -> None:
        """Load the metrics model and the style exemplars."""
        self.evaluation = StyleEvaluation(self)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Stylize the test content under every setting and style, and score it."""
        self.evaluation.step(batch)

    def on_test_epoch_end(self) -> None:
        """Reduce the metrics, log them and write the report on rank 0.

        One setting logs ``test/<metric>/<style>``; a sweep logs every setting, labelled:
        ``test/strength=0.4_guidance=3/<metric>/<style>``.
        """
        results = self.evaluation.finish(self.trainer.is_global_zero)
        for setting, metrics in results.items():
            prefix = f"test/{setting.replace(' ', '_')}/" if len(results) > 1 else "test/"
            for metric, values in metrics.items():
                for style, value in values.items():
                    self.log(f"{prefix}{metric}/{style}", value, rank_zero_only=True)


def _check_sweep(strengths: list[float], scales: list[float], stylize_args: dict) -> None:
    """Check the swept settings against the stylizer's options before any model is loaded."""
    options = inspect.signature(StylizeTask).bind_partial(**stylize_args)
    options.apply_defaults()
    args = options.arguments
    for strength in strengths:
        check_sampling(strength, args["steps"], args["inversion"], args["scheduler"])
    for scale in scales:
        check_at_least("model.guidance_scale", scale, 0)
