"""The catalogue of hostile inputs and what the product must do with each.

One :class:`Case` per category: how to build the input and run the product on it
(:mod:`tests.hostile_runs`), and the expected outcome: exit code, a piece of the one line
(or of the log line naming a skip), the skip count and exactly which good samples are used.
``python -m tests.hostile_cases`` lists the categories by outcome.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from tests import hostile
from tests.hostile_runs import (
    BASE_IMAGES,
    Observed,
    content_stream,
    fit,
    image_tree,
    predict,
    run_main,
    run_tool,
    shards_build,
    training_stream,
)


@dataclass(frozen=True)
class Case:
    """One hostile-input category and its expected outcome.

    Attributes:
        category: what is hostile, as a user would say it.
        run: builds the input under a folder and runs the product on it.
        exit: the exit code (0: the run goes on; 1: one line, nothing else).
        line: text the one line (exit 1) or the console and log (exit 0) must hold.
        skipped: the skip count the product reports.
        used: exactly the good samples the product must use (keys or sources).
    """

    category: str
    run: Callable[[Path], Observed]
    exit: int = 0
    line: str = ""
    skipped: int = 0
    used: frozenset[str] = frozenset()

    @property
    def outcome(self) -> str:
        """``one line``, ``skipped and counted`` or ``accepted``."""
        if self.exit:
            return "one line, exit 1"
        return "skipped and counted" if self.skipped else "accepted, nothing lost"


BASE = frozenset(BASE_IMAGES)
TRAIN_KEYS = frozenset({"hokusai__wave", "monet__lilies", "monet__poppies"})
PHOTOS = frozenset({"house/monet", "house/ukiyo", "tree/monet", "tree/ukiyo"})


def fit_with(*options: str, **kwargs) -> Callable[[Path], Observed]:
    """``artbank fit`` in a demo layout with ``options`` (see :func:`tests.hostile_runs.fit`)."""
    return lambda ws: fit(ws, *options, **kwargs)


def predict_with(*options: str, **kwargs) -> Callable[[Path], Observed]:
    """``artbank predict`` with ``options`` (see :func:`tests.hostile_runs.predict`)."""
    return lambda ws: predict(ws, *options, **kwargs)


def build_with(extra: dict[str, Callable[[Path], Path]]) -> Callable[[Path], Observed]:
    """``shards build`` on the base images plus ``extra`` (relative path -> writer)."""
    return partial(shards_build, extra=extra)


def content_with(extra: dict[str, Callable[[Path], Path]]) -> Callable[[Path], Observed]:
    """Content images ``house.png`` and ``tree.png`` plus ``extra`` (relative path -> writer)."""
    good = {"house.png": hostile.good_image, "tree.png": hostile.good_image}
    return partial(content_stream, extra=good | extra)


def _symlinked(root: Path) -> Path:
    hostile.good_image(root / "elsewhere/boats.png")
    (root / "monet/linked").symlink_to(root / "elsewhere", target_is_directory=True)
    (root / "monet/loop").symlink_to(root / "monet", target_is_directory=True)
    return root


def _tree_then(change: Callable[[Path], object]) -> Callable[[Path], Observed]:
    """``shards build`` on a base tree that ``change`` edits first."""

    def run(ws: Path) -> Observed:
        root = image_tree(ws / "in")
        change(root)
        return shards_build(ws, images=root)

    return run


def _output_is_a_file(ws: Path) -> Observed:
    (ws / "a-file").write_text("a file")
    return shards_build(ws, out=ws / "a-file")


def _output_under_a_file(ws: Path) -> Observed:
    (ws / "a-file").write_text("a file")
    return shards_build(ws, out=ws / "a-file/shards")


def _output_under_proc(ws: Path) -> Observed:
    return shards_build(ws, out=Path("/proc/artbank-hostile/shards"))


def _no_readable_image(ws: Path) -> Observed:
    (ws / "in/monet").mkdir(parents=True)
    hostile.not_an_image(ws / "in/monet/x.png")
    return shards_build(ws, images=ws / "in")


SHARDS_BUILD = [
    Case("image: not an image", build_with({"monet/broken.png": hostile.not_an_image}),
         line="broken.png", skipped=1, used=BASE),
    Case("image: empty file", build_with({"monet/empty.jpg": hostile.empty_file}),
         line="empty.jpg", skipped=1, used=BASE),
    Case("image: truncated PNG", build_with({"monet/cut.png": hostile.truncated_image}),
         line="cut.png", skipped=1, used=BASE),
    Case("image: decompression bomb", build_with({"monet/bomb.png": hostile.decompression_bomb}),
         line="bomb.png", skipped=1, used=BASE),
    Case("image: 60000 x 1 strip", build_with({"monet/strip.png": hostile.elongated}),
         line="too elongated", skipped=1, used=BASE),
    Case("caption: invalid UTF-8", build_with({"monet/lilies.txt": hostile.bad_utf8_caption}),
         line="lilies.png", skipped=1, used=BASE - {"monet/lilies.png"}),
    Case("image: 16-bit greyscale PNG", build_with({"monet/grey.png": hostile.grey16}),
         used=BASE | {"monet/grey.png"}),
    Case("collection: symlinked sub-folder (and a link loop)", _tree_then(_symlinked),
         used=BASE | {"monet/linked/boats.png", "elsewhere/boats.png"}),
    Case("collection: empty folder", _tree_then(lambda root: (root / "degas").mkdir()),
         line="left out collection folder", used=BASE),
    Case("collection: one stem, two formats (x.png, x.jpg)",
         build_with({"monet/x.png": hostile.good_image, "monet/x.jpg": hostile.good_image}),
         used=BASE | {"monet/x.png", "monet/x.jpg"}),
    Case("collection: one file name in two sub-folders",
         build_with({"monet/a/x.png": hostile.good_image, "monet/b/x.png": hostile.good_image}),
         used=BASE | {"monet/a/x.png", "monet/b/x.png"}),
    Case("shards build: --input missing", partial(shards_build, images=Path("/nonexistent/in")),
         exit=1, line="--input /nonexistent/in is not a folder"),
    Case("shards build: --input without collection folders",
         _tree_then(lambda root: [p.rename(root / p.name) for p in root.glob("*/*.png")]),
         exit=1, line="has no collection folders"),
    Case("shards build: no readable image at all", _no_readable_image,
         exit=1, line="no readable image under"),
    Case("shards build: --output an existing file", _output_is_a_file,
         exit=1, line="a-file: File exists"),
    Case("shards build: --output under a file", _output_under_a_file,
         exit=1, line="a-file/shards: Not a directory"),
    Case("shards build: --output under /proc (cannot be made)", _output_under_proc,
         exit=1, line="/proc/artbank-hostile: No such file or directory"),
    Case("shards build: --size negative", partial(shards_build, options=["--size", "-8"]),
         exit=1, line="--size must be >= 0, got -8"),
    Case("shards build: --maxcount 0", partial(shards_build, options=["--maxcount", "0"]),
         exit=1, line="--maxcount must be >= 1, got 0"),
    Case("shards build: --quality out of 1..100",
         partial(shards_build, options=["--format", "jpg", "--quality", "300"]),
         exit=1, line="--quality must be in 1..100, got 300"),
]  # fmt: skip


def _garbage_manifest(ws: Path) -> Observed:
    (ws / "garbage.json").write_bytes(b"\xff\xfe{not json")
    return fit(ws, "--data.init_args.manifest", "garbage.json")


def _train(splits: dict) -> Callable[[dict], dict]:
    return lambda manifest: {**manifest, "splits": splits}


MANIFESTS = [
    Case("manifest: a JSON list", fit_with(manifest_edit=lambda m: [m]),
         exit=1, line="not an artbank shard manifest"),
    Case("manifest: collections a string",
         fit_with(manifest_edit=lambda m: {**m, "collections": "monet"}),
         exit=1, line="'collections' must be a non-empty list"),
    Case("manifest: collection entry without index",
         fit_with(manifest_edit=lambda m: {**m, "collections": [{"name": "monet"}]}),
         exit=1, line="needs a 'name' and an 'index'"),
    Case("manifest: names missing shards",
         fit_with(manifest_edit=_train({"train": {"shards": ["gone.tar"]}})),
         exit=1, line="names 1 missing shard(s): ['gone.tar']"),
    Case("manifest: held-out keys a list instead of collection -> keys",
         fit_with(manifest_edit=lambda m: {**m, "splits": {**m["splits"], "val": {
             "shards": m["splits"]["train"]["shards"], "keys": ["k1", "k2"]}}}),
         exit=1, line="splits.val.keys must map collections to key lists"),
    Case("manifest: shards not a list",
         fit_with(manifest_edit=_train({"train": {"shards": "train-000000.tar"}})),
         exit=1, line="splits.train.shards must be a list of file names"),
    Case("manifest: /etc/passwd as a shard",
         fit_with(manifest_edit=_train({"train": {"shards": ["/etc/passwd"]}})),
         exit=1, line="shard '/etc/passwd' is outside the manifest's folder"),
    Case("manifest: not JSON (invalid UTF-8)", _garbage_manifest,
         exit=1, line="manifest garbage.json is not valid JSON"),
    Case("manifest: missing file",
         fit_with("--data.init_args.manifest", "absent/manifest.json"),
         exit=1, line="manifest absent/manifest.json does not exist"),
]  # fmt: skip


def stream_with(extra=None, good: int = 3) -> Callable[[Path], Observed]:
    """The training stream over the demo shards plus ``extra`` shards (name -> writer)."""
    return partial(training_stream, extra_shards=extra or {}, good=good)


def _mixed_shard(bad: dict) -> Callable[[Path], Path]:
    """A shard holding one bad sample and one good one (key ``extra_good``)."""
    return lambda path: hostile.shard(path, [bad, hostile.artwork("extra_good", "monet")])


TRAINING_STREAM = [
    Case("shard: truncated", stream_with({"cut.tar": hostile.truncated_shard}),
         line="unreadable shard", skipped=1, used=TRAIN_KEYS),
    Case("shard: garbage bytes", stream_with({"junk.tar": hostile.garbage_shard}),
         line="junk.tar", skipped=1, used=TRAIN_KEYS),
    Case("shard: empty file", stream_with({"empty.tar": hostile.empty_file}),
         line="empty.tar", skipped=1, used=TRAIN_KEYS),
    Case("sample: JSON not an object",
         stream_with(good=4, extra={
             "mixed.tar": _mixed_shard(hostile.artwork("bad", "monet", meta=[1, 2]))}),
         line="skipping sample bad", skipped=1, used=TRAIN_KEYS | {"extra_good"}),
    Case("sample: caption a number",
         stream_with(good=4, extra={"mixed.tar": _mixed_shard(
             hostile.artwork("bad", "monet", meta={"collection": "monet", "caption": 7}))}),
         line="its caption is of type int, not text", skipped=1, used=TRAIN_KEYS | {"extra_good"}),
    Case("sample: caption a list",
         stream_with(good=4, extra={"mixed.tar": _mixed_shard(
             hostile.artwork("bad", "monet", meta={"collection": "monet", "caption": ["a"]}))}),
         line="its caption is of type list, not text", skipped=1, used=TRAIN_KEYS | {"extra_good"}),
    Case("sample: collection field a list",
         stream_with(good=4, extra={"mixed.tar": _mixed_shard(
             hostile.artwork("bad", "monet", meta={"collection": ["monet"]}))}),
         line="passing over samples without json field 'collection'", skipped=1,
         used=TRAIN_KEYS | {"extra_good"}),
    Case("sample: image bytes undecodable",
         stream_with(good=4, extra={
             "mixed.tar": _mixed_shard(hostile.artwork("bad", "monet", image=b"garbage"))}),
         line="skipping sample bad", skipped=1, used=TRAIN_KEYS | {"extra_good"}),
    Case("sample: collection not in the run",
         stream_with(good=4, extra={
             "mixed.tar": _mixed_shard(hostile.artwork("bad", "degas"))}),
         line="collection 'degas' of json field 'collection' (data.collection_key): not in "
              "this run's collections", skipped=1,
         used=TRAIN_KEYS | {"extra_good"}),
    Case("sample: no image at all",
         stream_with(good=4, extra={"mixed.tar": _mixed_shard(
             {"__key__": "bad", "json": json.dumps({"collection": "monet"}).encode()})}),
         line="skipping sample bad", skipped=1, used=TRAIN_KEYS | {"extra_good"}),
    Case("shard: /etc/passwd as train_shards (no readable shard)",
         fit_with("--data.init_args.train_shards", "/etc/passwd"),
         exit=1, line="no readable training shard: /etc/passwd"),
    Case("dataloader: more workers than samples",
         fit_with("--data.init_args.num_workers", "4", refused_at_start=False),
         exit=1, line="use fewer dataloader workers"),
]  # fmt: skip


def _ckpt(write: Callable[[Path], Path]) -> Callable[[Path], Observed]:
    def run(ws: Path) -> Observed:
        path = write(ws / "given.ckpt")
        seen = fit(ws, "--ckpt_path", str(path))
        assert not (ws / "unpickled").exists(), "a user's checkpoint was unpickled"
        return seen

    return run


def _grid_content_caption(caption: bytes) -> Callable[[Path], Observed]:
    """Fit with ``caption`` beside the SampleGrid's content image."""

    def run(ws: Path) -> Observed:
        text = ws / "outputs/demo/images/photographs/house.txt"  # fit lays out house.png
        text.parent.mkdir(parents=True, exist_ok=True)
        text.write_bytes(caption)
        return fit(ws, refused_at_start=False)

    return run


