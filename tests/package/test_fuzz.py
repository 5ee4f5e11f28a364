"""Property tests: random and mutated inputs to every parser; only BmsfwError may escape."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bmsfw.errors import BmsfwError
from bmsfw.package import (
    Manifest,
    TrustAnchors,
    build_image,
    create_pki,
    decode_header,
    inspect_release,
    key_hash,
    parse_image,
    release_header,
    sign_release,
    verify_header,
    verify_image,
    verify_release,
)
from package.conftest import FACTS, NOW, make_release

_PKI = create_pki("ed25519", now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
_TRUST = TrustAnchors.from_key_hashes([key_hash(_PKI.root_key)]).with_image_key_hashes(
    [key_hash(_PKI.image_signing_key)]
)
_IMAGE = build_image(os.urandom(200), signing_key=_PKI.image_signing_key, version="1.0.0",
                     security_counter=1)  # fmt: skip
_PACKAGE = sign_release(make_release(_PKI, os.urandom(300), encoding="raw"), _PKI.signer())
_HEADER = release_header(_PACKAGE)
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """Flip, overwrite, delete, insert or truncate at drawn positions."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate"]))
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[pos:]
    return bytes(data)


def _only_bmsfw_errors(fn: object, *args: object, **kwargs: object) -> None:
    with contextlib.suppress(BmsfwError):
        fn(*args, **kwargs)  # type: ignore[operator]


@_SETTINGS
@given(st.one_of(st.binary(max_size=2048), mutated(_IMAGE)))
def test_image_parsers(data: bytes) -> None:
    _only_bmsfw_errors(parse_image, data)
    _only_bmsfw_errors(verify_image, data, key_hashes=[key_hash(_PKI.image_signing_key)])


@_SETTINGS
@given(st.one_of(st.binary(max_size=2048), mutated(_HEADER)))
def test_header_parsers(data: bytes) -> None:
    _only_bmsfw_errors(decode_header, data)
    _only_bmsfw_errors(verify_header, data, _TRUST, FACTS, now=NOW)


@pytest.mark.req("IEC62443-CR3.5")
@_SETTINGS
@given(mutated(_PACKAGE))
def test_mutated_packages_are_rejected(data: bytes) -> None:
    if data == _PACKAGE:
        return
    with pytest.raises(BmsfwError):
        verify_release(data, _TRUST, FACTS, now=NOW)
    _only_bmsfw_errors(inspect_release, data)
    _only_bmsfw_errors(release_header, data)


@pytest.mark.req("IEC62443-CR3.5")
@_SETTINGS
@given(st.binary(max_size=4096))
def test_random_packages(data: bytes) -> None:
    with pytest.raises(BmsfwError):
        verify_release(data, _TRUST, FACTS, now=NOW)
    _only_bmsfw_errors(inspect_release, data)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@_SETTINGS
@given(st.one_of(st.binary(max_size=512), _JSON.map(lambda v: json.dumps(v).encode())))
def test_manifest_parser(data: bytes) -> None:
    _only_bmsfw_errors(Manifest.from_json_bytes, data)
