"""Vulnerability scanning (docs/scanning.md): scanners (``scanner.Scanner``: the built-in
Trivy runner, a client of Harbor's Pluggable Scanner API), the scan queue driven by the
event log, reports stored as OCI referrers of the scanned manifest, and the pull policy."""
