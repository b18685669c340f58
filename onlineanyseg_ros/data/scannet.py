"""ScanNet-format RGB-D sequences on disk: a lazy reader and the per-frame writer.

Layouts (method.md section 1.2), ``root`` = the folder holding the frame folders (for a
ScanNet scene either ``<scene>`` holding ``frames/`` or ``<scene>/frames`` itself):

- ``scannet``: ``color/<i>.jpg|png``, ``depth/<i>.png`` (uint16 mm), ``pose/<i>.txt`` (4x4
  camera-to-world, OpenCV optical frame), ``intrinsic/intrinsic_depth.txt`` (4x4), optional
  ``instance/<i>.png`` (uint16 GT instance ids, written by the synthetic generator);
- ``scenenn``: ``image/imageNNNNN.png``, ``depth/depthNNNNN.png``, ``pose/<k>.txt`` (the k-th
  pose file in natural order belongs to the k-th image), ``intrinsic/intrinsic_depth.txt``.
"""

import logging
import pathlib
import re
from typing import Iterator, List, Optional, Sequence

import numpy as np

from onlineanyseg_ros.core.types import is_rigid_transform, RgbdFrame
from onlineanyseg_ros.data import io

logger = logging.getLogger(__name__)

LAYOUTS = ('auto', 'scannet', 'scenenn')
_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value (``'2' < '10'``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


def _sorted_files(folder: pathlib.Path, suffixes: Sequence[str]) -> List[pathlib.Path]:
    """Return the files of ``folder`` with one of ``suffixes``, in natural order."""
    if not folder.is_dir():
        raise FileNotFoundError(f'missing directory {folder}')
    files = [path for path in folder.iterdir() if path.suffix.lower() in suffixes]
    return sorted(files, key=lambda path: natural_key(path.name))


def resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``(h, w, ...)`` to ``(height, width, ...)`` with OpenCV's INTER_NEAREST rule.

    Destination pixel ``(v, u)`` takes source ``(floor(v * h / height), floor(u * w / width))``
    as ``cv2.resize`` does, which the reference uses for ScanNet colour (1296x968 -> 640x480).
    """
    rows = np.minimum((np.arange(height) * (image.shape[0] / height)).astype(np.int64),
                      image.shape[0] - 1)
    cols = np.minimum((np.arange(width) * (image.shape[1] / width)).astype(np.int64),
                      image.shape[1] - 1)
    return image[rows[:, None], cols[None, :]]


def _detect_layout(root: pathlib.Path) -> str:
    """Return 'scannet' or 'scenenn' from the folders present under ``root``."""
    if (root / 'color').is_dir():
        return 'scannet'
    if (root / 'image').is_dir():
        return 'scenenn'
    raise FileNotFoundError(f'{root}: no color/ (ScanNet) or image/ (SceneNN) directory')


class ScanNetSequence:
    """Lazy reader of an RGB-D sequence in the ScanNet (or SceneNN) export layout.

    ``seq[i]`` loads the i-th kept frame as a ``core.types.RgbdFrame``: colour uint8 RGB
    resized (nearest) to the depth size, depth float32 metres, K of the depth camera,
    T_world_camera, ``frame_index`` = position of the frame in the naturally sorted source
    sequence and ``stamp_ns = frame_index / rate_hz``. Frames whose pose is not finite or
    not rigid are skipped (never replaced), counted in ``skipped_poses`` and reported in
    one warning.
    """

    def __init__(self, root, every: int = 1, max_frames: Optional[int] = None,
                 layout: str = 'auto', depth_scale: float = 1000.0,
                 rate_hz: float = 30.0) -> None:
        """Index the frames under ``root`` and read every pose (images stay on disk).

        Args:
            root: folder holding the frame folders, or a ScanNet scene folder with frames/.
            every: keep source frames 0, every, 2 * every, ...
            max_frames: keep at most this many valid frames (None = all).
            layout: 'auto', 'scannet' or 'scenenn'.
            depth_scale: depth PNG units per metre (1000 = millimetres).
            rate_hz: source frame rate used for ``stamp_ns``.

        """
        if every < 1 or (max_frames is not None and max_frames < 0):
            raise ValueError(f'every must be >= 1 and max_frames >= 0, got {every}, '
                             f'{max_frames}')
        if layout not in LAYOUTS or depth_scale <= 0 or rate_hz <= 0:
            raise ValueError(f'layout must be one of {LAYOUTS} and depth_scale, rate_hz > 0')
        root = pathlib.Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f'missing sequence directory {root}')
        if layout == 'auto' and not (root / 'color').is_dir() and (root / 'frames').is_dir():
            root = root / 'frames'
        self.root = root
        self.layout = _detect_layout(root) if layout == 'auto' else layout
        self.depth_scale = float(depth_scale)
        self.rate_hz = float(rate_hz)
        self.K = io.read_matrix(root / 'intrinsic' / 'intrinsic_depth.txt')[:3, :3].copy()
        color_files, depth_files, pose_files = self._list_files()
        kept, skipped = [], []
        for index in range(0, len(color_files), every):
            if max_frames is not None and len(kept) >= max_frames:
                break
            pose = io.read_matrix(pose_files[index])
            if is_rigid_transform(pose):
                kept.append((index, pose))
            else:
                skipped.append(pose_files[index].stem)
        self.skipped_poses = len(skipped)
        if skipped:
            logger.warning('%s: skipped %d frame(s) whose pose is not finite or not rigid: %s',
                           root, len(skipped), ', '.join(skipped))
        self._source_index = [index for index, _ in kept]
        self._poses = [pose for _, pose in kept]
        self._color_files = [color_files[index] for index in self._source_index]
        self._depth_files = [depth_files[index] for index in self._source_index]

    def _list_files(self):
        """Return the colour, depth and pose paths of every source frame, in order."""
        if self.layout == 'scannet':
            color_files = _sorted_files(self.root / 'color', _IMAGE_SUFFIXES)
            _sorted_files(self.root / 'depth', ('.png',))
            _sorted_files(self.root / 'pose', ('.txt',))
            depth_files = [self.root / 'depth' / f'{path.stem}.png' for path in color_files]
            pose_files = [self.root / 'pose' / f'{path.stem}.txt' for path in color_files]
        else:
            color_files = _sorted_files(self.root / 'image', _IMAGE_SUFFIXES)
            _sorted_files(self.root / 'depth', ('.png',))
            depth_files = [self.root / 'depth' / (re.sub('^image', 'depth', path.stem) + '.png')
                           for path in color_files]
            pose_files = _sorted_files(self.root / 'pose', ('.txt',))
            if len(pose_files) < len(color_files):
                raise ValueError(f'{self.root / "pose"}: {len(pose_files)} pose files for '
                                 f'{len(color_files)} images')
        for path in depth_files + pose_files[:len(color_files)]:
            if not path.is_file():
                raise FileNotFoundError(f'missing file {path}')
        return color_files, depth_files, pose_files

    def __len__(self) -> int:
        """Return the number of kept frames (valid poses only)."""
        return len(self._source_index)

    @property
    def stems(self) -> List[str]:
        """File stems of the kept frames, e.g. ``'0'`` or ``'image00001'``."""
        return [path.stem for path in self._color_files]

    @property
    def frame_indices(self) -> List[int]:
        """Source positions of the kept frames."""
        return list(self._source_index)

    def pose(self, i: int) -> np.ndarray:
        """Return the float64 ``(4, 4)`` T_world_camera of kept frame ``i``."""
        return self._poses[i].copy()

    def __getitem__(self, i: int) -> RgbdFrame:
        """Load kept frame ``i`` (colour and depth are read now)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f'frame {i} out of range for {len(self)} frames')
        i %= len(self)
        depth_raw = io.read_uint16_png(self._depth_files[i])
        depth = (depth_raw.astype(np.float32) / np.float32(self.depth_scale))
        color = io.read_rgb(self._color_files[i])
        if color.shape[:2] != depth.shape:
            color = resize_nearest(color, *depth.shape)
        source_index = self._source_index[i]
        return RgbdFrame(color=np.ascontiguousarray(color), depth=depth, K=self.K.copy(),
                         T_world_camera=self._poses[i].copy(),
                         stamp_ns=int(round(source_index * 1e9 / self.rate_hz)),
                         frame_index=source_index)

    def __iter__(self) -> Iterator[RgbdFrame]:
        """Yield every kept frame in order."""
        for i in range(len(self)):
            yield self[i]

    def instance_image(self, i: int) -> Optional[np.ndarray]:
        """Return the uint16 ``(H, W)`` GT instance image of kept frame ``i``, or None."""
        folder = self.root / 'instance'
        if not folder.is_dir():
            return None
        return io.read_uint16_png(folder / f'{self.stems[i]}.png')


