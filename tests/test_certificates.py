"""CertificateNames (h2pool.certificates): which hosts a verified certificate covers, for coalescing.

Most cases are ``getpeercert()`` dicts written by hand, since the rules are
about names, not cryptography. One test reads the dict from a real TLS
handshake (in memory, no socket) with a trustme certificate, because the
text Python gives for an IP address entry (IPv6 uncompressed, upper case) is
what :meth:`CertificateNames.from_peercert` has to parse.
"""

from __future__ import annotations

import ipaddress
import ssl
from typing import Any

import pytest
import trustme

from h2pool.certificates import CertificateNames

#: Bounds the in-memory handshake: a TLS 1.3 handshake needs two round trips.
HANDSHAKE_ROUNDS = 10


def peercert(*entries: tuple[str, str]) -> dict[str, Any]:
    """A ``getpeercert()`` dict with these subjectAltName entries (and a subject that must not count)."""
    return {"subject": ((("commonName", "cn.example.test"),),), "subjectAltName": entries}


def names(*entries: tuple[str, str]) -> CertificateNames:
    certificate = CertificateNames.from_peercert(peercert(*entries))
    assert certificate is not None
    return certificate


def dns(*hosts: str) -> CertificateNames:
    return names(*(("DNS", host) for host in hosts))


