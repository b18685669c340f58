"""sensor_msgs/Image <-> numpy arrays, vectorized, without cv_bridge.

Supported encodings: rgb8, bgr8, mono8, mono16, 16UC1, 32FC1. Decoding honours ``step``
(row padding) and ``is_bigendian``; encoding writes tight little-endian rows.
"""

import array
from typing import Tuple

import numpy as np
from sensor_msgs.msg import Image

from onlineanyseg_ros.ros.conversions.header import make_header

# encoding -> (element dtype, channels)
_LAYOUTS = {
    'rgb8': (np.dtype(np.uint8), 3),
    'bgr8': (np.dtype(np.uint8), 3),
    'mono8': (np.dtype(np.uint8), 1),
    'mono16': (np.dtype(np.uint16), 1),
    '16UC1': (np.dtype(np.uint16), 1),
    '32FC1': (np.dtype(np.float32), 1),
}
COLOR_ENCODINGS = ('rgb8', 'bgr8')
DEPTH_ENCODINGS = ('16UC1', 'mono16', '32FC1')
LABEL_ENCODINGS = ('mono16', '16UC1')
_UINT16_MAX = np.iinfo(np.uint16).max


def _layout(encoding: str) -> Tuple[np.dtype, int]:
    """Return (element dtype, channels) of a supported encoding or raise ValueError."""
    if encoding not in _LAYOUTS:
        raise ValueError(f'image encoding {encoding!r} is not supported; expected one of '
                         f'{sorted(_LAYOUTS)}')
    return _LAYOUTS[encoding]


def message_bytes(data) -> np.ndarray:
    """Return a message ``uint8[]`` field (array.array, bytes or list) as a uint8 (n,) array."""
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def image_to_array(msg: Image) -> np.ndarray:
    """Decode an Image into a new native-endian array, channels in stored order.

    Returns uint8 ``(H, W, 3)`` for rgb8/bgr8 (bgr8 stays BGR), uint8 ``(H, W)`` for mono8,
    uint16 ``(H, W)`` for mono16/16UC1 and float32 ``(H, W)`` for 32FC1. Raises ValueError
    naming the encoding when it is unsupported or when ``step``/data size do not fit.
    """
    dtype, channels = _layout(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(f'{msg.encoding} image step {step} is smaller than width {width} x '
                         f'{channels * dtype.itemsize} bytes per pixel')
    data = message_bytes(msg.data)
    if data.size != step * height:
        raise ValueError(f'{msg.encoding} image data has {data.size} bytes, expected step '
                         f'{step} x height {height} = {step * height}')
    rows = np.ascontiguousarray(data.reshape(height, step)[:, :row_bytes])
    wire_dtype = dtype.newbyteorder('>' if msg.is_bigendian else '<')
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rows.view(wire_dtype).reshape(shape).astype(dtype, copy=True)


def image_to_rgb(msg: Image) -> np.ndarray:
    """Decode an rgb8 or bgr8 Image into uint8 ``(H, W, 3)`` RGB."""
    if msg.encoding not in COLOR_ENCODINGS:
        raise ValueError(f'colour image encoding {msg.encoding!r} is not supported; expected '
                         f'one of {list(COLOR_ENCODINGS)}')
    pixels = image_to_array(msg)
    if msg.encoding == 'bgr8':
        return np.ascontiguousarray(pixels[..., ::-1])
    return pixels


def image_to_depth_m(msg: Image, depth_scale_m: float = 0.001) -> np.ndarray:
    """Decode a depth Image into float32 ``(H, W)`` metres, 0 = invalid.

    16UC1/mono16 hold integer units of ``depth_scale_m`` metres (0.001: millimetres);
    32FC1 holds metres, where NaN, inf and values <= 0 mean invalid (REP 118) and become 0.
    """
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ValueError(f'depth image encoding {msg.encoding!r} is not supported; expected '
                         f'one of {list(DEPTH_ENCODINGS)}')
    raw = image_to_array(msg)
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) * np.float32(depth_scale_m)
    return np.where(np.isfinite(raw) & (raw > 0), raw, np.float32(0.0))


