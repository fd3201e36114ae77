"""HTTP <-> core: the raw ASGI application serving the OCI /v2/ API."""
