"""artbank-pl: ArtBank and InST style transfer on a frozen Stable Diffusion, with Lightning."""

__version__ = "0.1.0"
