"""Collect the demo images that installed packages ship, one folder per collection.

Nothing is downloaded: ``unraphael`` ships 11 photographs of Raphael's *Bridgewater
Madonna* and its copies, scikit-image and matplotlib ship photographs.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from PIL import Image

from artbank_pl.errors import DataError

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the demo needs the package {name!r}: pip install --no-deps {name}")
    return Path(next(iter(spec.submodule_search_locations)))


def raphael_paintings() -> list[Path]:
    """Return the painting photographs bundled in ``unraphael``."""
    paths = sorted((_package_dir("unraphael") / "data" / "images").glob("*.jpg"))
    if not paths:
        raise DataError("unraphael is installed but ships no images")
    return paths


def save_photographs(out_dir: Path) -> list[Path]:
    """Write the colour photographs of scikit-image and matplotlib as JPEG files."""
    import skimage.data
    from matplotlib import cbook

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SKIMAGE_PHOTOS:
        path = out_dir / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path, quality=95)
        paths.append(path)
    hopper = out_dir / "grace_hopper.jpg"
    shutil.copyfile(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), hopper)
    return paths + [hopper]


def gather_demo_images(output: str | Path, paintings: int = 0) -> dict[str, list[Path]]:
    """Fill ``output/raphael`` with paintings and ``output/photographs`` with photos.

    Args:
        output: the folder to fill (one sub-folder per collection).
        paintings: copy only this many paintings and no photographs (0: everything).
    """
    output = Path(output)
    raphael = output / "raphael"
    raphael.mkdir(parents=True, exist_ok=True)
    copied = []
    for src in raphael_paintings()[: paintings or None]:
        shutil.copyfile(src, raphael / src.name)
        copied.append(raphael / src.name)
    if paintings:
        return {"raphael": copied}
    return {"raphael": copied, "photographs": save_photographs(output / "photographs")}
