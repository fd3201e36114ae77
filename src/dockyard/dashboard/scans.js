// dockyard dashboard: the vulnerability view (docs/dashboard.md, "Vulnerabilities").
//
// A table of images (one row per repository and manifest digest) with their scan status
// and findings per severity, and a details view of one manifest's findings. Fed by:
//   - the live feed, through dashboard.js calling window.dockyardScans.onEvent(ev) for each
//     event: an image manifest's `push` adds a row (its scan state is then asked once),
//     a `scan` event updates it (status, summary, report), a manifest `delete` removes it;
//     a scan that ends without an event (failed, unsupported) is seen by asking again
//     every few seconds while the row says queued or running;
//   - a click on a repository in the Repositories table: its tags, each with its `scan`
//     field, from GET ../v2/_dockyard/repositories/<name>/tags;
//   - a click on a row: GET ../v2/_dockyard/repositories/<name>/scans/<digest> (the
//     findings, the scanner, the report referrer's digest) shown in the details card.
(function () {
  "use strict";

  const SEVERITIES = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN"];
  const ROWS_MAX = 200; // images listed, most recently changed first
  const LOOKUPS_AT_ONCE = 4; // scan-state requests in flight
  const ASK_AGAIN = 3000; // ms before asking again about a scan not finished
  const NONE_ASKS = 5; // times a "none" (not queued yet, or scanning off) is asked
  const PENDING_ASKS = 100; // times a queued or running scan is asked (5 minutes)
  const PENDING = new Set(["", "none", "queued", "running"]);
  const STATUS_LABELS = {
    none: "not scanned",
    queued: "queued",
    running: "scanning",
    done: "scanned",
    failed: "failed",
    unsupported: "not scannable",
  };
  // Manifests whose scan state is worth showing: images and indexes (not referrers).
  const SCANNABLE = new Set([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
  ]);

  const $ = (id) => document.getElementById(id);
  const { shortDigest, span, formatCount, clock } = window.dockyardFormat;

  const rows = new Map(); // "repo@digest" -> row state
  const lookups = []; // keys waiting for their scan state
  let lookingUp = 0;
  let seq = 0; // change order: newest rows first
  let shown = null; // the key the details card shows
  let renderTimer = null;

  function repoPath(repository) {
    return repository.split("/").map(encodeURIComponent).join("/");
  }

  function apiUrl(path) {
    return new URL(`../v2/_dockyard/repositories/${path}`, location.href);
  }

  async function getJson(url) {
    const r = await fetch(url, { cache: "no-store", headers: { accept: "application/json" } });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    return r.json();
  }

  function upsert(repository, digest, fields) {
    const key = `${repository}@${digest}`;
    let row = rows.get(key);
    if (!row) {
      row = { key, repository, digest, tags: new Set(), status: "", summary: null, scannedAt: null };
      rows.set(key, row);
    }
    if (fields.tag) row.tags.add(fields.tag);
    for (const k of ["status", "summary", "scannedAt", "report", "scanner"]) {
      if (fields[k] !== undefined && fields[k] !== null) row[k] = fields[k];
    }
    row.seq = ++seq;
    if (rows.size > ROWS_MAX) {
      const oldest = [...rows.values()].sort((a, b) => a.seq - b.seq)[0];
      rows.delete(oldest.key);
    }
    scheduleRender();
    return row;
  }

  // -- the feed

  function onEvent(ev) {
    const t = ev.target || {};
    if (!t.repository || !t.digest) return;
    const key = `${t.repository}@${t.digest}`;
    if (ev.action === "scan") {
      upsert(t.repository, t.digest, {
        status: t.status,
        summary: t.summary,
        report: t.report,
        scanner: t.scanner,
        scannedAt: ev.timestamp,
      });
      if (shown === key) showDetails(t.repository, t.digest);
    } else if (ev.action === "push" && t.kind === "manifest" && !t.subject && SCANNABLE.has(t.mediaType)) {
      const known = rows.has(key);
      const row = upsert(t.repository, t.digest, { tag: t.tag });
      if (!known && !row.status) lookUp(key);
    } else if (ev.action === "delete" && t.kind === "manifest") {
      rows.delete(key);
      scheduleRender();
    }
  }

  // The state of a freshly pushed image (scanning may be off: "none"), asked once.
  function lookUp(key) {
    lookups.push(key);
    pump();
  }

  function pump() {
    while (lookingUp < LOOKUPS_AT_ONCE && lookups.length) {
      const row = rows.get(lookups.shift());
      if (!row || !PENDING.has(row.status || "none")) continue;
      lookingUp += 1;
      row.asked = (row.asked || 0) + 1;
      getJson(apiUrl(`${repoPath(row.repository)}/scans/${row.digest}`))
        .then((scan) => {
          // A scan event may have come meanwhile: it is newer than this answer.
          if (PENDING.has(row.status || "none")) applyScan(row, scan);
          // Only a finished scan makes an event: ask again while it waits (a while for
          // "none", which stays so when scanning is off).
          const limit = row.status === "none" ? NONE_ASKS : PENDING_ASKS;
          if (PENDING.has(row.status) && row.asked < limit) {
            setTimeout(() => lookUp(row.key), ASK_AGAIN);
          }
        })
        .catch(() => {})
        .finally(() => {
          lookingUp -= 1;
          pump();
        });
    }
  }

  function applyScan(row, scan) {
    row.status = scan.status;
    row.summary = scan.summary || null;
    row.scannedAt = scan.scannedAt || null;
    row.report = scan.report || null;
    row.scanner = scan.scanner || null;
    scheduleRender();
  }

  // -- a repository's tags (a click in the Repositories table)

  async function loadTags(repository) {
    const note = $("scans-note");
    try {
      const doc = await getJson(apiUrl(`${repoPath(repository)}/tags?n=100`));
      for (const tag of doc.tags || []) {
        const row = upsert(repository, tag.digest, { tag: tag.name });
        if (tag.scan) {
          row.status = tag.scan.status;
          row.summary = tag.scan.summary || null;
        } else if (!row.status) {
          row.status = "none";
        }
        if (PENDING.has(row.status) && !row.asked) lookUp(row.key);
      }
      note.textContent = `${repository}: ${formatCount((doc.tags || []).length)} tags listed`;
      document.body.dataset.scanTags = repository;
    } catch (e) {
      note.textContent = `Could not list the tags of ${repository} (${e.message}).`;
    }
    scheduleRender();
  }

  // -- rendering

  function scheduleRender() {
    if (renderTimer !== null) return;
    renderTimer = setTimeout(() => {
      renderTimer = null;
      render();
    }, 100);
  }

  function severityChips(summary, status) {
    const cell = document.createElement("td");
    cell.dataset.col = "vulnerabilities";
    if (!summary || status !== "done") {
      cell.append(span("muted", status === "done" ? "" : "–"));
      return cell;
    }
    let total = 0;
    for (const sev of SEVERITIES) {
      const n = summary[sev] || 0;
      total += n;
      const chip = span(`sev ${sev.toLowerCase()}${n ? "" : " zero"}`, `${sev[0]} ${n}`);
      chip.dataset.severity = sev;
      chip.dataset.count = String(n);
      chip.title = `${n} ${sev.toLowerCase()}`;
      cell.append(chip);
    }
    cell.dataset.total = String(total);
    if (!total) cell.append(span("sev clean", "none found"));
    return cell;
  }

  function render() {
    const sorted = [...rows.values()].sort((a, b) => b.seq - a.seq);
    const trs = sorted.map((row) => {
      const tr = document.createElement("tr");
      tr.dataset.repository = row.repository;
      tr.dataset.digest = row.digest;
      tr.dataset.status = row.status || "";
      tr.dataset.tags = [...row.tags].sort().join(",");
      if (row.key === shown) tr.className = "selected";
      const image = document.createElement("td");
      image.dataset.col = "image";
      image.append(document.createTextNode(row.repository));
      const tags = [...row.tags].sort();
      if (tags.length) image.append(span("ref tag", `:${tags.join(", :")}`));
      else image.append(span("ref mono", `@${shortDigest(row.digest)}`));
      image.title = `${row.repository}@${row.digest}`;
      const status = document.createElement("td");
      status.dataset.col = "status";
      status.append(span(`scan-status ${row.status || "unknown"}`, STATUS_LABELS[row.status] || "…"));
      const when = document.createElement("td");
      when.dataset.col = "scanned";
      when.className = "num";
      when.textContent = row.scannedAt ? clock(new Date(Date.parse(row.scannedAt))) : "";
      if (row.scannedAt) when.title = row.scannedAt;
      tr.append(image, status, severityChips(row.summary, row.status), when);
      return tr;
    });
    document.querySelector("#scans tbody").replaceChildren(...trs);
    $("scans-empty").hidden = trs.length > 0;
  }

  // -- the details card

  async function showDetails(repository, digest) {
    const key = `${repository}@${digest}`;
    shown = key;
    const card = $("scan-detail");
    card.hidden = false;
    card.dataset.state = "loading";
    let scan;
    try {
      scan = await getJson(apiUrl(`${repoPath(repository)}/scans/${digest}`));
    } catch (e) {
      if (shown !== key) return;
      card.dataset.state = "error";
      $("scan-detail-title").textContent = `${repository}@${shortDigest(digest)}: ${e.message}`;
      return;
    }
    if (shown !== key) return; // another row was clicked meanwhile
    const row = rows.get(key);
    if (row) applyScan(row, scan);
    renderDetails(scan);
    scheduleRender();
  }

  function renderDetails(scan) {
    const card = $("scan-detail");
    card.dataset.state = "shown";
    card.dataset.repository = scan.repository;
    card.dataset.digest = scan.digest;
    card.dataset.status = scan.status;
    card.dataset.report = scan.report || "";
    $("scan-detail-title").textContent = `${scan.repository}@${shortDigest(scan.digest)}`;
    $("scan-detail-title").title = `${scan.repository}@${scan.digest}`;
    const facts = [
      ["Status", STATUS_LABELS[scan.status] || scan.status, "status"],
      ["Scanner", scan.scanner || "–", "scanner"],
      ["Database", scan.dbUpdated || "–", "db"],
      ["Scanned", scan.scannedAt || "–", "scanned"],
      ["Report", scan.report || "–", "report"],
    ];
    if (scan.lastError) facts.push(["Last error", scan.lastError, "error"]);
    // An index: its findings are its platforms' together; say how each platform fared.
    if (scan.platforms && scan.platforms.length) {
      const each = scan.platforms.map((p) => `${p.platform || shortDigest(p.digest)}: ${summaryText(p)}`);
      facts.push(["Platforms", each.join(" · "), "platforms"]);
    }
    if (scan.policy && scan.policy.allowed === false) facts.push(["Pulls", `refused: ${scan.policy.reason}`, "policy"]);
    const dl = $("scan-detail-meta");
    dl.replaceChildren();
    for (const [label, value, name] of facts) {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value;
      dd.dataset.fact = name;
      if (name === "report") dd.className = "mono";
      dl.append(dt, dd);
    }
    const summary = $("scan-detail-summary");
    summary.replaceChildren();
    for (const sev of SEVERITIES) {
      const n = (scan.summary || {})[sev] || 0;
      const chip = span(`sev ${sev.toLowerCase()}${n ? "" : " zero"}`, `${sev.toLowerCase()} ${n}`);
      chip.dataset.severity = sev;
      chip.dataset.count = String(n);
      summary.append(chip);
    }
    const rank = (f) => SEVERITIES.indexOf(f.severity);
    const findings = [...(scan.findings || [])].sort(
      (a, b) => rank(a) - rank(b) || a.id.localeCompare(b.id) || a.package.localeCompare(b.package),
    );
    const trs = findings.map((f) => {
      const tr = document.createElement("tr");
      tr.dataset.id = f.id;
      tr.dataset.severity = f.severity;
      tr.dataset.package = f.package;
      tr.dataset.installed = f.installed;
      tr.dataset.fixed = f.fixed || "";
      const id = document.createElement("td");
      id.textContent = f.id;
      if (f.title) id.title = f.title;
      const sev = document.createElement("td");
      sev.append(span(`sev ${f.severity.toLowerCase()}`, f.severity.toLowerCase()));
      const cells = [f.package, f.installed, f.fixed || "no fix yet"].map((text) => {
        const td = document.createElement("td");
        td.textContent = text;
        return td;
      });
      tr.append(id, sev, ...cells);
      return tr;
    });
    document.querySelector("#scan-findings tbody").replaceChildren(...trs);
    const empty = $("scan-findings-empty");
    empty.hidden = trs.length > 0;
    empty.textContent = scan.status === "done" ? "No vulnerabilities found." : `No findings: ${STATUS_LABELS[scan.status] || scan.status}.`;
  }

  function start() {
    document.querySelector("#scans tbody").addEventListener("click", (e) => {
      const tr = e.target.closest("tr");
      if (tr) showDetails(tr.dataset.repository, tr.dataset.digest);
    });
    document.querySelector("#repos tbody").addEventListener("click", (e) => {
      const tr = e.target.closest("tr");
      if (tr && tr.dataset.repository) loadTags(tr.dataset.repository);
    });
    $("scan-detail-close").addEventListener("click", () => {
      shown = null;
      $("scan-detail").hidden = true;
      scheduleRender();
    });
    render();
  }

  // "C1 H1 L1", "no findings" or the status: the event stream's words for a scan event.
  function summaryText(target) {
    if (target.status !== "done" || !target.summary) return STATUS_LABELS[target.status] || target.status || "";
    const parts = SEVERITIES.filter((sev) => target.summary[sev]).map((sev) => `${sev[0]}${target.summary[sev]}`);
    return parts.length ? parts.join(" ") : "no findings";
  }

  window.dockyardScans = { onEvent, showDetails, loadTags, summaryText };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
