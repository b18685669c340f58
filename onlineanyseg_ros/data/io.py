"""Small file helpers shared by every layer: atomic writes, matrices, images, PLY, JSON.

Every writer goes through ``atomic_write`` (temp file in the target directory, then
``os.replace``), so a reader never sees a half-written file. Every reader raises a
``ValueError`` naming the file when its content is not what the caller asked for.
"""

import contextlib
from dataclasses import dataclass, field
import json
import os
import pathlib
import tempfile
from typing import Any, Dict, IO, Iterator, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

PathLike = Union[str, os.PathLike]

# PLY scalar type names (both spellings) -> little-endian numpy dtypes.
_PLY_TYPES = {
    'char': 'i1', 'int8': 'i1', 'uchar': 'u1', 'uint8': 'u1',
    'short': '<i2', 'int16': '<i2', 'ushort': '<u2', 'uint16': '<u2',
    'int': '<i4', 'int32': '<i4', 'uint': '<u4', 'uint32': '<u4',
    'float': '<f4', 'float32': '<f4', 'double': '<f8', 'float64': '<f8',
}
_NUMPY_TO_PLY = {'i1': 'char', 'u1': 'uchar', 'i2': 'short', 'u2': 'ushort', 'i4': 'int',
                 'u4': 'uint', 'f4': 'float', 'f8': 'double'}


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = 'wb') -> Iterator[IO]:
    """Yield a file that replaces ``path`` only when the block finishes without error.

    The temporary file lives in the target directory (same file system), so the final
    ``os.replace`` is atomic; on error it is removed and ``path`` is left untouched.
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f'atomic_write mode must be "w" or "wb", got {mode!r}')
    path = pathlib.Path(path)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                                             suffix='.tmp')
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
        os.replace(temp_name, path)
    except BaseException:
        os.unlink(temp_name)
        raise


def write_matrix(path: PathLike, matrix: np.ndarray) -> None:
    """Write a 2D float matrix (e.g. a 4x4 pose) as whitespace-separated text rows."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f'{path}: a matrix must be 2D, got shape {matrix.shape}')
    text = '\n'.join(' '.join(f'{value:.9g}' for value in row) for row in matrix) + '\n'
    with atomic_write(path, 'w') as handle:
        handle.write(text)


def read_matrix(path: PathLike, shape: Tuple[int, int] = (4, 4)) -> np.ndarray:
    """Read a whitespace-separated text matrix as float64 of exactly ``shape``.

    ``nan`` / ``inf`` entries are returned as they are (the caller decides what a non-finite
    pose means); a missing file raises FileNotFoundError, anything that is not a
    ``shape`` grid of numbers raises ValueError naming the file.
    """
    path = pathlib.Path(path)
    text = path.read_text()
    try:
        rows = [[float(token) for token in line.split()] for line in text.splitlines()
                if line.strip()]
    except ValueError as error:
        raise ValueError(f'{path}: not a numeric matrix ({error})') from None
    if len(rows) != shape[0] or any(len(row) != shape[1] for row in rows):
        found = f'{len(rows)} rows of lengths {sorted({len(row) for row in rows})}'
        raise ValueError(f'{path}: expected a {shape[0]}x{shape[1]} matrix, found {found}')
    return np.array(rows, dtype=np.float64)


def _open_image(path: PathLike) -> Image.Image:
    """Open and decode an image, turning decoder failures into ValueError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f'{path}: unreadable image ({error})') from None


def write_uint16_png(path: PathLike, image: np.ndarray, compress_level: int = 1) -> None:
    """Write a uint16 ``(H, W)`` array (depth in mm, instance ids) as a 16-bit PNG."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint16:
        raise ValueError(f'{path}: expected uint16 (H, W), got {image.dtype} {image.shape}')
    with atomic_write(path) as handle:
        Image.fromarray(image).save(handle, format='PNG', compress_level=compress_level)


