"""Value formats of the config file: durations, Kubernetes quantities, names, labels, addresses."""

from __future__ import annotations

from typing import Any

import pytest

from vkpy.config import (
    InvalidValue,
    dns_subdomain,
    duration,
    ip_address,
    label_value,
    port,
    positive_duration,
    qualified_name,
    quantity,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (10, 10.0),
        (1.5, 1.5),
        (0, 0.0),
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("2", 2.0),
        (" 3s ", 3.0),
    ],
)
def test_durations(value: Any, seconds: float) -> None:
    assert duration(value) == seconds


@pytest.mark.parametrize("value", ["10x", "s", "-1s", -1, True, None, [], "10 s", "1d", float("inf")])
def test_bad_durations(value: Any) -> None:
    with pytest.raises(InvalidValue):
        duration(value)


def test_positive_duration_refuses_zero() -> None:
    assert positive_duration("1ms") == 0.001
    with pytest.raises(InvalidValue, match="longer than zero"):
        positive_duration(0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (4, "4"),
        ("4", "4"),
        ("500m", "500m"),
        ("4Gi", "4Gi"),
        (1.5, "1.5"),
        ("1.5", "1.5"),
        (128974848, "128974848"),
        ("129e6", "129e6"),
        ("129E6", "129E6"),
        ("1e-3", "1e-3"),
        ("100k", "100k"),
        ("1.5Mi", "1.5Mi"),
        (".5", ".5"),
        ("0", "0"),
    ],
)
def test_quantities_are_kept_as_strings(value: Any, text: str) -> None:
    assert quantity(value) == text


@pytest.mark.parametrize("value", ["4Gb", "4 Gi", "four", "1.2.3", "", "Gi", True, None, [4], "4gi", "1e"])
def test_bad_quantities(value: Any) -> None:
    with pytest.raises(InvalidValue):
        quantity(value)


def test_negative_quantities_say_so() -> None:
    with pytest.raises(InvalidValue, match="must not be negative"):
        quantity("-1")
    with pytest.raises(InvalidValue, match="must not be negative"):
        quantity(-2)


@pytest.mark.parametrize("name", ["bench-pi-01", "a", "node.lab.example", "0abc", "a" * 63 + ".b"])
def test_dns_subdomains(name: str) -> None:
    assert dns_subdomain(name) == name


@pytest.mark.parametrize("name", ["Bench", "-a", "a-", "a_b", "a..b", "", "a" * 254, "a b"])
def test_bad_dns_subdomains(name: str) -> None:
    with pytest.raises(InvalidValue, match="DNS-1123"):
        dns_subdomain(name)


def test_uppercase_node_name_hints_the_fix() -> None:
    with pytest.raises(InvalidValue) as caught:
        dns_subdomain("Bench-1")
    assert caught.value.hint == "use lowercase: 'bench-1'"


@pytest.mark.parametrize(
    "key", ["lab", "app.kubernetes.io/name", "example.com/My_Key-1.x", "nvidia.com/gpu", "hugepages-2Mi"]
)
def test_qualified_names(key: str) -> None:
    assert qualified_name(key) == key


@pytest.mark.parametrize("key", ["", "/a", "Example.com/a", "a/", "-a", "a" * 64, "a b", "a/b/c", 5])
def test_bad_qualified_names(key: Any) -> None:
    with pytest.raises(InvalidValue):
        qualified_name(key)


@pytest.mark.parametrize(
    ("value", "text"), [("bench-3", "bench-3"), ("", ""), (None, ""), ("A.b_c", "A.b_c")]
)
def test_label_values(value: Any, text: str) -> None:
    assert label_value(value) == text


@pytest.mark.parametrize("value", ["a b", "-a", "a" * 64, "ä", 3, True])
def test_bad_label_values(value: Any) -> None:
    with pytest.raises(InvalidValue):
        label_value(value)


def test_addresses_and_ports() -> None:
    assert ip_address("0.0.0.0") == "0.0.0.0"
    assert ip_address("0:0::1") == "::1"
    assert port(10250) == 10250
    for bad in ("localhost", "300.1.1.1", 4):
        with pytest.raises(InvalidValue):
            ip_address(bad)
    for bad_port in (0, 65536, "80", True):
        with pytest.raises(InvalidValue):
            port(bad_port)
