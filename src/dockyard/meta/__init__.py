"""The metadata store: repositories, blob links, manifests, tags, uploads, the event log."""
