"""A client of other registries: the pull-through cache, replication and the scanner runner
talk to remote OCI registries through ``client.RegistryClient`` (HTTP as a client only;
nothing here imports ``core``, ``http`` or ``meta``)."""
