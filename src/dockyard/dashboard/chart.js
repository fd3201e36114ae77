// dockyard dashboard: the push/pull rate chart on a canvas, with a hover tooltip.
// dashboard.js owns the data; the chart reads the buckets (start -> counts) through
// `buckets()` and calls `changed()` when the hover moves, so the page redraws it.
// Loaded after format.js; exposes window.dockyardChart.
"use strict";

(function () {
  const { formatBytes, formatCount, pad, clock, span } = window.dockyardFormat;

  function createChart(canvas, tip, { bucket, colors, buckets, changed }) {
    const BUCKET = bucket;
    const COLORS = colors;
    const chart = { points: [], hover: -1 };

    // A whole-number gridline step for four gridlines that cover `peak`.
    function niceStep(peak) {
      const raw = peak / 4;
      if (raw <= 1) return 1;
      const p = 10 ** Math.floor(Math.log10(raw));
      for (const m of [1, 2, 2.5, 5, 10]) {
        if (m * p >= raw && Number.isInteger(m * p)) return m * p;
      }
      return 10 * p;
    }

    function drawChart() {
      const dpr = window.devicePixelRatio || 1;
      const w = canvas.clientWidth;
      const h = canvas.clientHeight;
      if (!w || !h) return;
      if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
        canvas.width = Math.round(w * dpr);
        canvas.height = Math.round(h * dpr);
      }
      const ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);
      const starts = [...buckets().keys()].sort((a, b) => a - b);
      const n = Math.max(starts.length, 1);
      const m = { l: 40, r: 8, t: 10, b: 24 }; // margins
      const pw = w - m.l - m.r;
      const ph = h - m.t - m.b;
      const slot = pw / n; // one time bucket: a push bar and a pull bar
      let peak = 0;
      for (const s of starts) {
        const b = buckets().get(s);
        peak = Math.max(peak, b.push, b.pull);
      }
      const step = niceStep(peak);
      const top = step * 4;
      const y = (v) => m.t + ph - (v / top) * ph;

      if (chart.hover >= 0 && chart.hover < starts.length) {
        ctx.fillStyle = "rgba(139, 154, 187, 0.14)";
        ctx.fillRect(m.l + chart.hover * slot, m.t, slot, ph);
      }

      ctx.font = "11px system-ui, sans-serif";
      ctx.lineWidth = 1;
      ctx.strokeStyle = "#24314f";
      ctx.fillStyle = "#8b9abb";
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (let i = 0; i <= 4; i++) {
        const yy = Math.round(y(step * i)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(m.l, yy);
        ctx.lineTo(w - m.r, yy);
        ctx.stroke();
        ctx.fillText(formatCount(step * i), m.l - 6, yy);
      }
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      const labelEvery = Math.max(1, Math.round(180 / BUCKET)); // a time label every 3 minutes
      starts.forEach((s, i) => {
        if (s % (labelEvery * BUCKET) !== 0) return;
        const d = new Date(s * 1000);
        const xx = Math.round(m.l + i * slot) + 0.5;
        ctx.strokeStyle = "#1a2540";
        ctx.beginPath();
        ctx.moveTo(xx, m.t);
        ctx.lineTo(xx, m.t + ph);
        ctx.stroke();
        ctx.fillStyle = "#8b9abb";
        ctx.fillText(`${pad(d.getHours())}:${pad(d.getMinutes())}`, xx, m.t + ph + 6);
      });

      const gap = Math.max(1, slot * 0.2);
      const bar = Math.max(1, (slot - gap) / 2);
      starts.forEach((s, i) => {
        const b = buckets().get(s);
        [["push", 0], ["pull", 1]].forEach(([action, k]) => {
          const v = b[action];
          if (!v) return;
          const x0 = m.l + i * slot + gap / 2 + k * bar;
          const y0 = y(v);
          ctx.fillStyle = COLORS[action];
          ctx.fillRect(x0, y0, Math.max(1, bar - 0.5), m.t + ph - y0);
        });
      });
      ctx.strokeStyle = "#3a4a6d";
      ctx.beginPath();
      ctx.moveTo(m.l, m.t + ph + 0.5);
      ctx.lineTo(w - m.r, m.t + ph + 0.5);
      ctx.stroke();

      chart.points = starts.map((s, i) => ({ x: m.l + (i + 0.5) * slot, start: s }));
    }

    function onChartHover(e) {
      const rect = canvas.getBoundingClientRect();
      const mx = e.clientX - rect.left;
      let best = -1;
      let dist = Infinity;
      chart.points.forEach((p, i) => {
        const d = Math.abs(p.x - mx);
        if (d < dist) {
          dist = d;
          best = i;
        }
      });
      if (best < 0) return;
      chart.hover = best;
      const start = chart.points[best].start;
      const b = buckets().get(start);
      if (!b) return;
      tip.textContent = "";
      tip.append(
        span("", `${clock(new Date(start * 1000))} – ${clock(new Date((start + BUCKET) * 1000))}`),
        document.createElement("br"),
        span("", `push ${b.push} (${formatBytes(b.bytes_in)}) · pull ${b.pull} (${formatBytes(b.bytes_out)})`),
      );
      tip.hidden = false;
      const left = Math.min(Math.max(chart.points[best].x + 10, 0), rect.width - tip.offsetWidth - 4);
      tip.style.left = `${left}px`;
      tip.style.top = "8px";
      changed();
    }

    function onChartLeave() {
      chart.hover = -1;
      tip.hidden = true;
      changed();
    }

    canvas.addEventListener("mousemove", onChartHover);
    canvas.addEventListener("mouseleave", onChartLeave);
    return { draw: drawChart };
  }

  window.dockyardChart = { createChart };
})();
