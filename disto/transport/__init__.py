"""IO around the sans-IO layers: the asyncio channel (bytes, write coalescing, flow control), the UDP heartbeat
thread, and TLS contexts."""
from .channel import Channel, ChannelOwner
from .tls import TlsFiles
from .udp_heartbeat import UdpHeartbeat

__all__ = ["Channel", "ChannelOwner", "TlsFiles", "UdpHeartbeat"]
