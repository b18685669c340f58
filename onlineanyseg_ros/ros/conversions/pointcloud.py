"""sensor_msgs/PointCloud2 <-> numpy structured arrays, one vectorized copy each way.

The instance cloud uses ``INSTANCE_POINT_DTYPE``: x, y, z float32 metres, rgb float32 holding
the packed bytes 0x00RRGGBB (the RViz convention: a FLOAT32 field named ``rgb``) and
instance_id uint32 (0 = no instance).
"""

import array

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField

from onlineanyseg_ros.ros.conversions.header import make_header
from onlineanyseg_ros.ros.conversions.image import message_bytes

INSTANCE_POINT_DTYPE = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<f4'),
                                 ('instance_id', '<u4')])

_DATATYPE_OF_DTYPE = {
    np.dtype(np.int8): PointField.INT8, np.dtype(np.uint8): PointField.UINT8,
    np.dtype(np.int16): PointField.INT16, np.dtype(np.uint16): PointField.UINT16,
    np.dtype(np.int32): PointField.INT32, np.dtype(np.uint32): PointField.UINT32,
    np.dtype(np.float32): PointField.FLOAT32, np.dtype(np.float64): PointField.FLOAT64,
}
_DTYPE_OF_DATATYPE = {datatype: dtype for dtype, datatype in _DATATYPE_OF_DTYPE.items()}


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """Pack uint8 ``(N, 3)`` RGB into float32 ``(N,)`` whose bytes are 0x00RRGGBB."""
    colors = np.asarray(colors)
    if colors.ndim != 2 or colors.shape[1] != 3 or colors.dtype != np.uint8:
        raise ValueError(f'colours must be uint8 (N, 3), got {colors.dtype} {colors.shape}')
    channels = colors.astype(np.uint32)
    packed = (channels[:, 0] << 16) | (channels[:, 1] << 8) | channels[:, 2]
    return packed.view(np.float32)


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Unpack ``(N,)`` packed rgb (float32 or uint32 bytes 0x00RRGGBB) into uint8 ``(N, 3)``."""
    packed = np.ascontiguousarray(rgb).view(np.uint32)
    return np.stack([(packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF],
                    axis=1).astype(np.uint8)


def make_instance_points(xyz: np.ndarray, colors: np.ndarray,
                         instance_ids: np.ndarray) -> np.ndarray:
    """Build an ``(N,)`` INSTANCE_POINT_DTYPE array for the instance cloud.

    ``xyz`` is float ``(N, 3)`` metres, ``colors`` uint8 ``(N, 3)`` RGB and ``instance_ids``
    integer ``(N,)`` (0 = none).
    """
    xyz = np.asarray(xyz)
    instance_ids = np.asarray(instance_ids)
    count = xyz.shape[0] if xyz.ndim == 2 else -1
    if xyz.ndim != 2 or xyz.shape[1] != 3 or instance_ids.shape != (count,):
        raise ValueError(f'xyz must be (N, 3) and instance_ids (N,), got {xyz.shape} and '
                         f'{instance_ids.shape}')
    if instance_ids.size and (instance_ids.min() < 0 or instance_ids.max() > 2 ** 32 - 1):
        raise ValueError('instance ids must fit uint32')
    points = np.empty(count, dtype=INSTANCE_POINT_DTYPE)
    points['x'], points['y'], points['z'] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    points['rgb'] = pack_rgb(colors) if count else np.zeros(0, np.float32)
    points['instance_id'] = instance_ids
    return points


def points_to_pointcloud2(points: np.ndarray, stamp_ns: int = 0,
                          frame_id: str = '') -> PointCloud2:
    """Return an unorganized little-endian PointCloud2 of an ``(N,)`` structured array.

    Every field of ``points.dtype`` becomes a PointField at its offset (sub-arrays become
    ``count`` > 1); ``is_dense`` says whether all x, y, z are finite.
    """
    points = np.asarray(points)
    if points.dtype.names is None or points.ndim != 1:
        raise ValueError(f'points must be a 1-D structured array, got {points.dtype} '
                         f'{points.shape}')
    wire = points.astype(points.dtype.newbyteorder('<'), copy=False)
    fields = []
    for name in wire.dtype.names:
        field_dtype, offset = wire.dtype.fields[name][:2]
        base = field_dtype.base.newbyteorder('=')
        if base not in _DATATYPE_OF_DTYPE:
            raise ValueError(f'point field {name!r} has dtype {base}, not a PointField type')
        fields.append(PointField(name=name, offset=offset, datatype=_DATATYPE_OF_DTYPE[base],
                                 count=int(np.prod(field_dtype.shape, dtype=np.int64))))
    xyz_names = [name for name in ('x', 'y', 'z') if name in wire.dtype.names]
    is_dense = all(bool(np.isfinite(wire[name]).all()) for name in xyz_names)
    return PointCloud2(header=make_header(stamp_ns, frame_id), height=1, width=wire.shape[0],
                       fields=fields, is_bigendian=False, point_step=wire.dtype.itemsize,
                       row_step=wire.dtype.itemsize * wire.shape[0], is_dense=is_dense,
                       data=array.array('B', wire.tobytes()))


def pointcloud2_dtype(msg: PointCloud2) -> np.dtype:
    """Return the structured dtype (wire byte order, itemsize = point_step) of a cloud."""
    byte_order = '>' if msg.is_bigendian else '<'
    names, formats, offsets = [], [], []
    for field in msg.fields:
        if field.datatype not in _DTYPE_OF_DATATYPE:
            raise ValueError(f'point field {field.name!r} has unknown datatype {field.datatype}')
        base = _DTYPE_OF_DATATYPE[field.datatype].newbyteorder(byte_order)
        names.append(field.name)
        formats.append(base if field.count == 1 else (base, (int(field.count),)))
        offsets.append(int(field.offset))
    return np.dtype({'names': names, 'formats': formats, 'offsets': offsets,
                     'itemsize': int(msg.point_step)})


def pointcloud2_to_points(msg: PointCloud2) -> np.ndarray:
    """Return the ``(height * width,)`` structured array of a cloud, fields in native order.

    Organized clouds are flattened row-major; ``row_step`` padding is skipped.
    """
    dtype = pointcloud2_dtype(msg)
    height, width = int(msg.height), int(msg.width)
    row_step, row_bytes = int(msg.row_step), width * dtype.itemsize
    data = message_bytes(msg.data)
    if row_step < row_bytes or data.size != row_step * height:
        raise ValueError(f'PointCloud2 data has {data.size} bytes, expected row_step '
                         f'{row_step} >= {row_bytes} and row_step x height {height}')
    rows = np.ascontiguousarray(data.reshape(height, row_step)[:, :row_bytes])
    return rows.reshape(-1).view(dtype).astype(dtype.newbyteorder('='), copy=True)
