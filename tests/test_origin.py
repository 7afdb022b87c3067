"""URL parsing and origins (h2pool.origin), without I/O."""

from __future__ import annotations

import pytest

from h2pool.exceptions import InvalidRequest
from h2pool.origin import Origin, Target, parse_origin, parse_url


def test_https_url_with_port_and_path() -> None:
    assert parse_url("https://example.test:8443/a/b") == Target(Origin("https", "example.test", 8443), "/a/b")


def test_http_url() -> None:
    assert parse_url("http://127.0.0.1:8080/x") == Target(Origin("http", "127.0.0.1", 8080), "/x")


@pytest.mark.parametrize(("url", "port"), [("https://example.test/", 443), ("http://example.test/", 80)])
def test_default_ports(url: str, port: int) -> None:
    assert parse_url(url).origin.port == port


def test_scheme_and_host_are_case_insensitive() -> None:
    assert parse_url("HTTPS://Example.TEST/").origin == Origin("https", "example.test", 443)


def test_ipv6_host_is_unbracketed_in_origin_and_bracketed_in_authority() -> None:
    origin = parse_url("https://[::1]:8443/").origin
    assert origin == Origin("https", "::1", 8443)
    assert origin.authority == "[::1]:8443"
    assert str(origin) == "https://[::1]:8443"


def test_ipv6_authority_with_default_port_keeps_brackets() -> None:
    assert parse_url("https://[::1]/").origin.authority == "[::1]"


def test_query_is_kept_in_path() -> None:
    assert parse_url("https://example.test/search?q=1&r=2").path == "/search?q=1&r=2"


def test_empty_path_becomes_slash() -> None:
    assert parse_url("https://example.test").path == "/"


def test_empty_path_with_query_becomes_slash_query() -> None:
    assert parse_url("https://example.test?q=1").path == "/?q=1"


def test_fragment_is_not_sent() -> None:
    assert parse_url("https://example.test/a#frag").path == "/a"


@pytest.mark.parametrize("url", ["ftp://example.test/", "ws://example.test/", "example.test/", "/just/a/path"])
def test_unsupported_scheme_is_invalid(url: str) -> None:
    with pytest.raises(InvalidRequest, match="scheme"):
        parse_url(url)


@pytest.mark.parametrize("url", ["https://", "https:///path", "http://:8080/"])
def test_url_without_host_is_invalid(url: str) -> None:
    with pytest.raises(InvalidRequest, match="no host"):
        parse_url(url)


@pytest.mark.parametrize("url", ["https://user:pw@example.test/", "https://user@example.test/"])
def test_url_with_credentials_is_invalid(url: str) -> None:
    with pytest.raises(InvalidRequest, match="credentials"):
        parse_url(url)


@pytest.mark.parametrize("url", ["https://example.test/a b", "https://example.test/a?b c", "https://example.test/a\0"])
def test_space_or_nul_in_path_is_invalid(url: str) -> None:
    with pytest.raises(InvalidRequest, match="space or control"):
        parse_url(url)


@pytest.mark.parametrize("url", ["https://example.test:99999/", "https://example.test:port/", "https://[::1/"])
def test_malformed_authority_is_invalid(url: str) -> None:
    with pytest.raises(InvalidRequest, match="invalid URL"):
        parse_url(url)


def test_invalid_request_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_url("ftp://example.test/")


def test_space_in_host_is_invalid() -> None:
    with pytest.raises(InvalidRequest):
        parse_url("https://exa mple.test/")


def test_port_zero_is_invalid() -> None:
    with pytest.raises(InvalidRequest):
        parse_url("https://example.test:0/")


@pytest.mark.parametrize(
    ("origin", "authority"),
    [
        (Origin("https", "example.test", 443), "example.test"),
        (Origin("http", "example.test", 80), "example.test"),
        (Origin("https", "example.test", 80), "example.test:80"),
        (Origin("http", "example.test", 443), "example.test:443"),
        (Origin("https", "127.0.0.1", 8443), "127.0.0.1:8443"),
    ],
)
def test_authority_omits_only_the_scheme_default_port(origin: Origin, authority: str) -> None:
    assert origin.authority == authority


def test_str_of_origin_is_scheme_and_authority() -> None:
    assert str(Origin("https", "example.test", 443)) == "https://example.test"
    assert str(Origin("http", "example.test", 8080)) == "http://example.test:8080"


def test_urls_of_one_origin_share_it() -> None:
    assert parse_url("https://example.test/a").origin == parse_url("https://example.test:443/b?c").origin


def test_parse_origin_takes_an_origin_or_a_url() -> None:
    origin = Origin("https", "example.test", 8443)
    assert parse_origin(origin) is origin
    assert parse_origin("https://example.test:8443/ignored?x") == origin


def test_parse_origin_refuses_a_bad_url() -> None:
    with pytest.raises(InvalidRequest):
        parse_origin("mailto:someone@example.test")


def test_non_ascii_host_is_idna_encoded() -> None:
    from h2pool.headers import request_headers

    target = parse_url("https://ex\u00e4mple.test/")
    assert target.origin.host == "xn--exmple-cua.test"
    block = request_headers("GET", target.origin, target.path, None)
    assert (b":authority", b"xn--exmple-cua.test") in block