def handshake_peercert(ca: trustme.CA, leaf: trustme.LeafCert, server_hostname: str) -> dict[str, Any]:
    """``getpeercert()`` of a verified client after a TLS handshake over memory BIOs."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(server_context)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_context)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname=server_hostname)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(HANDSHAKE_ROUNDS):
        done = True
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                done = False
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if done:
            cert = client.getpeercert()
            assert cert is not None
            return cert
    pytest.fail(f"in-memory TLS handshake not done after {HANDSHAKE_ROUNDS} rounds")


# from_peercert


@pytest.mark.parametrize("cert", [None, {}], ids=["no-certificate", "unverified"])
def test_from_peercert_gives_none_without_a_verified_certificate(cert: dict[str, Any] | None) -> None:
    # getpeercert() is {} when the context did not verify (CERT_NONE).
    assert CertificateNames.from_peercert(cert) is None


def test_from_peercert_reads_dns_and_ip_address_entries_only() -> None:
    certificate = names(
        ("DNS", "A.Test"),
        ("DNS", "b.test."),
        ("IP Address", "127.0.0.1"),
        ("IP Address", "0:0:0:0:0:0:0:1"),
        ("email", "root@c.test"),
        ("URI", "https://d.test/"),
        ("IP Address", "not an address"),
    )
    assert certificate.dns_names == {"a.test", "b.test"}
    assert certificate.ip_addresses == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}


def test_from_peercert_ignores_the_subject_common_name() -> None:
    certificate = names()
    assert certificate.dns_names == frozenset()
    assert not certificate.covers("cn.example.test")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("0:0:0:0:0:0:0:1", "::1"),
        ("FE80:0:0:0:0:0:0:1", "fe80::1"),
        ("2001:DB8:0:0:0:0:A:B", "2001:db8::a:b"),
        # Surrounding whitespace, as a line-oriented formatter might leave, is stripped.
        ("0:0:0:0:0:0:0:1\n", "::1"),
    ],
    ids=["loopback", "link-local-upper-case", "documentation-prefix", "trailing-newline"],
)
def test_from_peercert_parses_ipv6_entries_as_python_prints_them(text: str, address: str) -> None:
    certificate = names(("IP Address", text))
    assert certificate.ip_addresses == {ipaddress.ip_address(address)}
    assert certificate.covers(address)


def test_from_peercert_reads_a_real_handshakes_certificate() -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("a.test", "*.wild.test", "127.0.0.1", "::1", "2001:db8::a:b")
    certificate = CertificateNames.from_peercert(handshake_peercert(ca, leaf, "a.test"))
    assert certificate is not None
    assert certificate.dns_names == {"a.test", "*.wild.test"}
    assert certificate.ip_addresses == {ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "2001:db8::a:b")}
    for host in ("a.test", "x.wild.test", "127.0.0.1", "::1", "2001:DB8:0::A:B"):
        assert certificate.covers(host), host
    for host in ("b.test", "wild.test", "127.0.0.2", "::2"):
        assert not certificate.covers(host), host


# covers: DNS names


def test_covers_an_exact_name_ignoring_case_and_a_trailing_dot() -> None:
    certificate = dns("a.example.test", "B.Example.Test.")
    for host in ("a.example.test", "A.EXAMPLE.TEST", "a.example.test.", "b.example.test", "B.example.TEST."):
        assert certificate.covers(host), host
    for host in ("c.example.test", "example.test", "a.example.test.x", "xa.example.test", ""):
        assert not certificate.covers(host), host


def test_wildcard_matches_exactly_one_left_most_label() -> None:
    certificate = dns("*.example.test")
    assert certificate.covers("a.example.test")
    assert certificate.covers("XN--BCHER-KVA.example.test")
    assert certificate.covers("a.Example.Test.")
    assert not certificate.covers("example.test")
    assert not certificate.covers("a.b.example.test")
    assert not certificate.covers(".example.test")
    assert not certificate.covers("a.example.test.other")


def test_wildcard_inside_a_name_covers_nothing_below_the_first_label() -> None:
    certificate = dns("a.*.example.test")
    assert not certificate.covers("a.b.example.test")
    assert not certificate.covers("b.example.test")


@pytest.mark.parametrize("pattern", ["f*.example.test", "*oo.example.test", "f*o.example.test"])
def test_no_partial_wildcards(pattern: str) -> None:
    certificate = dns(pattern)
    assert not certificate.covers("foo.example.test")
    assert not certificate.covers("f.example.test")


def test_wildcard_over_a_two_label_name_covers_nothing() -> None:
    certificate = dns("*.test")
    assert not certificate.covers("a.test")
    assert not certificate.covers("test")
    assert not certificate.covers("a.b.test")


# covers: IP addresses


def test_an_ip_host_matches_ip_entries_only() -> None:
    certificate = names(("DNS", "a.test"), ("IP Address", "127.0.0.1"))
    assert certificate.covers("127.0.0.1")
    assert not certificate.covers("127.0.0.2")
    assert not certificate.covers("::1")


def test_a_dns_entry_spelling_an_ip_address_does_not_cover_that_address() -> None:
    certificate = dns("127.0.0.1", "::1", "*.0.0.1")
    assert not certificate.covers("127.0.0.1")
    assert not certificate.covers("::1")


def test_an_ip_entry_does_not_cover_a_name() -> None:
    certificate = names(("IP Address", "127.0.0.1"))
    assert not certificate.covers("localhost")
    assert not certificate.covers("1.0.0.127.in-addr.arpa")


@pytest.mark.parametrize("host", ["::1", "0:0:0:0:0:0:0:1", "0::1", "0000:0000::0001", "::0001"])
def test_ipv6_hosts_are_compared_as_addresses_not_text(host: str) -> None:
    assert names(("IP Address", "0:0:0:0:0:0:0:1")).covers(host)


def test_ipv6_host_with_a_scope_matches_the_address_without_it() -> None:
    certificate = names(("IP Address", "FE80:0:0:0:0:0:0:1"))
    assert certificate.covers("fe80::1%lo")
    assert certificate.covers("fe80::1%1")
    assert not certificate.covers("fe80::2%lo")


def test_an_ipv4_mapped_ipv6_host_is_not_the_ipv4_address() -> None:
    # OpenSSL compares the raw address bytes: 16 are not 4.
    assert not names(("IP Address", "127.0.0.1")).covers("::ffff:127.0.0.1")


def test_repr_lists_every_name_and_address() -> None:
    text = repr(names(("DNS", "b.test"), ("DNS", "a.test"), ("IP Address", "127.0.0.1")))
    assert text == "<CertificateNames a.test, b.test, 127.0.0.1>"