def read_uint16_png(path: PathLike) -> np.ndarray:
    """Read a single-channel 16-bit PNG as uint16 ``(H, W)``; other formats raise ValueError."""
    image = _open_image(path)
    if image.mode not in ('I;16', 'I;16B', 'I;16L', 'I'):
        raise ValueError(f'{path}: expected a single-channel 16-bit image, got mode '
                         f'{image.mode!r}')
    array = np.asarray(image)
    if array.dtype != np.uint16:
        # Pillow decodes some 16-bit PNGs as 32-bit mode 'I'; values still fit in 16 bits.
        if array.size and (array.min() < 0 or array.max() > np.iinfo(np.uint16).max):
            raise ValueError(f'{path}: values outside the uint16 range')
        array = array.astype(np.uint16)
    return array


def write_rgb(path: PathLike, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write uint8 ``(H, W, 3)`` RGB; the format follows the suffix (.jpg/.jpeg/.png)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'{path}: expected uint8 (H, W, 3), got {image.dtype} {image.shape}')
    suffix = pathlib.Path(path).suffix.lower()
    if suffix in ('.jpg', '.jpeg'):
        # 4:4:4 chroma: synthetic colour edges would bleed with 4:2:0 subsampling.
        options = {'format': 'JPEG', 'quality': jpeg_quality, 'subsampling': 0}
    elif suffix == '.png':
        options = {'format': 'PNG', 'compress_level': 1}
    else:
        raise ValueError(f'{path}: unsupported colour image suffix {suffix!r}')
    with atomic_write(path) as handle:
        Image.fromarray(image).save(handle, **options)


def read_rgb(path: PathLike) -> np.ndarray:
    """Read a colour (or grey) 8-bit image as uint8 RGB ``(H, W, 3)``."""
    image = _open_image(path)
    if image.mode not in ('RGB', 'RGBA', 'L', 'P', 'CMYK', 'YCbCr'):
        raise ValueError(f'{path}: expected an 8-bit colour image, got mode {image.mode!r}')
    return np.asarray(image.convert('RGB'))


def write_json(path: PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON (keys in insertion order)."""
    with atomic_write(path, 'w') as handle:
        json.dump(data, handle, indent=2)
        handle.write('\n')


def write_label_file(path: PathLike, labels: np.ndarray) -> None:
    """Write one integer per line (ScanNet GT label format)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'{path}: labels must be a 1D integer array, got {labels.dtype} '
                         f'{labels.shape}')
    with atomic_write(path, 'w') as handle:
        handle.write('\n'.join(map(str, labels.tolist())) + '\n')


def read_label_file(path: PathLike) -> np.ndarray:
    """Read one integer per line as int64 ``(N,)``."""
    try:
        return np.loadtxt(path, dtype=np.int64, ndmin=1)
    except ValueError as error:
        raise ValueError(f'{path}: not one integer per line ({error})') from None


@dataclass
class PlyVertices:
    """Vertex data of a PLY file.

    Attributes:
        points: float32 ``(N, 3)`` x y z (the file's frame and unit, metres for ScanNet).
        colors: uint8 ``(N, 3)`` red green blue, or None when the file has none.
        extra: other vertex properties by name, each ``(N,)`` in its file dtype.

    """

    points: np.ndarray
    colors: Optional[np.ndarray] = None
    extra: Dict[str, np.ndarray] = field(default_factory=dict)