def prepare_scannet_dirs(root, instance: bool = False) -> pathlib.Path:
    """Create ``color/ depth/ pose/ intrinsic/`` (and ``instance/``) under ``root``."""
    root = pathlib.Path(root)
    for name in ('color', 'depth', 'pose', 'intrinsic') + (('instance',) if instance else ()):
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def write_intrinsics(root, K_depth: np.ndarray, K_color: Optional[np.ndarray] = None) -> None:
    """Write ``intrinsic/intrinsic_depth.txt`` and ``intrinsic_color.txt`` as 4x4 matrices."""
    for name, K in (('depth', K_depth), ('color', K_depth if K_color is None else K_color)):
        matrix = np.eye(4)
        matrix[:3, :3] = K
        io.write_matrix(pathlib.Path(root) / 'intrinsic' / f'intrinsic_{name}.txt', matrix)


def write_frame(root, stem: str, color: np.ndarray, depth_m: np.ndarray,
                T_world_camera: np.ndarray, instance: Optional[np.ndarray] = None,
                depth_scale: float = 1000.0, jpeg_quality: int = 95) -> None:
    """Write one frame: colour JPEG, depth PNG, pose text and optional instance PNG.

    Args:
        root: folder made by ``prepare_scannet_dirs``.
        stem: file stem, e.g. ``'17'``.
        color: uint8 ``(H, W, 3)`` RGB.
        depth_m: float32 ``(H, W)`` metres, 0 = invalid; stored as rounded
            ``depth_m * depth_scale`` in uint16 (values beyond the range become 0).
        T_world_camera: float64 ``(4, 4)`` camera-to-world.
        instance: uint16 ``(H, W)`` GT instance ids, or None.
        depth_scale: PNG units per metre.
        jpeg_quality: JPEG quality of the colour image.

    """
    root = pathlib.Path(root)
    scaled = np.rint(np.asarray(depth_m, dtype=np.float64) * depth_scale)
    in_range = (scaled > 0) & (scaled <= np.iinfo(np.uint16).max)
    io.write_uint16_png(root / 'depth' / f'{stem}.png',
                        np.where(in_range, scaled, 0).astype(np.uint16))
    io.write_rgb(root / 'color' / f'{stem}.jpg', color, jpeg_quality=jpeg_quality)
    io.write_matrix(root / 'pose' / f'{stem}.txt', T_world_camera)
    if instance is not None:
        io.write_uint16_png(root / 'instance' / f'{stem}.png', instance)
