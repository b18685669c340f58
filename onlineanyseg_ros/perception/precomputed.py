"""The precomputed-mask layout: what ``onlineanyseg masks`` writes and ``run --masks`` reads.

Layout under ``<mask_dir>``, with ``<stem>`` the stem of the frame's colour image::

    mask/<stem>.png               uint16 label image (uint8 also read), 0 = none, k = mask k
    mask_embeddings/<stem>.npy    optional float32 (N, D), row k-1 = mask k
    mask_scores/<stem>.npy        optional float32 (N,)

A frame without ``mask/<stem>.png`` has no masks and is integrated as geometry only. The
reference implementation stores embeddings as ``.pt``; this layout uses ``.npy`` so that
reading needs no torch. Every file is written atomically (temporary file + ``os.replace``)
and the label image last, so a present label image means a complete frame.
"""

import os
import pathlib
import tempfile
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from onlineanyseg_ros.core.types import MaskObservation, RgbdFrame

PathLike = Union[str, os.PathLike]
LABEL_DIR, EMBEDDING_DIR, SCORE_DIR = 'mask', 'mask_embeddings', 'mask_scores'


def _paths(mask_dir: PathLike, stem: str) -> tuple:
    """Return the (labels, embeddings, scores) paths of ``stem`` under ``mask_dir``."""
    root = pathlib.Path(mask_dir)
    return (root / LABEL_DIR / f'{stem}.png', root / EMBEDDING_DIR / f'{stem}.npy',
            root / SCORE_DIR / f'{stem}.npy')


def _write_atomically(path: pathlib.Path, write: Callable) -> None:
    """Create ``path``'s folder, call ``write(file)`` on a temporary sibling, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
    try:
        with os.fdopen(handle, 'wb') as stream:
            write(stream)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _check_counts(highest: int, features: Optional[np.ndarray],
                  scores: Optional[np.ndarray], where: str) -> None:
    """Raise ValueError unless features and scores have one row per mask id 1..highest."""
    if features is not None and features.shape[0] < highest:
        raise ValueError(f'{where}: {features.shape[0]} embedding rows but the label image '
                         f'reaches mask {highest}')
    if scores is None:
        return
    if features is not None and len(scores) != features.shape[0]:
        raise ValueError(f'{where}: {len(scores)} scores for {features.shape[0]} embedding rows')
    if len(scores) < highest:
        raise ValueError(f'{where}: {len(scores)} scores but the label image reaches mask '
                         f'{highest}')


def write_mask_observation(mask_dir: PathLike, stem: str, obs: MaskObservation) -> None:
    """Write ``obs`` as the files of ``stem``, replacing (or removing) earlier ones.

    Labels must lie in 0..65535 and scores need one entry per mask (and per embedding row);
    features and scores are stored as float32.
    """
    labels_path, embeddings_path, scores_path = _paths(mask_dir, stem)
    if obs.labels.size and (obs.labels.min() < 0 or obs.labels.max() > 65535):
        raise ValueError(f'mask labels of {stem!r} must lie in 0..65535 to fit a uint16 PNG')
    _check_counts(obs.num_masks, obs.features, obs.scores, f'masks of {stem!r}')
    optional = ((embeddings_path, obs.features), (scores_path, obs.scores))
    for path, values in optional:
        if values is None:
            path.unlink(missing_ok=True)
        else:
            array = np.ascontiguousarray(values, dtype=np.float32)
            _write_atomically(path, lambda stream, array=array: np.save(stream, array))
    image = Image.fromarray(obs.labels.astype(np.uint16))
    _write_atomically(labels_path, lambda stream: image.save(stream, format='PNG'))


def _load_array(path: pathlib.Path, ndim: int, what: str) -> Optional[np.ndarray]:
    """Return the float32 array of ``ndim`` dims stored at ``path``, or None if absent."""
    if not path.is_file():
        return None
    array = np.load(path, allow_pickle=False)
    if array.dtype != np.float32 or array.ndim != ndim:
        raise ValueError(f'{path} must hold float32 {what}, got {array.dtype} {array.shape}')
    return array


def read_mask_observation(mask_dir: PathLike, stem: str) -> Optional[MaskObservation]:
    """Return the masks of ``stem``, or None when ``mask/<stem>.png`` does not exist.

    Raises ValueError when the files disagree: a label image that is not a single-channel
    8/16-bit image, embeddings that are not float32 ``(N, D)`` with ``N >=`` the highest
    label, or scores that are not float32 ``(N,)`` of the same ``N``.
    """
    labels_path, embeddings_path, scores_path = _paths(mask_dir, stem)
    if not labels_path.is_file():
        return None
    with Image.open(labels_path) as image:
        labels = np.asarray(image)
    if labels.ndim != 2 or labels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f'{labels_path} must be a uint8/uint16 label image, got '
                         f'{labels.dtype} {labels.shape}')
    labels = labels.astype(np.int32)
    highest = int(labels.max(initial=0))
    features = _load_array(embeddings_path, 2, 'embeddings (N, D)')
    scores = _load_array(scores_path, 1, 'scores (N,)')
    _check_counts(highest, features, scores, f'{mask_dir}/*/{stem}')
    return MaskObservation(labels=labels, features=features, scores=scores)


class PrecomputedMaskGenerator:
    """Mask generator that reads the precomputed layout (``perception.base.MaskGenerator``).

    ``stems[i]`` is the colour-image stem of frame index ``i``.
    """

    name = 'precomputed'

    def __init__(self, mask_dir: PathLike, stems: Sequence[str]) -> None:
        """Remember the layout root and the frame-index -> stem table."""
        self.mask_dir = pathlib.Path(mask_dir)
        self.stems = list(stems)

    def has_masks(self, stem: str) -> bool:
        """Return True when ``mask/<stem>.png`` exists."""
        return _paths(self.mask_dir, stem)[0].is_file()

    def generate(self, frame: RgbdFrame) -> MaskObservation:
        """Return the masks of ``frame``, or an all-zero label image when it has none."""
        if not 0 <= frame.frame_index < len(self.stems):
            raise ValueError(f'frame_index {frame.frame_index} outside the {len(self.stems)} '
                             'known colour stems')
        stem = self.stems[frame.frame_index]
        obs = read_mask_observation(self.mask_dir, stem)
        if obs is None:
            return MaskObservation(labels=np.zeros(frame.shape, dtype=np.int32))
        if obs.labels.shape != frame.shape:
            raise ValueError(f'masks of {stem!r} are {obs.labels.shape}, the depth image is '
                             f'{frame.shape}')
        return obs