def write_ply(path: PathLike, points: np.ndarray, colors: Optional[np.ndarray] = None,
              extra: Optional[Dict[str, np.ndarray]] = None) -> None:
    """Write a binary little-endian PLY point cloud.

    Args:
        path: target file.
        points: float ``(N, 3)``, written as float32 x y z.
        colors: uint8 ``(N, 3)`` red green blue, or None.
        extra: further vertex properties, each ``(N,)`` of an integer or float dtype
            (e.g. ``{'instance_id': int32}``).

    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f'{path}: points must be (N, 3), got {points.shape}')
    columns = [(name, '<f4', points[:, axis]) for axis, name in enumerate('xyz')]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != points.shape or colors.dtype != np.uint8:
            raise ValueError(f'{path}: colors must be uint8 {points.shape}, got '
                             f'{colors.dtype} {colors.shape}')
        columns += [(name, 'u1', colors[:, i])
                    for i, name in enumerate(('red', 'green', 'blue'))]
    for name, values in (extra or {}).items():
        values = np.asarray(values)
        kind = values.dtype.str.lstrip('<>|=')
        if values.shape != (len(points),) or kind not in _NUMPY_TO_PLY:
            raise ValueError(f'{path}: vertex property {name!r} must be ({len(points)},) of '
                             f'a PLY scalar type, got {values.dtype} {values.shape}')
        columns.append((name, '<' + kind if kind[-1] != '1' else kind, values))
    vertices = np.empty(len(points), dtype=[(name, dtype) for name, dtype, _ in columns])
    for name, _, values in columns:
        vertices[name] = values
    header = ['ply', 'format binary_little_endian 1.0', f'element vertex {len(points)}']
    header += [f'property {_NUMPY_TO_PLY[dtype.lstrip("<")]} {name}'
               for name, dtype, _ in columns]
    header.append('end_header')
    with atomic_write(path) as handle:
        handle.write(('\n'.join(header) + '\n').encode('ascii'))
        handle.write(vertices.tobytes())


def _parse_ply_header(path: pathlib.Path, handle: IO) -> Tuple[str, int, list]:
    """Return (format, vertex count, [(name, dtype)]) of the leading vertex element."""
    if handle.readline().strip() != b'ply':
        raise ValueError(f'{path}: not a PLY file')
    file_format, count, properties, element = None, None, [], None
    while True:
        line = handle.readline()
        if not line:
            raise ValueError(f'{path}: PLY header has no end_header')
        tokens = line.decode('ascii', errors='replace').split()
        if not tokens or tokens[0] in ('comment', 'obj_info'):
            continue
        if tokens[0] == 'end_header':
            break
        if tokens[0] == 'format':
            file_format = tokens[1]
        elif tokens[0] == 'element':
            element = tokens[1]
            if element == 'vertex':
                count = int(tokens[2])
            elif count is None:
                raise ValueError(f'{path}: the vertex element must come first in the PLY')
        elif tokens[0] == 'property' and element == 'vertex':
            if tokens[1] == 'list' or tokens[1] not in _PLY_TYPES:
                raise ValueError(f'{path}: unsupported vertex property {" ".join(tokens[1:])}')
            properties.append((tokens[2], _PLY_TYPES[tokens[1]]))
    if count is None or file_format not in ('binary_little_endian', 'ascii'):
        raise ValueError(f'{path}: need a vertex element in binary_little_endian or ascii '
                         f'format, got {file_format}')
    return file_format, count, properties


def read_ply(path: PathLike) -> PlyVertices:
    """Read the vertices of a binary little-endian or ASCII PLY (faces are ignored)."""
    path = pathlib.Path(path)
    with open(path, 'rb') as handle:
        file_format, count, properties = _parse_ply_header(path, handle)
        names = [name for name, _ in properties]
        if not {'x', 'y', 'z'} <= set(names):
            raise ValueError(f'{path}: PLY vertices lack x, y or z')
        dtype = np.dtype(properties)
        if file_format == 'binary_little_endian':
            payload = handle.read(dtype.itemsize * count)
            if len(payload) != dtype.itemsize * count:
                raise ValueError(f'{path}: PLY truncated ({len(payload)} of '
                                 f'{dtype.itemsize * count} vertex bytes)')
            vertices = np.frombuffer(payload, dtype=dtype, count=count)
        else:
            rows = [handle.readline().split() for _ in range(count)]
            if any(len(row) < len(names) for row in rows):
                raise ValueError(f'{path}: PLY truncated or malformed ASCII vertex rows')
            table = np.array([row[:len(names)] for row in rows], dtype=np.float64)
            vertices = np.empty(count, dtype=dtype)
            for column, name in enumerate(names):
                vertices[name] = table[:, column] if count else []
    points = np.stack([vertices[axis] for axis in 'xyz'], axis=1).astype(np.float32)
    color_names = ('red', 'green', 'blue')
    colors = None
    if set(color_names) <= set(names):
        colors = np.stack([vertices[name] for name in color_names], axis=1).astype(np.uint8)
    extra = {name: np.array(vertices[name]) for name in names
             if name not in ('x', 'y', 'z') + color_names}
    return PlyVertices(points=points, colors=colors, extra=extra)