def _long_content_caption(ws: Path) -> Observed:
    """Stylize a photograph whose caption is 120 words (the prompt puts it before the style)."""
    caption = ws / "photos/house.txt"
    caption.parent.mkdir(parents=True, exist_ok=True)
    caption.write_text(" ".join(f"word{i}" for i in range(120)))
    return predict(ws, refused_at_start=False)


def _embedding_file(path: Path) -> Path:
    """An exported embedding (diffusers form) where a checkpoint is expected."""
    from safetensors.torch import save_file

    target = path.with_name("emb.safetensors")
    save_file({"<monet>": torch.zeros(2, 32)}, target)
    return target


def _other_collections(names: list[str]) -> Callable[[Path], Observed]:
    """Resume from a checkpoint whose bank was trained on ``names`` (this run: the base)."""

    def write(path: Path) -> Path:
        hparams = {
            "_class_path": "artbank_pl.tasks.PromptBankTask",
            "collections": names,
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
        }  # as saved
        torch.save({"state_dict": {}, "global_step": 2, "hyper_parameters": hparams}, path)
        return path

    return _ckpt(write)


OPTIONS = [
    Case("resume: other collection names, same count",
         _other_collections(["hokusai", "renoir"]),
         exit=1, line="only in the checkpoint: ['renoir']; only in this run: ['monet']"),
    Case("resume: other collection count",
         _other_collections(["hokusai", "monet", "renoir"]),
         exit=1, line="only in the checkpoint: ['renoir']; only in this run: []"),
    Case("option: batch_size 0", fit_with("--data.init_args.batch_size", "0"),
         exit=1, line="data.batch_size must be >= 1, got 0"),
    Case("option: num_workers -1", fit_with("--data.init_args.num_workers=-1"),
         exit=1, line="data.num_workers must be >= 0, got -1"),
    Case("option: training resolution not a multiple of 8",
         fit_with("--data.init_args.resolution", "30"),
         exit=1, line="data.resolution must be a positive multiple of 8"),
    Case("option: lr negative", fit_with("--model.init_args.lr=-1e-3"),
         exit=1, line="model.lr must be >= 0, got -0.001"),
    Case("option: num_tokens 0", fit_with("--model.init_args.num_tokens", "0"),
         exit=1, line="model.num_tokens must be >= 1, got 0"),
    Case("option: samples_per_epoch 0", fit_with("--data.init_args.samples_per_epoch", "0"),
         exit=1, line="data.samples_per_epoch must be >= 1, got 0"),
    Case("option: shuffle_buffer 0", fit_with("--data.init_args.shuffle_buffer", "0"),
         exit=1, line="data.shuffle_buffer must be >= 1, got 0"),
    Case("option: val_batch_size 0", fit_with("--data.init_args.val_batch_size", "0"),
         exit=1, line="data.val_batch_size must be >= 1, got 0"),
    Case("option: bank_attention unknown (failed before: 70 lines of usage, exit 2)",
         fit_with("--model.init_args.bank_attention", "bogus"), exit=1,
         line="--model.init_args.bank_attention: Expected a Literal['ssam', 'self', 'none']"),
    Case("option: one the model does not take (failed before: 70 lines of usage, exit 2)",
         fit_with("--model.init_args.ema_decay", "0.9"), exit=1,
         line="--model (PromptBankTask): Option 'ema_decay' is not accepted"),
    Case("option: max_steps -5 (failed before: a Lightning traceback)",
         fit_with("--trainer.max_steps=-5"), exit=1,
         line="trainer.max_steps must be a non-negative integer or -1 (no limit), got -5"),
    Case("option: warmup_steps negative", fit_with("--model.init_args.warmup_steps=-1"),
         exit=1, line="model.warmup_steps must be >= 0, got -1"),
    Case("checkpoint: --ckpt_path missing", fit_with("--ckpt_path", "absent.ckpt"),
         exit=1, line="--ckpt_path absent.ckpt does not exist"),
    Case("checkpoint: truncated", _ckpt(hostile.truncated_checkpoint),
         exit=1, line="given.ckpt cannot be loaded safely (weights_only=True)"),
    Case("checkpoint: needs unpickling code (never run)",
         _ckpt(lambda p: hostile.pickled_checkpoint(p, p.parent / "unpickled")),
         exit=1, line="given.ckpt cannot be loaded safely (weights_only=True)"),
    Case("SampleGrid: a content caption that is not UTF-8 (skipped, the fit goes on)",
         _grid_content_caption(b"\xff\xfe not utf-8"),
         exit=0, line="SampleGrid skips content outputs/demo/images/photographs/house.png"),
    Case("checkpoint: an embedding .safetensors as --ckpt_path",
         _ckpt(_embedding_file), exit=1, line="emb.safetensors is an embedding file"),
    Case("checkpoint: a tensor file, not a Lightning checkpoint",
         _ckpt(lambda p: (torch.save({"weights": torch.zeros(2)}, p), p)[1]),
         exit=1, line="given.ckpt is not a Lightning checkpoint (no state_dict)"),
    Case("checkpoint: an inverter's given to a bank fit",
         _ckpt(lambda p: (torch.save({"state_dict": {"inverter.proj.weight": torch.zeros(2)}},
                                     p), p)[1]),
         exit=1, line="given.ckpt is a checkpoint of InverterTask, but this run's model is "
                      "PromptBankTask"),
]  # fmt: skip


