// dockyard live dashboard: plain JavaScript, no libraries, no build step, works offline.
//
// Data flow (docs/dashboard.md):
//   1. GET ../v2/_dockyard/stats gives a snapshot: repositories, totals, and the last
//      minutes of activity per time bucket, covering exactly the events up to `last_id`.
//   2. The websocket feed ../v2/_dockyard/events?since=N streams events. Events after the
//      snapshot's last_id are added to the counters and the chart; earlier ones (the short
//      replay that fills the stream on load) are only listed.
//   3. After a drop the page reconnects with since=<last id received>: the server replays
//      what was missed, then continues live, so nothing is lost or counted twice.
//   4. Changes (push, mount, delete, untag) trigger a fresh snapshot (debounced), which
//      updates the repository list; live events newer than it are applied again on top.
//   5. With auth on, a websocket cannot carry the browser's credentials: before each
//      connection the page gets a single-use ticket from GET ../v2/_dockyard/ticket (an
//      ordinary request, which does) and passes it as ?ticket= (docs/security.md).
(function () {
  "use strict";

  const WINDOW = 900; // seconds of activity shown
  const BUCKET = 10; // seconds per chart bucket
  const REPLAY = 200; // events replayed into the stream on load
  const STREAM_MAX = 500; // events kept in the stream
  const RECENT_MAX = 5000; // live events kept to re-apply on top of a new snapshot
  const REFRESH_DELAY = 1000; // ms after a change before the snapshot is reloaded
  const REFRESH_EVERY = 60000; // ms between routine snapshot reloads
  const ACTIONS = ["push", "pull", "mount", "delete", "untag", "scan"];
  const COLORS = { push: "#2dd4bf", pull: "#60a5fa" };

  const $ = (id) => document.getElementById(id);
  const statsUrl = new URL(`../v2/_dockyard/stats?window=${WINDOW}&bucket=${BUCKET}`, location.href);
  const feedUrl = new URL("../v2/_dockyard/events", location.href);
  feedUrl.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const ticketUrl = new URL("../v2/_dockyard/ticket", location.href);

  const state = {
    offset: 0, // server clock minus this browser's clock, in seconds
    buckets: new Map(), // bucket start (epoch s) -> counts
    top: new Map(), // repository -> counts in the window
    countedThrough: -1, // the snapshot's last_id: events up to it are in the counts
    lastId: 0, // the newest event id received from the feed
    recent: [], // live events counted on top of the snapshot
    stream: [], // events listed, oldest first
    repos: [],
    totals: { repositories: 0, tags: 0, manifests: 0, blobs: 0, blob_bytes: 0 },
    truncated: false,
    sort: { key: "updated", dir: -1 },
    filter: { regex: null, action: "" },
    paused: false,
    socket: null,
    retry: 0,
    refreshTimer: null,
    refreshing: false,
    refreshAgain: false,
    dirty: true,
    changedRepos: new Set(),
    changeId: 0, // the newest change (not a pull) that a snapshot must cover
  };

  const { formatBytes, formatCount, clock, shortDigest, globToRegex, span } = window.dockyardFormat;

  function nowServer() {
    return Date.now() / 1000 + state.offset;
  }

  function ago(seconds) {
    return window.dockyardFormat.ago(seconds, nowServer());
  }

  // -- counting

  function emptyCounts() {
    const c = { bytes_in: 0, bytes_out: 0 };
    for (const a of ACTIONS) c[a] = 0;
    return c;
  }

  function addTo(counts, action, size) {
    counts[action] = (counts[action] || 0) + 1;
    if (action === "push") counts.bytes_in += size;
    if (action === "pull") counts.bytes_out += size;
  }

  function count(ev) {
    const ts = Date.parse(ev.timestamp) / 1000;
    const start = Math.floor(ts / BUCKET) * BUCKET;
    const size = ev.target.size || 0;
    let b = state.buckets.get(start);
    if (!b) {
      const first = Math.floor((nowServer() - WINDOW) / BUCKET) * BUCKET + BUCKET;
      if (start < first) return; // older than the window
      b = emptyCounts();
      state.buckets.set(start, b);
    }
    addTo(b, ev.action, size);
    const repo = ev.target.repository || "";
    let t = state.top.get(repo);
    if (!t) {
      t = emptyCounts();
      state.top.set(repo, t);
    }
    addTo(t, ev.action, size);
    state.dirty = true;
  }

  function roll() {
    const last = Math.floor(nowServer() / BUCKET) * BUCKET;
    const first = last - (WINDOW / BUCKET - 1) * BUCKET;
    for (const start of state.buckets.keys()) {
      if (start < first) state.buckets.delete(start);
    }
    for (let s = first; s <= last; s += BUCKET) {
      if (!state.buckets.has(s)) state.buckets.set(s, emptyCounts());
    }
    state.recent = state.recent.filter((ev) => Date.parse(ev.timestamp) / 1000 >= first - 60);
  }

  function applySnapshot(snap) {
    state.offset = snap.now - Date.now() / 1000;
    state.buckets = new Map();
    for (const b of snap.activity.buckets) {
      const c = emptyCounts();
      for (const k of Object.keys(c)) c[k] = b[k] || 0;
      state.buckets.set(b.start, c);
    }
    state.top = new Map();
    for (const t of snap.activity.top) {
      const c = emptyCounts();
      for (const k of Object.keys(c)) c[k] = t[k] || 0;
      state.top.set(t.repository, c);
    }
    state.repos = snap.repositories;
    state.totals = snap.totals;
    state.truncated = snap.repositories_truncated;
    state.countedThrough = snap.last_id;
    // Live events the snapshot does not cover yet go on top of it.
    state.recent = state.recent.filter((ev) => ev.id > snap.last_id);
    for (const ev of state.recent) count(ev);
    roll();
    document.body.dataset.statsId = String(snap.last_id);
    state.dirty = true;
    renderRepos();
    // A snapshot cached by the server may predate the change that asked for it.
    if (snap.last_id < state.changeId) scheduleRefresh(REFRESH_DELAY);
  }

  // -- the snapshot

  async function refresh() {
    if (state.refreshing) {
      state.refreshAgain = true;
      return;
    }
    state.refreshing = true;
    try {
      const r = await fetch(statsUrl, { cache: "no-store", headers: { accept: "application/json" } });
      if (!r.ok) throw new Error(`stats: HTTP ${r.status}`);
      applySnapshot(await r.json());
      showError("");
    } catch (e) {
      showError(`Could not load statistics (${e.message}); retrying.`);
      scheduleRefresh(5000);
    } finally {
      state.refreshing = false;
      if (state.refreshAgain) {
        state.refreshAgain = false;
        scheduleRefresh(REFRESH_DELAY);
      }
    }
  }

  function scheduleRefresh(delay) {
    if (state.refreshTimer !== null) return;
    state.refreshTimer = setTimeout(() => {
      state.refreshTimer = null;
      refresh();
    }, delay);
  }

  function showError(text) {
    const el = $("error");
    el.textContent = text;
    el.hidden = !text;
  }

  // -- the feed

  function setFeed(status, text) {
    const el = $("feed-status");
    el.dataset.state = status;
    $("feed-status-text").textContent = text;
    document.body.dataset.feed = status;
  }

  async function feedTicket() {
    // Short-lived and good for one connection; null if the server gives none.
    try {
      const r = await fetch(ticketUrl, { cache: "no-store", headers: { accept: "application/json" } });
      if (r.ok) return (await r.json()).ticket || null;
    } catch (e) {
      // The connection attempt below fails and is retried like any other drop.
    }
    return null;
  }

  function connect(since) {
    feedTicket().then((ticket) => openFeed(since, ticket));
  }

  function openFeed(since, ticket) {
    const url = new URL(feedUrl);
    url.searchParams.set("since", String(since));
    if (ticket) url.searchParams.set("ticket", ticket);
    document.body.dataset.feedTicket = ticket ? "yes" : "no";
    document.body.dataset.since = String(since);
    const ws = new WebSocket(url);
    state.socket = ws;
    let lagged = null;
    ws.onmessage = (m) => {
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch (e) {
        return;
      }
      if (msg.type === "welcome") {
        state.retry = 0;
        setFeed("live", "live");
      } else if (msg.type === "event") {
        onEvent(msg.event);
      } else if (msg.type === "heartbeat") {
        // Nothing new: the connection is alive.
      } else if (msg.type === "lagged") {
        lagged = msg.last_id;
      }
    };
    ws.onclose = () => {
      if (state.socket !== ws) return;
      state.socket = null;
      const resume = lagged !== null ? Math.max(lagged, state.lastId) : state.lastId;
      const delay = lagged !== null ? 0 : Math.min(10000, 500 * 2 ** state.retry);
      state.retry = Math.min(state.retry + 1, 5);
      setFeed("reconnecting", `reconnecting (resume after #${resume})`);
      setTimeout(() => {
        connect(resume);
        scheduleRefresh(REFRESH_DELAY); // the repository list may have changed meanwhile
      }, delay);
    };
  }

  function onEvent(ev) {
    if (ev.id <= state.lastId) return; // never list or count an event twice
    state.lastId = ev.id;
    $("last-id").textContent = `#${ev.id}`;
    if (ev.id > state.countedThrough && state.countedThrough >= 0) {
      count(ev);
      state.recent.push(ev);
      if (state.recent.length > RECENT_MAX) state.recent.splice(0, state.recent.length - RECENT_MAX);
      if (ev.action !== "pull") {
        state.changeId = ev.id;
        state.changedRepos.add(ev.target.repository);
        scheduleRefresh(REFRESH_DELAY);
      }
      bump(ev.action);
    }
    state.stream.push(ev);
    if (state.stream.length > STREAM_MAX) state.stream.splice(0, state.stream.length - STREAM_MAX);
    if (!state.paused && matches(ev)) {
      const list = $("stream");
      list.prepend(eventRow(ev, true));
      while (list.childElementCount > STREAM_MAX) list.lastElementChild.remove();
    }
    updateStreamCount();
  }

  function bump(action) {
    const id = action === "pull" ? "count-pull" : action === "push" ? "count-push" : null;
    if (!id) return;
    const card = $(id).parentElement;
    card.classList.remove("bump");
    void card.offsetWidth; // restart the animation
    card.classList.add("bump");
  }

  // -- the event stream

  function matches(ev) {
    const f = state.filter;
    if (f.action && ev.action !== f.action) return false;
    if (f.regex && !f.regex.test(ev.target.repository || "")) return false;
    return true;
  }

  function eventRow(ev, fresh) {
    const t = ev.target;
    const row = document.createElement("div");
    row.className = fresh ? "ev fresh" : "ev";
    row.dataset.eventId = String(ev.id);
    row.dataset.action = ev.action;
    row.dataset.repository = t.repository || "";
    row.dataset.kind = t.kind || "";
    if (t.digest) row.dataset.digest = t.digest;
    if (t.tag) row.dataset.tag = t.tag;
    const when = new Date(Date.parse(ev.timestamp));
    const time = span("time", clock(when));
    time.title = ev.timestamp;
    row.append(time);
    const badge = document.createElement("span");
    badge.append(span(`badge ${ev.action}`, ev.action));
    row.append(badge);
    const what = span("what", "");
    // A blob row garbage collection deleted belongs to no repository.
    what.append(document.createTextNode(t.repository || (t.kind === "blob" ? "(registry)" : "")));
    if (t.tag) {
      what.append(span("ref", ":"));
      what.append(span("tag", t.tag));
    } else if (t.digest) {
      what.append(span("ref mono", `@${shortDigest(t.digest)}`));
    }
    if (t.from) what.append(span("ref", ` from ${t.from}`));
    // Deletions by garbage collection or retention say who and why.
    if (t.reason) what.append(span("ref", ` (${t.by ? t.by + ": " : ""}${t.reason})`));
    const who = [ev.request && ev.request.addr, ev.request && ev.request.useragent]
      .filter(Boolean)
      .join(" · ");
    what.title = `${t.repository || ""}${t.digest ? "@" + t.digest : ""}${t.mediaType ? "\n" + t.mediaType : ""}${who ? "\n" + who : ""}`;
    row.append(what);
    const kind = span("kind", t.kind === "manifest" ? manifestLabel(t) : t.kind || "");
    if (t.mediaType) kind.title = t.mediaType;
    row.append(kind);
    row.append(span("size", t.size !== undefined ? formatBytes(t.size) : ""));
    return row;
  }

  const MANIFEST_LABELS = {
    "application/vnd.oci.image.manifest.v1+json": "OCI manifest",
    "application/vnd.oci.image.index.v1+json": "OCI index",
    "application/vnd.docker.distribution.manifest.v2+json": "Docker manifest",
    "application/vnd.docker.distribution.manifest.list.v2+json": "Docker list",
  };

  const IMAGE_CONFIGS = new Set([
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
  ]);

  function manifestLabel(t) {
    if (t.subject) return "referrer";
    // artifactType is the config's media type for plain images (referrers API rules).
    if (t.artifactType && !IMAGE_CONFIGS.has(t.artifactType)) return "artifact";
    return MANIFEST_LABELS[t.mediaType] || "manifest";
  }

  function renderStream() {
    const list = $("stream");
    const rows = [];
    for (let i = state.stream.length - 1; i >= 0; i--) {
      if (matches(state.stream[i])) rows.push(eventRow(state.stream[i], false));
    }
    list.replaceChildren(...rows);
    updateStreamCount();
  }

  function updateStreamCount() {
    const shown = $("stream").childElementCount;
    const total = state.stream.length;
    $("stream-count").textContent =
      shown === total ? `${formatCount(total)} events` : `${formatCount(shown)} of ${formatCount(total)} events`;
    $("stream-empty").hidden = shown > 0;
    $("stream-empty").textContent = total ? "No event matches the filters." : "Waiting for events…";
  }

  // -- counters, top repositories, repositories

  function setValue(id, value, text) {
    const el = $(id);
    el.dataset.value = String(value);
    el.textContent = text;
  }

  function renderCounters() {
    let push = 0;
    let pull = 0;
    let bin = 0;
    let bout = 0;
    const recent = emptyCounts();
    const minuteAgo = nowServer() - 60;
    for (const [start, b] of state.buckets) {
      push += b.push;
      pull += b.pull;
      bin += b.bytes_in;
      bout += b.bytes_out;
      if (start + BUCKET > minuteAgo) {
        recent.push += b.push;
        recent.pull += b.pull;
        recent.bytes_in += b.bytes_in;
        recent.bytes_out += b.bytes_out;
      }
    }
    setValue("count-push", push, formatCount(push));
    setValue("count-pull", pull, formatCount(pull));
    setValue("bytes-in", bin, formatBytes(bin));
    setValue("bytes-out", bout, formatBytes(bout));
    $("rate-push").textContent = `${formatCount(recent.push)} in the last min`;
    $("rate-pull").textContent = `${formatCount(recent.pull)} in the last min`;
    $("rate-in").textContent = `${formatBytes(recent.bytes_in / 60)}/s over the last min`;
    $("rate-out").textContent = `${formatBytes(recent.bytes_out / 60)}/s over the last min`;
    $("legend-push").textContent = formatCount(push);
    $("legend-pull").textContent = formatCount(pull);
    const t = state.totals;
    setValue("total-repositories", t.repositories, formatCount(t.repositories));
    setValue("total-tags", t.tags, formatCount(t.tags));
    setValue("total-manifests", t.manifests, formatCount(t.manifests));
    setValue("total-stored", t.blob_bytes, formatBytes(t.blob_bytes));
    setValue("total-blobs", t.blobs, formatCount(t.blobs));
  }

  function renderTop() {
    const entries = [...state.top.entries()]
      .map(([repo, c]) => [repo, c, ACTIONS.reduce((n, a) => n + c[a], 0)])
      .filter((e) => e[2] > 0 && e[0] !== "") // "": blob rows gc deleted, in no repository
      .sort((a, b) => b[2] - a[2] || a[0].localeCompare(b[0]))
      .slice(0, 10);
    const max = entries.length ? entries[0][2] : 1;
    const items = entries.map(([repo, c, total]) => {
      const li = document.createElement("li");
      li.dataset.repository = repo;
      li.append(span("repo", repo));
      const parts = [`${formatCount(c.push)} push`, `${formatCount(c.pull)} pull`];
      const other = total - c.push - c.pull;
      if (other) parts.push(`${formatCount(other)} other`);
      parts.push(formatBytes(c.bytes_in + c.bytes_out));
      li.append(span("count", parts.join(" · ")));
      const bar = span("bar", "");
      for (const [cls, n] of [["push", c.push], ["pull", c.pull], ["other", other]]) {
        if (!n) continue;
        const seg = document.createElement("span");
        seg.className = cls;
        seg.style.width = `${(100 * n) / max}%`;
        bar.append(seg);
      }
      li.append(bar);
      return li;
    });
    $("top-repos").replaceChildren(...items);
    $("top-empty").hidden = items.length > 0;
  }

  function renderRepos() {
    const key = state.sort.key;
    const dir = state.sort.dir;
    const repos = [...state.repos].sort((a, b) => {
      const x = a[key];
      const y = b[key];
      const c = typeof x === "string" ? x.localeCompare(y) : x - y;
      return c * dir || a.name.localeCompare(b.name);
    });
    const rows = repos.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.repository = r.name;
      if (state.changedRepos.has(r.name)) tr.className = "fresh";
      const cells = [
        [r.name, r.name, ""],
        [formatCount(r.tags), r.tags, "num"],
        [formatCount(r.manifests), r.manifests, "num"],
        [formatBytes(r.size), r.size, "num"],
        [ago(r.updated), r.updated, "num"],
      ];
      const names = ["name", "tags", "manifests", "size", "updated"];
      cells.forEach(([text, value, cls], i) => {
        const td = document.createElement("td");
        td.textContent = text;
        td.dataset.col = names[i];
        td.dataset.value = String(value);
        if (cls) td.className = cls;
        if (i === 0) td.title = r.name;
        if (i === 3) td.title = `${formatCount(r.size)} bytes`;
        if (i === 4) td.title = new Date(r.updated * 1000).toString();
        tr.append(td);
      });
      return tr;
    });
    state.changedRepos.clear();
    document.querySelector("#repos tbody").replaceChildren(...rows);
    $("repos-empty").hidden = rows.length > 0;
    const n = state.totals.repositories;
    $("repos-note").textContent = state.truncated
      ? `${formatCount(repos.length)} most recently pushed of ${formatCount(n)}`
      : `${formatCount(n)}`;
    for (const th of document.querySelectorAll("#repos th")) {
      const on = th.dataset.sort === key;
      th.classList.toggle("sorted", on);
      th.classList.toggle("asc", on && dir > 0);
      th.classList.toggle("desc", on && dir < 0);
    }
  }

  // -- wiring

  let chart = null; // the rate chart (chart.js), made in start()

  function render() {
    if (!state.dirty) return;
    state.dirty = false;
    renderCounters();
    renderTop();
    chart.draw();
  }

  function start() {
    $("filter-repo").addEventListener("input", (e) => {
      const glob = e.target.value.trim();
      state.filter.regex = glob ? globToRegex(glob) : null;
      renderStream();
    });
    $("filter-action").addEventListener("change", (e) => {
      state.filter.action = e.target.value;
      renderStream();
    });
    $("pause").addEventListener("click", (e) => {
      state.paused = !state.paused;
      e.target.setAttribute("aria-pressed", String(state.paused));
      e.target.textContent = state.paused ? "Resume" : "Pause";
      if (!state.paused) renderStream();
    });
    for (const th of document.querySelectorAll("#repos th")) {
      th.addEventListener("click", () => {
        const key = th.dataset.sort;
        if (state.sort.key === key) state.sort.dir = -state.sort.dir;
        else state.sort = { key, dir: key === "name" ? 1 : -1 };
        renderRepos();
      });
    }
    chart = window.dockyardChart.createChart($("rate-chart"), $("chart-tip"), {
      bucket: BUCKET,
      colors: COLORS,
      buckets: () => state.buckets,
      changed: () => {
        state.dirty = true;
      },
    });
    window.addEventListener("resize", () => {
      state.dirty = true;
    });
    setInterval(() => {
      roll();
      state.dirty = true;
    }, 1000);
    setInterval(() => scheduleRefresh(0), REFRESH_EVERY);
    const frame = () => {
      render();
      requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
    // Headless or hidden tabs may not run animation frames: render on a timer as well.
    setInterval(render, 500);

    (async () => {
      await refresh();
      while (state.countedThrough < 0) {
        await new Promise((r) => setTimeout(r, 1000));
        if (state.countedThrough < 0) await refresh();
      }
      state.lastId = Math.max(0, state.countedThrough - REPLAY);
      connect(state.lastId);
    })();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
