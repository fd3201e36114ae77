"""dockyard's perf suite: a load generator and scenario runner for OCI registries.

Any registry that speaks the OCI distribution API on loopback, over plain HTTP, TLS
(HTTP/1.1) or HTTP/2 (``--tls``, ``--http2``), can be measured; ``compare`` runs the same
scenarios against two registries alternately (A, B, B, A, ...) and reports each figure
as median and min-max over the repeats, plus the A/B ratio of every repeat. See
``perf/README.md`` for the commands.

Modules::

    httpclient  blocking HTTP/1.1 keep-alive connection on a raw socket: bodies sent
                from memory (or a repeated block), downloads drained into one reused
                buffer (no copy into Python objects, no hashing)
    h2client    the same connection's methods over HTTP/2 (the h2 library, TLS, ALPN
                h2 checked), with Go's transport settings
    tls         a CA and server certificate made at run time; the verifying client
                context and the ALPN check
    rate        request-rate engine: epoll loops over raw sockets in several processes,
                requests pre-built as bytes (TLS sockets with ``tls``; h2 state
                machines with ``run_h2``); optionally wrk (GET only)
    load        runs a list of tasks on C keep-alive connections (threads, optionally
                forked processes) between a start barrier and a deadline
    procstat    server CPU seconds (/proc/<pid>/stat) and resident memory
                (/proc/<pid>/status) summed over a process tree
    data        pre-generated, pre-hashed blobs and OCI image manifests
    oci         the client side of the OCI push/pull flows
    feed        websocket subscribers of the event feed (raw clients in epoll loops in
                several processes) and PUTs timed by kernel receive stamps
    scenarios   blob-push, blob-pull, manifest-rps, ci-storm, pull-storm, catalog,
                big-blob, events
    servers     dockyard and Distribution (docker-registry) started on loopback
    discard     a registry-shaped server that stores nothing: the client's own ceiling
    report      aggregation, tables, perf/RESULTS.md sections
    run         the command line (``python -m perf.run --help``)
    scaled      ci-storm and pull-storm through haproxy on several instances
    gc          one garbage collection over 100,000 blobs and 10,000 manifests, and the
                push rate while it runs
    gcdata      that data written straight into SQLite and the filesystem storage, with
                the reference model of what a collection keeps
    transport   what TLS and HTTP/2 cost dockyard itself: plain vs TLS vs HTTP/2
                clients on one build, alternated; trio SSLStream's read sizes
    proxy       the pull-through cache: a cold pull through it vs a direct pull from
                Distribution, a warm pull vs a pull of a normally pushed image
    micro       per-request costs measured alone: hypercorn's idle task vs a loop
                timer, SQLite's data_version vs a manifest lookup
"""
