"""The one mapping between config dataclasses and ROS parameters.

Every dataclass field becomes one read-only parameter (``prefix + field``) declared with the
field's description and range, so ``ros2 param describe`` documents the node. A parameter
override that matches no declared parameter, or a value the dataclass rejects, fails the
start with a ``ConfigError`` that names the parameter.
"""

from dataclasses import fields
from typing import Any, Iterable, Optional, Type, TypeVar

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rcl_interfaces.msg import ParameterType
from rclpy.exceptions import ParameterException
from rclpy.node import Node

from onlineanyseg_ros.core.config import config_from_dict

T = TypeVar('T')

# Parameters every rclpy node may receive without declaring them.
ALWAYS_ALLOWED_PREFIXES = ('use_sim_time', 'qos_overrides.', 'start_type_description_service')

_PARAMETER_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
                    float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


class ConfigError(ValueError):
    """A node parameter is unknown or invalid; the message names it."""


def _descriptor(name: str, field: Any) -> ParameterDescriptor:
    """Build the ParameterDescriptor of one dataclass field."""
    meta = field.metadata
    python_type = type(field.default)
    description = meta.get('description', '')
    if meta.get('choices'):
        description += f' One of: {", ".join(map(str, meta["choices"]))}.'
    descriptor = ParameterDescriptor(name=name, type=_PARAMETER_TYPES[python_type],
                                     description=description, read_only=True)
    low, high = meta.get('low'), meta.get('high')
    if python_type is float:
        # Integers written for float parameters in YAML are accepted and converted.
        descriptor.dynamic_typing = True
        if low is not None and high is not None:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(low), to_value=float(high), step=0.0)]
    elif python_type is int and low is not None and high is not None:
        descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high),
                                                 step=1)]
    return descriptor


def declare_config(node: Node, cls: Type[T], prefix: str = '', base: Optional[T] = None) -> T:
    """Declare one parameter per field of ``cls`` on ``node`` and build the config from them.

    Args:
        node: the node that owns the parameters.
        cls: a frozen config dataclass built with ``core.config.spec`` fields.
        prefix: parameter name prefix, e.g. ``'segmenter.'``.
        base: defaults to use instead of the dataclass defaults (e.g. a profile).

    Raises:
        ConfigError: a value has the wrong type or is outside its range.

    """
    values = {}
    for field in fields(cls):
        name = prefix + field.name
        default = getattr(base, field.name) if base is not None else field.default
        try:
            node.declare_parameter(name, default, _descriptor(name, field))
        except ParameterException as error:
            raise ConfigError(f'parameter {name}: {error}') from None
        value = node.get_parameter(name).value
        if type(field.default) is float and isinstance(value, int) and \
                not isinstance(value, bool):
            value = float(value)
        values[field.name] = value
    try:
        return config_from_dict(cls, values)
    except ValueError as error:
        raise ConfigError(f'parameter {prefix}{_field_named_in(error, cls)}: {error}') from None


def _field_named_in(error: ValueError, cls: Type[Any]) -> str:
    """Return the dataclass field a validation message names ('' when none does)."""
    message = str(error)
    for field in fields(cls):
        if f'.{field.name} ' in message:
            return field.name
    return ''


def reject_unknown_parameters(node: Node, allowed_prefixes: Iterable[str] = ()) -> None:
    """Raise ConfigError when a parameter override (params file, CLI) was never declared."""
    overrides = getattr(node, '_parameter_overrides', {})
    allowed = tuple(allowed_prefixes) + ALWAYS_ALLOWED_PREFIXES
    unknown = sorted(name for name in overrides
                     if not node.has_parameter(name) and not name.startswith(allowed))
    if unknown:
        raise ConfigError(f'unknown parameter(s) for node {node.get_name()}: '
                          f'{", ".join(unknown)}')
