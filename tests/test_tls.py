"""TLS set-up (h2pool.tls), without any handshake."""

from __future__ import annotations

import ssl

import pytest

from h2pool.tls import ALPN_H2, default_ssl_context, prepare_context


def test_default_context_verifies_certificates_and_hostnames() -> None:
    context = default_ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_default_context_is_a_client_context_with_tls12_or_newer() -> None:
    context = default_ssl_context()
    assert context.protocol == ssl.PROTOCOL_TLS_CLIENT
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_default_context_loads_ca_certificates() -> None:
    assert default_ssl_context().cert_store_stats()["x509_ca"] > 0


def test_default_context_is_shared() -> None:
    assert default_ssl_context() is default_ssl_context()


def test_prepare_context_without_a_context_gives_the_shared_default() -> None:
    assert prepare_context(None) is default_ssl_context()


def _alpn_offered(context: ssl.SSLContext) -> list[str]:
    """The ALPN protocols ``context`` puts in its ClientHello.

    SSLContext has no getter for its ALPN list, so drive the client side of a
    handshake into memory and parse the extension (RFC 8446 §4.1.2, RFC 7301).
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = context.wrap_bio(incoming, outgoing, server_hostname="example.test")
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    record = outgoing.read()
    assert record[0] == 22 and record[5] == 1, "not a ClientHello"
    pos = 5 + 4 + 2 + 32  # record header, handshake header, legacy_version, random
    pos += 1 + record[pos]  # session id
    pos += 2 + int.from_bytes(record[pos : pos + 2], "big")  # cipher suites
    pos += 1 + record[pos]  # compression methods
    end = pos + 2 + int.from_bytes(record[pos : pos + 2], "big")
    pos += 2
    while pos < end:
        kind = int.from_bytes(record[pos : pos + 2], "big")
        length = int.from_bytes(record[pos + 2 : pos + 4], "big")
        body = record[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if kind == 16:  # application_layer_protocol_negotiation
            names, at = [], 2
            while at < len(body):
                names.append(body[at + 1 : at + 1 + body[at]].decode())
                at += 1 + body[at]
            return names
    return []


def test_a_context_without_alpn_offers_none() -> None:
    assert _alpn_offered(ssl.create_default_context()) == []


def test_default_context_offers_only_h2() -> None:
    assert _alpn_offered(default_ssl_context()) == [ALPN_H2]


def test_prepare_context_sets_alpn_on_a_callers_context() -> None:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    assert prepare_context(context) is context
    assert _alpn_offered(context) == ["h2"]


def test_prepare_context_keeps_the_callers_verification_settings() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    prepared = prepare_context(context)
    assert (prepared.check_hostname, prepared.verify_mode) == (False, ssl.CERT_NONE)
