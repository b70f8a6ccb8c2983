"""The client half of auth: the channel (TLS or not), the metadata a call carries, and whether an
address is this host."""
import ipaddress

import grpc

MAX_MESSAGE_BYTES = 256 << 20


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


def open_channel(address: str, tls_ca: str | None = None) -> grpc.Channel:
    """A channel to memsvc: TLS verified against the CA certificate file ``tls_ca``, else plaintext."""
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    if tls_ca is None:
        return grpc.insecure_channel(address, options=options)
    with open(tls_ca, "rb") as f:
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=f.read()), options=options)
