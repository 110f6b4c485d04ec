"""asyncio transports for the sans-IO wire layer."""
from .channel import Channel

__all__ = ["Channel"]