def _bank_checkpoint(average=None, bank_heads: int = 4, attention: str = "none") -> dict:
    """A bank checkpoint of two collections x 2 tokens x 32 (optionally with a moving average)."""
    state = {"bank.prompts": torch.randn(2, 2, 32)}
    if attention == "self":  # the row attention's weights, as a trained `self` bank holds them
        state |= {"bank.attention.norm.weight": torch.ones(32),
                  "bank.attention.norm.bias": torch.zeros(32),
                  "bank.attention.rows.qkv.weight": torch.zeros(96, 32),
                  "bank.attention.proj.weight": torch.zeros(32, 32),
                  "bank.attention.proj.bias": torch.zeros(32)}  # fmt: skip
    checkpoint = {
        "state_dict": state,
        "hyper_parameters": {"collections": ["hokusai", "monet"], "bank_attention": attention,
                             "bank_heads": bank_heads},
    }  # fmt: skip
    if average is not None:
        checkpoint["callbacks"] = {"TrainablesEMA": {"average": {"bank.prompts": average}}}
    return checkpoint


def _export(ws: Path, checkpoint: dict | None) -> Observed:
    """``artbank export`` of ``checkpoint`` (``None``: a path that does not exist)."""
    if checkpoint is not None:
        torch.save(checkpoint, ws / "given.ckpt")
    return run_main(["export", "--ckpt", str(ws / "given.ckpt"), "--output", str(ws / "out")], ws)


