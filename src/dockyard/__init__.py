"""dockyard: an OCI Distribution registry on trio."""

__version__ = "0.1.0"
