"""Event log writers and readers (pull-event batching now; feeds and webhooks later)."""
