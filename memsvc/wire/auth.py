"""The client half of auth: the metadata a call carries, and whether an address is this host."""
import ipaddress


def bearer_metadata(api_key: str | None) -> tuple:
    """The call metadata a client sends for ``api_key`` (none without a key)."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from outside