def _bank_of(write: Callable[[Path], Path]) -> Callable[[Path], Observed]:
    """predict with a bank folder whose ``monet`` file ``write`` makes hostile."""

    def run(ws: Path) -> Observed:
        folder = ws / "bank"
        hostile.embedding_file(folder / "ukiyo.safetensors", torch.full((2, 32), 0.01))
        write(folder / "monet.safetensors")
        return predict(ws, bank_path=folder)

    return run


def _pickled_bank(ws: Path) -> Observed:
    marker = ws / "unpickled"
    hostile.pickled_checkpoint(ws / "embeddings.pt", marker)
    seen = predict(ws, bank_path=ws / "embeddings.pt")
    assert not marker.exists(), "a user's embedding file was unpickled"
    return seen


def _replace_with_file(out: Path) -> None:
    out.rmdir()
    out.write_text("a file where the output folder goes")


def _garbage_records(out: Path) -> None:
    lines = ["[1, 2]", "not json", '{"key": "house", "style": "monet", "file": "../../x.png"}']
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def _empty_output(out: Path) -> None:
    (out / "monet").mkdir()
    (out / "monet/house.png").write_bytes(b"")


STYLIZE = [
    Case("content caption: longer than CLIP's 77 tokens (failed before: the run stopped)",
         _long_content_caption, line="shortened a caption to fit CLIP's 77 tokens",
         used=PHOTOS),
    Case("export: --ckpt missing", partial(_export, checkpoint=None),
         exit=1, line="given.ckpt does not exist"),
    Case("export: a checkpoint that is not a bank's",
         partial(_export, checkpoint={"state_dict": {"unet.w": torch.zeros(2)}}),
         exit=1, line="given.ckpt is not a PromptBankTask checkpoint"),
    Case("export: a moving average of another shape",
         partial(_export, checkpoint=_bank_checkpoint(average=torch.zeros(2, 3, 32))),
         exit=1, line="the moving average of bank.prompts is (2, 3, 32), the weight (2, 2, 32)"),
    Case("export: an all-NaN moving average",
         partial(_export, checkpoint=_bank_checkpoint(average=torch.full((2, 2, 32), torch.nan))),
         exit=1, line="the moving average bank.prompts holds NaN or inf; nothing exported"),
    Case("export: bank options the weights contradict",
         partial(_export, checkpoint=_bank_checkpoint(bank_heads=5, attention="self")),
         exit=1, line="its bank cannot be rebuilt: bank_heads=5 must divide"),
    Case("embedding: NaN in a style file", _bank_of(hostile.nan_embedding),
         exit=1, line="monet.safetensors holds NaN or infinite values"),
    Case("embedding: a scalar",
         _bank_of(lambda p: hostile.embedding_file(p, torch.tensor(1.0))),
         exit=1, line="monet.safetensors holds a scalar"),
    Case("embedding: an empty tensor",
         _bank_of(lambda p: hostile.embedding_file(p, torch.zeros(0, 32))),
         exit=1, line="monet.safetensors holds an empty (0, 32) tensor"),
    Case("embedding: a pickle (never run)", _pickled_bank,
         exit=1, line="embeddings.pt"),
    Case("embedding: an SD 1.x bank on an SDXL model",
         predict_with("--model.init_args.pretrained", "tiny-xl", refused_at_start=False),
         exit=1, line="width 32 (one text encoder: SD 1.x/2.x); this model needs clip_l 32 + "
         "clip_g 48"),
    Case("output: a garbage manifest.jsonl already there",
         predict_with(prepare=_garbage_records),
         line="skipped 3 of 3 lines that are not output records", used=PHOTOS),
    Case("output: an empty file at an output's name", predict_with(prepare=_empty_output),
         used=PHOTOS),
    Case("output: the output folder is a file",
         predict_with(prepare=_replace_with_file, refused_at_start=False),
         exit=1, line="outputs/demo/stylized"),
    Case("option: negative guidance", predict_with("--model.init_args.guidance_scale=-1"),
         exit=1, line="guidance_scale must be >= 0"),
    Case("option: strength above 1", predict_with("--model.init_args.strength=1.5"),
         exit=1, line="strength must be in (0, 1], got 1.5"),
    Case("option: strength 0", predict_with("--model.init_args.strength=0"),
         exit=1, line="strength must be in (0, 1], got 0.0"),
    Case("option: steps 0", predict_with("--model.init_args.steps=0"),
         exit=1, line="steps=0 x strength=0.7 leaves no denoising step"),
    Case("option: eta negative (failed before: taken without a word)",
         predict_with("--model.init_args.eta=-1"), exit=1, line="model.eta must be >= 0, got -1"),
    Case("option: clip_skip negative", predict_with("--model.init_args.clip_skip=-1"),
         exit=1, line="model.clip_skip must be >= 0, got -1"),
    Case("option: seed not a number (failed before: 70 lines of usage and a union report)",
         predict_with("--model.init_args.seed=abc"),
         exit=1, line="--model.init_args.seed: Expected a int. Got value: abc"),
    Case("option: inversion unknown (failed before: 70 lines of usage)",
         predict_with("--model.init_args.inversion=bogus"), exit=1,
         line="--model.init_args.inversion: Expected a Literal['stochastic', 'noise', 'ddim']"),
    Case("option: a prompt without the style mark",
         predict_with("--model.init_args.prompt=a photo"), exit=1,
         line="prompt 'a photo' has no '*' where the style goes"),
    Case("option: stylization batch_size 0", predict_with("--data.init_args.batch_size=0"),
         exit=1, line="data.batch_size must be >= 1, got 0"),
    Case("option: stylization resolution not a multiple of 8",
         predict_with("--data.init_args.resolution", "30"),
         exit=1, line="data.resolution must be a positive multiple of 8"),
    Case("content: one image file", lambda ws: predict(ws, "--data.init_args.content",
                                                       str(ws / "photos/house.png")),
         used=frozenset({"house/monet", "house/ukiyo"})),
    Case("content: missing path", predict_with("--data.init_args.content", "nowhere"),
         exit=1, line="data.content nowhere does not exist"),
]  # fmt: skip

