"""The one interface every 2D mask source implements."""

from typing import Protocol

from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame


class MaskGenerator(Protocol):
    """Produces class-agnostic masks for one frame.

    ``generate`` returns labels aligned with ``frame.depth``; ``features`` may be None (the
    CLIP embedder fills them in later) and ``scores`` may be None (treated as 1).
    """

    name: str

    def generate(self, frame: RgbdFrame) -> MaskObservation:
        """Return the masks of ``frame``."""
        ...
