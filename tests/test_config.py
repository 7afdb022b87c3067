"""Pool options (h2pool.config): sane defaults, every bad value refused up front."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from h2pool import Pool
from h2pool.config import MAX_FRAME_SIZE, MAX_WINDOW, MIN_FRAME_SIZE, PoolConfig

TIMEOUTS = ("connect_timeout", "acquire_timeout", "read_timeout", "write_timeout", "idle_timeout")


def test_defaults_construct() -> None:
    config = PoolConfig()
    assert config.max_connections_per_origin == 10
    assert config.max_idle_connections_per_origin == 10
    assert config.max_concurrent_streams == 1000
    assert config.initial_stream_window == 1 << 20
    assert config.connection_window == 16 << 20
    assert config.max_frame_size == 16384
    assert config.header_table_size == 4096
    assert config.max_header_list_size == 65536


@pytest.mark.parametrize("name", TIMEOUTS)
def test_default_timeouts_are_positive_and_finite(name: str) -> None:
    value = getattr(PoolConfig(), name)
    assert isinstance(value, float)
    assert 0 < value < math.inf
    # A generous bound: a default of hours would hang a caller just the same.
    assert value <= 300


def test_default_windows_and_frame_size_are_within_protocol_limits() -> None:
    config = PoolConfig()
    assert 65_535 <= config.connection_window <= MAX_WINDOW
    assert 1 <= config.initial_stream_window <= config.connection_window
    assert MIN_FRAME_SIZE <= config.max_frame_size <= MAX_FRAME_SIZE


def test_config_is_frozen() -> None:
    config = PoolConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.read_timeout = 1.0  # type: ignore[misc]


INVALID: list[tuple[str, Any]] = [
    *((name, value) for name in TIMEOUTS for value in (0, 0.0, -1, -0.5, math.inf, math.nan, "10", None)),
    ("max_connections_per_origin", 0),
    ("max_connections_per_origin", -1),
    ("max_connections_per_origin", 1.0),
    ("max_connections_per_origin", True),
    ("max_connections_per_origin", 2**31),
    ("max_concurrent_streams", 0),
    ("max_concurrent_streams", -5),
    ("max_concurrent_streams", True),
    ("max_concurrent_streams", "100"),
    ("max_idle_connections_per_origin", -1),
    ("max_idle_connections_per_origin", 2.0),
    ("max_idle_connections_per_origin", False),
    ("initial_stream_window", 0),
    ("initial_stream_window", MAX_WINDOW + 1),
    ("initial_stream_window", True),
    ("connection_window", 65_534),
    ("connection_window", MAX_WINDOW + 1),
    ("connection_window", float(1 << 20)),
    ("max_frame_size", MIN_FRAME_SIZE - 1),
    ("max_frame_size", MAX_FRAME_SIZE + 1),
    ("max_frame_size", 0),
    ("max_frame_size", True),
    ("header_table_size", -1),
    ("header_table_size", 2**32),
    ("header_table_size", 4096.0),
    ("max_header_list_size", 0),
    ("max_header_list_size", 2**32),
    ("max_header_list_size", None),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_value_raises_value_error_naming_the_option(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        PoolConfig(**{name: value})


@pytest.mark.parametrize("name", TIMEOUTS)
def test_bool_timeout_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PoolConfig(**{name: True})


VALID_BOUNDARIES: list[tuple[str, Any]] = [
    ("max_connections_per_origin", 1),
    ("max_concurrent_streams", 1),
    ("max_idle_connections_per_origin", 0),
    ("initial_stream_window", 1),
    ("initial_stream_window", MAX_WINDOW),
    ("connection_window", 65_535),
    ("connection_window", MAX_WINDOW),
    ("max_frame_size", MIN_FRAME_SIZE),
    ("max_frame_size", MAX_FRAME_SIZE),
    ("header_table_size", 0),
    ("max_header_list_size", 1),
    ("connect_timeout", 0.001),
    ("read_timeout", 1),
]


@pytest.mark.parametrize(("name", "value"), VALID_BOUNDARIES)
def test_boundary_values_are_accepted(name: str, value: Any) -> None:
    assert getattr(PoolConfig(**{name: value}), name) == value


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="max_conections"):
        PoolConfig(max_conections=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(("name", "value"), [("connect_timeout", 0), ("max_frame_size", 1), ("idle_timeout", math.inf)])
def test_pool_with_an_invalid_option_raises_value_error(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        Pool(**{name: value})


def test_pool_with_an_unknown_option_raises_type_error() -> None:
    with pytest.raises(TypeError, match="read_timout"):
        Pool(read_timout=5)


def test_pool_keeps_its_valid_options() -> None:
    pool = Pool(read_timeout=2.5, max_connections_per_origin=3)
    assert pool.config.read_timeout == 2.5
    assert pool.config.max_connections_per_origin == 3