GOOD_CONTENT = frozenset({"house", "tree"})

CONTENT = [
    Case("content image: not an image", content_with({"broken.png": hostile.not_an_image}),
         line="broken.png", skipped=1, used=GOOD_CONTENT),
    Case("content image: empty file", content_with({"empty.png": hostile.empty_file}),
         line="empty.png", skipped=1, used=GOOD_CONTENT),
    Case("content image: decompression bomb",
         content_with({"bomb.png": hostile.decompression_bomb}),
         line="bomb.png", skipped=1, used=GOOD_CONTENT),
    Case("content image: 60000 x 1 strip", content_with({"strip.png": hostile.elongated}),
         line="too elongated", skipped=1, used=GOOD_CONTENT),
    Case("content image: truncated PNG", content_with({"cut.png": hostile.truncated_image}),
         line="cut.png", skipped=1, used=GOOD_CONTENT),
    Case("content caption: invalid UTF-8", content_with({"house.txt": hostile.bad_utf8_caption}),
         line="house.png", skipped=1, used=frozenset({"tree"})),
    Case("content image: 16-bit greyscale", content_with({"grey.png": hostile.grey16}),
         used=GOOD_CONTENT | {"grey"}),
    Case("content: keys that would collide",
         partial(content_stream, extra={name: hostile.good_image for name in
                 ("photo.jpg", "photo.png", "a b.png", "a_b.png", "sub/y.png", "sub_y.png")}),
         # a short hash of the relative path keeps them apart, the same in every run
         used=frozenset({"photo-09671c4e", "photo-18352732", "a_b-9e0b25b8", "a_b-c693bdcd",
                         "sub_y-41cd388d", "sub_y-12ba9874"})),
    Case("content: file names unsafe as output names",
         partial(content_stream, extra={name: hostile.good_image for name in
                 ("--rm -rf.png", "über café.png", "..hidden.png")}),
         used=frozenset({"--rm_-rf", "_ber_caf_", "_hidden"})),
    Case("content: a folder without images", partial(content_stream, extra={}),
         exit=1, line="holds no image"),
]  # fmt: skip


