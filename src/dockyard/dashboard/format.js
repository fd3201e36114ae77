// dockyard dashboard: formatting helpers shared by dashboard.js and chart.js (pure: no
// page state, no I/O). Loaded first; exposes window.dockyardFormat.
"use strict";

(function () {
  function formatBytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
  }

  function formatCount(n) {
    return n.toLocaleString("en-US");
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function clock(date) {
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
  }

  // `now` and `seconds` are epoch seconds on the server's clock.
  function ago(seconds, now) {
    const s = Math.max(0, Math.round(now - seconds));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  function shortDigest(d) {
    if (!d) return "";
    const [alg, hex] = d.split(":");
    return hex ? `${alg}:${hex.slice(0, 12)}` : d.slice(0, 19);
  }

  // Shell-style glob, as the feed's repository filter: * ? [abc] [!abc]; * crosses "/".
  function globToRegex(glob) {
    let out = "";
    for (let i = 0; i < glob.length; i++) {
      const c = glob[i];
      if (c === "*") out += ".*";
      else if (c === "?") out += ".";
      else if (c === "[") {
        const end = glob.indexOf("]", i + 2);
        if (end === -1) {
          out += "\\[";
        } else {
          let body = glob.slice(i + 1, end).replace(/\\/g, "\\\\");
          if (body[0] === "!") body = "^" + body.slice(1);
          out += `[${body}]`;
          i = end;
        }
      } else out += c.replace(/[.+^${}()|\\\]]/g, "\\$&");
    }
    return new RegExp(`^${out}$`);
  }

  function span(cls, text) {
    const el = document.createElement("span");
    el.className = cls;
    el.textContent = text;
    return el;
  }

  window.dockyardFormat = { formatBytes, formatCount, pad, clock, ago, shortDigest, globToRegex, span };
})();
