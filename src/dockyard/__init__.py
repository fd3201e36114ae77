"""dockyard: an OCI Distribution registry on trio or asyncio (through anyio)."""

__version__ = "0.1.0"