def world_tool(*argv: str) -> Callable[[Path], Observed]:
    """``artbank world ...`` with ``argv``, writing into the case's folder."""
    return lambda ws: run_tool(["world", *argv, "--output", str(ws / "out")], ws)


def tool(*argv: str) -> Callable[[Path], Observed]:
    """``artbank ...`` with ``argv`` in the case's folder (a data tool, not LightningCLI)."""
    return lambda ws: run_tool(list(argv), ws)


def _demo_into_a_file(ws: Path) -> Observed:
    (ws / "taken").write_text("a file")
    return run_tool(["demo", "--output", str(ws / "taken")], ws)


def _config_of(content: bytes) -> Callable[[Path], Observed]:
    """``artbank fit --config`` of a file holding ``content``."""

    def run(ws: Path) -> Observed:
        (ws / "mine.yaml").write_bytes(content)
        return run_tool(["fit", "--config", "mine.yaml"], ws)

    return run


def _parquet_of(content: bytes) -> Callable[[Path], Observed]:
    """``artbank shards build --parquet`` of a file holding ``content``."""

    def run(ws: Path) -> Observed:
        (ws / "data.parquet").write_bytes(content)
        argv = ["shards", "build", "--parquet", str(ws / "data.parquet"), "--output", "out"]
        return run_tool(argv, ws)

    return run


