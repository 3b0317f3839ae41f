"""How the listener names the address it listens on (the line operators look for in the log)."""

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from txvoice.service.listener import listening_address


def test_tcp_addresses_read_host_colon_port() -> None:
    assert listening_address(IPv4Address("TCP", "127.0.0.1", 8765)) == "127.0.0.1:8765"
    assert listening_address(IPv6Address("TCP", "::1", 8765)) == "[::1]:8765"


def test_a_unix_socket_reads_as_its_path() -> None:
    assert listening_address(UNIXAddress(b"/run/txvoice.sock")) == "unix:/run/txvoice.sock"
    assert listening_address(UNIXAddress("/run/txvoice.sock")) == "unix:/run/txvoice.sock"