def array_to_image(pixels: np.ndarray, encoding: str, stamp_ns: int = 0,
                   frame_id: str = '') -> Image:
    """Encode an array as a tight little-endian Image; shape and dtype must fit ``encoding``.

    ``pixels`` is ``(H, W, 3)`` uint8 for rgb8/bgr8 (channels already in that order),
    ``(H, W)`` uint8 for mono8, uint16 for mono16/16UC1, float32 for 32FC1.
    """
    dtype, channels = _layout(encoding)
    pixels = np.asarray(pixels)
    valid_shape = pixels.ndim == 2 if channels == 1 else (
        pixels.ndim == 3 and pixels.shape[2] == channels)
    if not valid_shape or pixels.dtype != dtype:
        expected = '(H, W)' if channels == 1 else f'(H, W, {channels})'
        raise ValueError(f'{encoding} image needs a {dtype} {expected} array, got '
                         f'{pixels.dtype} {pixels.shape}')
    height, width = pixels.shape[:2]
    payload = pixels.astype(dtype.newbyteorder('<'), copy=False).tobytes()
    return Image(header=make_header(stamp_ns, frame_id), height=height, width=width,
                 encoding=encoding, is_bigendian=0, step=width * channels * dtype.itemsize,
                 data=array.array('B', payload))


def depth_m_to_image(depth_m: np.ndarray, stamp_ns: int = 0, frame_id: str = '',
                     encoding: str = '32FC1', depth_scale_m: float = 0.001) -> Image:
    """Encode float ``(H, W)`` metres (0 or non-finite = invalid) as a 32FC1 or 16UC1 Image.

    16UC1 stores ``round(depth / depth_scale_m)``; depths beyond its range raise ValueError.
    """
    depth_m = np.asarray(depth_m, dtype=np.float32)
    valid = np.isfinite(depth_m) & (depth_m > 0)
    if encoding == '32FC1':
        return array_to_image(np.where(valid, depth_m, np.float32(0.0)), encoding, stamp_ns,
                              frame_id)
    if encoding != '16UC1':
        raise ValueError(f'depth image encoding {encoding!r} is not supported for writing; '
                         'expected 32FC1 or 16UC1')
    units = np.where(valid, np.rint(depth_m / np.float32(depth_scale_m)), 0.0)
    if units.size and units.max() > _UINT16_MAX:
        raise ValueError(f'16UC1 depth cannot hold {float(depth_m[valid].max())} m at '
                         f'{depth_scale_m} m per unit')
    return array_to_image(units.astype(np.uint16), encoding, stamp_ns, frame_id)


def labels_to_image(labels: np.ndarray, stamp_ns: int = 0, frame_id: str = '') -> Image:
    """Encode an integer ``(H, W)`` mask label image (0 = no mask) as a mono16 Image."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'mask labels must be an integer (H, W) array, got {labels.dtype} '
                         f'{labels.shape}')
    if labels.size and (labels.min() < 0 or labels.max() > _UINT16_MAX):
        raise ValueError(f'mask labels must lie in [0, {_UINT16_MAX}] for mono16, got '
                         f'[{labels.min()}, {labels.max()}]')
    return array_to_image(labels.astype(np.uint16), 'mono16', stamp_ns, frame_id)


def image_to_labels(msg: Image) -> np.ndarray:
    """Decode a mono16/16UC1 mask label Image into int32 ``(H, W)`` (0 = no mask)."""
    if msg.encoding not in LABEL_ENCODINGS:
        raise ValueError(f'mask label image encoding {msg.encoding!r} is not supported; '
                         f'expected one of {list(LABEL_ENCODINGS)}')
    return image_to_array(msg).astype(np.int32)


def features_to_image(features: np.ndarray, stamp_ns: int = 0, frame_id: str = '') -> Image:
    """Encode float ``(N, D)`` per-mask features as a 32FC1 Image of height N and width D."""
    features = np.asarray(features)
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f'mask features must be a floating (N, D) array, got '
                         f'{features.dtype} {features.shape}')
    return array_to_image(features.astype(np.float32, copy=False), '32FC1', stamp_ns,
                          frame_id)


def image_to_features(msg: Image) -> np.ndarray:
    """Decode a 32FC1 feature Image into float32 ``(N, D)`` (row k-1 = mask k)."""
    if msg.encoding != '32FC1':
        raise ValueError(f'mask feature image encoding {msg.encoding!r} is not supported; '
                         'expected 32FC1')
    return image_to_array(msg)