def _parquet_and_input(ws: Path) -> Observed:
    argv = ["shards", "build", "--parquet", "x", "--input", "y", "--output", "out"]
    return run_tool(argv, ws)


def _grid_of(content: bytes) -> Callable[[Path], Observed]:
    """``artbank grid`` of a stylization manifest holding ``content``."""

    def run(ws: Path) -> Observed:
        (ws / "manifest.jsonl").write_bytes(content)
        return run_tool(["grid", str(ws / "manifest.jsonl"), "--output", str(ws / "g.png")], ws)

    return run


WORLD_TOOLS = [
    Case("grid: a manifest line that is not JSON", _grid_of(b'{"key": "a"}\n{not json\n'),
         exit=1, line="manifest.jsonl line 2 is not JSON"),
    Case("grid: a manifest that is not UTF-8", _grid_of(b"\xff\xfe garbage"),
         exit=1, line="manifest.jsonl is not UTF-8 text"),
    Case("world images: --photos negative", world_tool("images", "--photos", "-1"),
         exit=1, line="argument --photos: must be at least 0, got -1"),
    Case("world images: --per-style negative", world_tool("images", "--per-style", "-2"),
         exit=1, line="argument --per-style/--per_style: must be at least 0, got -2"),
    Case("world images: --seed negative", world_tool("images", "--seed", "-3"),
         exit=1, line="argument --seed: must be at least 0, got -3"),
    Case("world pretrain: --dataset-size 0", world_tool("pretrain", "--dataset-size", "0"),
         exit=1, line="argument --dataset-size/--dataset_size: must be at least 1, got 0"),
    Case("world pretrain: --vae-steps negative", world_tool("pretrain", "--vae-steps", "-5"),
         exit=1, line="argument --vae-steps/--vae_steps: must be at least 1, got -5"),
    Case("world judges: --steps not a number", world_tool("judges", "--steps", "many"),
         exit=1, line="argument --steps: 'many' is not an integer"),
    Case("world clip: --steps 0", world_tool("clip", "--steps", "0"),
         exit=1, line="argument --steps: must be at least 1, got 0"),
    Case("world pretrain: --noise-offset negative", tool("world", "pretrain", "--output", "w",
         "--noise-offset", "-0.1"), exit=1,
         line="argument --noise-offset/--noise_offset: must be a number of at least 0.0, got -0.1"),
    Case("world pretrain: --unet-channels the group norm does not divide",
         world_tool("pretrain", "--unet-channels", "40", "64", "64"), exit=1,
         line="--unet-channels 40 64 64: give 3 widths, each a positive multiple of 16"),
    Case("world pretrain-xl: --unet-channels for two levels",
         world_tool("pretrain-xl", "--unet-channels", "32", "64"), exit=1,
         line="--unet-channels 32 64: give 3 widths, each a positive multiple of 16"),
    Case("world pretrain: --unet-lr 0 (nothing would train)",
         world_tool("pretrain", "--unet-lr", "0"),
         exit=1, line="argument --unet-lr/--unet_lr: must be a number of at least 1e-08, got 0"),
    Case("world pretrain: --min-snr-gamma not finite",
         world_tool("pretrain", "--min-snr-gamma", "inf"),
         exit=1, line="must be a number of at least 0.0, got inf"),
    Case("demo: --output is a file", _demo_into_a_file,
         exit=1, line="--output"),
    Case("shards build --parquet: a file that is not Parquet", _parquet_of(b"PAR1 garbage"),
         exit=1, line="is not a readable Parquet file"),
    Case("shards build --parquet: --input too", _parquet_and_input,
         exit=1, line="not allowed with argument"),
    Case("grid: --cell 0 (failed before: a PIL traceback)", tool("grid", "m.jsonl", "--output",
         "g.png", "--cell", "0"), exit=1, line="argument --cell: must be at least 8, got 0"),
    Case("grid: --cell huge (failed before: a 100000 px cell allocates until killed)",
         tool("grid", "m.jsonl", "--output", "g.png", "--cell", "100000"),
         exit=1, line="argument --cell: must be at most 1024, got 100000"),
    Case("shards build: --maxcount 0", tool("shards", "build", "--input", "x", "--output", "o",
         "--maxcount", "0"), exit=1, line="--maxcount must be >= 1, got 0"),
    Case("shards build --parquet: --workers negative", tool("shards", "build", "--parquet", "x",
         "--output", "o", "--workers", "-1"), exit=1,
         line="argument --workers: must be at least 0, got -1"),
    Case("shards index: --workers 0", tool("shards", "index", "x.tar", "--workers", "0"),
         exit=1, line="argument --workers: must be at least 1, got 0"),
    Case("shards index: shards that do not exist (failed before: said no sample names a "
         "collection)", tool("shards", "index", "nothere/{00000..00002}.tar"),
         exit=1, line="3 of 3 shards of nothere/{00000..00002}.tar do not exist"),
    Case("shards index: --val-per-collection negative", tool("shards", "index", "x.tar",
         "--val-per-collection", "-1"), exit=1,
         line="argument --val-per-collection/--val_per_collection: must be at least 0, got -1"),
    Case("shards index: an empty pattern", tool("shards", "index", ""),
         exit=1, line="the shard pattern is empty"),
    Case("config: not YAML (failed before: did not name the file)",
         _config_of(b"trainer: [unclosed\n"), exit=1,
         line="--config mine.yaml: not valid YAML at line 2, column 1"),
    Case("config: empty file (failed before: 'Unexpected config:')", _config_of(b""),
         exit=1, line="--config mine.yaml: empty"),
    Case("config: not UTF-8", _config_of(b"\xff\xfe garbage"),
         exit=1, line="--config mine.yaml: not UTF-8 text"),
    Case("config: a list, not a mapping", _config_of(b"- trainer\n- model\n"),
         exit=1, line="--config mine.yaml: a list, not a mapping"),
    Case("config: missing, no shipped config of the name", tool("fit", "--config", "nothere.yaml"),
         exit=1, line="--config nothere.yaml: no such file, and no shipped config of that name"),
    Case("export: a non-Latin checkpoint name that does not exist",
         tool("export", "--ckpt", "日本画.ckpt", "--output", "o"),
         exit=1, line="checkpoint 日本画.ckpt does not exist"),
    Case("shards build --parquet: an empty file", _parquet_of(b""),
         exit=1, line="is not a readable Parquet file: Parquet file size is 0 bytes"),
    Case("demo: --output empty (failed before: the whole demo ran into the working folder)",
         tool("demo", "--output", ""), exit=1, line="--output is empty"),
]  # fmt: skip

CASES = [*SHARDS_BUILD, *MANIFESTS, *TRAINING_STREAM, *OPTIONS, *STYLIZE, *CONTENT,
         *WORLD_TOOLS]  # fmt: skip


if __name__ == "__main__":
    by_outcome = Counter(case.outcome for case in CASES)
    print(f"{len(CASES)} categories: " + ", ".join(f"{n} {o}" for o, n in by_outcome.items()))
    for case in CASES:
        print(f"  {case.outcome:24} {case.category}")
