"""The one rule between release semvers and MCUboot header versions (bmsfw.package.version)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bmsfw.package.errors import InvalidVersionError, VersionNotCarriedError
from bmsfw.package.version import (
    ImageVersion,
    Version,
    VersionRange,
    as_version,
    compare_versions,
    device_runs,
    image_version_of,
    parse_image_version,
    parse_version,
    version_of_image,
)

# --- strategies ---------------------------------------------------------------------

_stage = st.sampled_from(["alpha", "beta", "rc"])
_carried_pre = st.one_of(
    st.just(()),
    _stage.map(lambda s: (s,)),
    st.tuples(_stage, st.integers(1, 899_999_999).map(str)),
    st.tuples(_stage, st.integers(0, 9)).map(lambda t: (f"{t[0]}{t[1]}",)),
)


@st.composite
def carried_versions(draw: st.DrawFn) -> Version:
    pre = draw(_carried_pre)
    build = "" if pre else draw(st.sampled_from(["", "0", "17", "123456789", "sha.5e1f"]))
    major, minor = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    return Version(major, minor, draw(st.integers(0, 65535)), pre, build)


image_versions = st.builds(
    ImageVersion,
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 65535),
    st.integers(0, 0xFFFFFFFF),
)

_ident = st.one_of(
    st.integers(0, 30).map(str), st.text("abcrz-", min_size=1, max_size=4).filter(str.isascii)
)
any_versions = st.builds(
    Version,
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.lists(_ident, max_size=3).map(tuple),
)


# --- table: the documented examples ------------------------------------------------


@pytest.mark.parametrize(
    ("semver", "image"),
    [
        ("1.5.0", "1.5.0+0"),
        ("1.4.0+17", "1.4.0+17"),
        ("1.4.0+sha.5e1f", "1.4.0+0"),
        ("1.1.1-rc1", "1.1.1+3900000001"),
        ("1.1.1-rc.2", "1.1.1+3000000002"),
        ("2.0.0-beta", "2.0.0+2000000000"),
        ("2.0.0-alpha.7", "2.0.0+1000000007"),
        ("255.255.65535+4294967295", "255.255.65535+4294967295"),
    ],
)
def test_documented_mapping(semver: str, image: str) -> None:
    assert str(image_version_of(semver)) == image
    assert version_of_image(parse_image_version(image)) == parse_version(semver)
    assert device_runs(semver, image)
    assert compare_versions(semver, image) == 0


@pytest.mark.parametrize(
    "semver",
    [
        "1.0.0-dev",
        "1.0.0-rc.0",
        "1.0.0-rc10",
        "1.0.0-rc.1.2",
        "1.0.0-RC1",
        "256.0.0",
        "1.0.65536",
        "1.0.0+4294967296",
        "1.0.0+3000000001",
    ],
)
def test_versions_the_rule_cannot_carry_are_refused(semver: str) -> None:
    with pytest.raises(VersionNotCarriedError) as info:
        image_version_of(semver)
    assert info.value.code == "BMSFW-E118"


@pytest.mark.parametrize("text", ["", "1.0", "01.0.0", "1.0.0-", "1.0.0+", "v1.0.0", "1.0.0-a..b"])
def test_not_a_version(text: str) -> None:
    with pytest.raises(InvalidVersionError) as info:
        parse_version(text)
    assert info.value.code == "BMSFW-E117"
    with pytest.raises(ValueError):  # the fleet catches ValueError
        as_version(text)


def test_device_runs_the_release() -> None:
    assert device_runs("1.5.0", "1.5.0+0")  # a plain MCUboot image
    assert device_runs("1.5.0", "1.5.0")  # the app descriptor's semver
    assert device_runs("1.5.0+17", "1.5.0")  # build metadata is not precedence
    assert device_runs("1.1.1-rc1", "1.1.1-rc1")
    assert not device_runs("1.5.0+17", "1.5.0+0")  # another build of 1.5.0
    assert not device_runs("1.1.1-rc1", "1.1.1+0")  # the release, not its candidate
    assert not device_runs("1.1.1", "1.1.1+3900000001")
    assert not device_runs("1.5.0", "1.4.0+0")
    assert device_runs("1.1.1-rc1", "1.1.1.3900000001")  # MCUmgr's image list
    assert device_runs("1.4.0+17", "1.4.0.17")
    assert not device_runs("1.4.0+17", "1.4.0.18")
    assert compare_versions("1.1.1.3900000001", "1.1.1") == -1
    assert not device_runs("1.5.0", "garbage [/]")
    assert not device_runs("1.5.0", "")
    with pytest.raises(InvalidVersionError):
        device_runs("not a release", "1.5.0+0")


def test_version_range_takes_either_form() -> None:
    selector = VersionRange.parse(">=1.0.0,<1.1.0")
    assert selector.contains("1.0.5+0")
    assert selector.contains(parse_version("1.0.9-rc.1"))
    assert not selector.contains("1.1.0+0")
    assert not selector.contains("1.0.0-rc1")  # a pre-release of 1.0.0 sorts below it
    assert VersionRange.parse("1.2.0").contains("1.2.0+0")
    for bad in ("", ">=", ">=1.0", "~1.0.0"):
        with pytest.raises(InvalidVersionError):
            VersionRange.parse(bad)


# --- properties --------------------------------------------------------------------


@given(carried_versions())
def test_round_trip_semver_to_header_and_back(version: Version) -> None:
    image = image_version_of(version)
    back = version_of_image(image)
    assert back == version  # equal precedence
    assert image_version_of(back) == image  # and the same header
    assert parse_image_version(str(image)) == image
    assert parse_version(str(version)) == version
    assert device_runs(str(version), str(image))


@given(image_versions)
def test_every_header_version_maps_back_and_forth(image: ImageVersion) -> None:
    version = version_of_image(image)
    assert image_version_of(version) == image
    assert as_version(str(image)) == version


@given(carried_versions(), carried_versions())
def test_order_through_the_header_is_semver_precedence(a: Version, b: Version) -> None:
    expected = (a > b) - (a < b)
    ia, ib = str(image_version_of(a)), str(image_version_of(b))
    assert compare_versions(ia, ib) == expected
    assert compare_versions(str(a), ib) == expected
    assert compare_versions(ia, str(b)) == expected
    assert device_runs(str(a), ib) == (expected == 0 and image_version_of(a) == image_version_of(b))


@given(any_versions, any_versions, any_versions)
def test_precedence_is_a_total_order(a: Version, b: Version, c: Version) -> None:
    assert (a < b) + (a == b) + (a > b) == 1
    if a <= b <= c:
        assert a <= c
    # semver 11: a pre-release sorts below its release
    if a.prerelease:
        assert a < Version(a.major, a.minor, a.patch)


def test_semver_spec_example_order() -> None:
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "2.0.0",
        "2.1.0",
        "2.1.1",
    ]
    parsed = [parse_version(v) for v in chain]
    assert parsed == sorted(parsed)
    assert all(compare_versions(x, y) == -1 for x, y in itertools.pairwise(chain))
