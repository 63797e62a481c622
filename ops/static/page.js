// The daemon's page: its status (/api/status every 2 s) and a candlestick chart of one series,
// history then live from /api/stream (Server-Sent Events), drawn on a canvas. No library.
// Prices arrive as exact decimal strings: drawn as numbers, shown as the strings they are.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const candles = new Map(); // bucket_ms -> the newest version of that candle
  let source = null;
  let shown = [];
  let hover = null;
  let pending = false;
  const geometry = { left: 8, right: 70, top: 10, bottom: 24, slot: 8 };

  // ---- status ------------------------------------------------------------------------------

  function set(id, value) {
    $(id).textContent = value === null || value === undefined ? "–" : String(value);
  }

  function badge(state) {
    const el = $("state");
    el.textContent = state;
    el.className = "badge " + state;
  }

  function problems(list) {
    const ul = $("problems");
    ul.replaceChildren(...list.map((p) => Object.assign(document.createElement("li"), { textContent: p })));
  }

  async function status() {
    try {
      const answer = await fetch("/api/status", { credentials: "same-origin", cache: "no-store" });
      const s = await answer.json();
      if (!answer.ok) throw new Error(s.error || `HTTP ${answer.status}`);
      badge(s.state);
      set("s-broker", s.broker);
      set("s-connections", `${s.connections_up} / ${s.connections_total}`);
      set("s-rate", s.ticks_per_s.toLocaleString());
      set("s-ticks", s.ticks.toLocaleString());
      set("s-written", s.candles_written.toLocaleString());
      set("s-spool", s.spool_depth + (s.candles_in_memory ? ` (+${s.candles_in_memory} in memory)` : ""));
      set("s-gaps", s.gaps_open);
      set("s-role", s.ha_role || "single");
      problems([...s.problems, ...s.notes]);
      set("updated", "as of " + new Date().toLocaleTimeString());
    } catch (err) {
      badge("unreachable");
      problems([`status: ${err.message || err}`]);
    }
  }

  // ---- the series to show ------------------------------------------------------------------

  let known = [];

  function option(value, label) {
    return Object.assign(document.createElement("option"), { value, textContent: label || value });
  }

  function fillIntervals(wanted) {
    const entry = known.find((s) => s.symbol === $("symbol").value);
    const intervals = entry && entry.intervals.length ? entry.intervals : ["1m"];
    $("interval").replaceChildren(...intervals.map((i) => option(i)));
    $("interval").value = intervals.includes(wanted) ? wanted : intervals[0];
  }

  async function symbols() {
    const answer = await fetch("/api/symbols", { credentials: "same-origin", cache: "no-store" });
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.error || `HTTP ${answer.status}`);
    known = body.symbols;
    $("symbol").replaceChildren(...known.map((s) => option(s.symbol, s.streaming ? s.symbol : `${s.symbol} (stored)`)));
    const wanted = params.get("symbol");
    const first = known.find((s) => s.streaming) || known[0];
    if (wanted && !known.some((s) => s.symbol === wanted)) $("symbol").append(option(wanted));
    $("symbol").value = wanted || (first ? first.symbol : "");
    fillIntervals(params.get("interval") || "1m");
    $("since").value = params.get("since") || "";
  }

  // ---- the stream --------------------------------------------------------------------------

  function streamState(text) {
    set("stream-state", text);
  }

  function open() {
    if (source) source.close();
    candles.clear();
    hover = null;
    document.body.dataset.live = "false";
    schedule();
    const symbol = $("symbol").value;
    if (!symbol) {
      streamState("no symbol to show");
      return;
    }
    const q = new URLSearchParams({ symbol, interval: $("interval").value });
    if ($("since").value.trim()) q.set("since", $("since").value.trim());
    history.replaceState(null, "", "?" + q); // the address shows (and shares) what is drawn
    streamState("reading the history…");
    source = new EventSource("/api/stream?" + q);
    source.addEventListener("candle", (e) => {
      const c = JSON.parse(e.data);
      candles.set(c.bucket_ms, c); // a revision replaces the version it revises
      schedule();
    });
    source.addEventListener("live", (e) => {
      streamState(`live (${JSON.parse(e.data).history} candles from the store)`);
      document.body.dataset.live = "true";
    });
    source.addEventListener("error", (e) => {
      if (e.data) {
        streamState(JSON.parse(e.data).error); // the server ended the stream and said why
        source.close();
      } else if (source.readyState === EventSource.CLOSED) {
        streamState("the stream was refused: check the symbol, the interval and since (/api/symbols lists the symbols)");
      } else {
        streamState("reconnecting…"); // EventSource resumes with Last-Event-ID by itself
        document.body.dataset.live = "false";
      }
    });
  }

  // ---- drawing -----------------------------------------------------------------------------

  function schedule() {
    if (!pending) {
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        draw();
      });
    }
  }

  function niceStep(range, count) {
    const raw = range / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
    return step || raw;
  }

  function color(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function draw() {
    const canvas = $("chart");
    const ctx = canvas.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    const W = canvas.clientWidth || 1000;
    const H = Math.round(W * 0.46);
    if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
      canvas.width = Math.round(W * dpr);
      canvas.height = Math.round(H * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    ctx.font = "11px system-ui, sans-serif";
    const { left, right, top, bottom } = geometry;
    const plotW = W - left - right;
    const volH = (H - top - bottom) * 0.2;
    const priceH = H - top - bottom - volH - 8;
    const all = [...candles.values()].sort((a, b) => a.bucket_ms - b.bucket_ms);
    const slot = all.length ? Math.max(4, Math.min(24, plotW / all.length)) : 8;
    geometry.slot = slot;
    shown = all.slice(-Math.floor(plotW / slot));
    canvas.dataset.candles = String(shown.length);
    canvas.dataset.lastBucket = shown.length ? shown[shown.length - 1].bucket : "";
    readout();
    if (!shown.length) {
      ctx.fillStyle = "#6b7280";
      ctx.fillText("no candles yet", left + 10, top + 20);
      return;
    }
    let lo = Infinity;
    let hi = -Infinity;
    let maxVol = 1;
    for (const c of shown) {
      lo = Math.min(lo, Number(c.low));
      hi = Math.max(hi, Number(c.high));
      maxVol = Math.max(maxVol, c.volume);
    }
    if (hi === lo) {
      hi += 1;
      lo -= 1;
    }
    const pad = (hi - lo) * 0.05;
    hi += pad;
    lo -= pad;
    const y = (p) => top + ((hi - p) / (hi - lo)) * priceH;

    // price grid and labels
    const step = niceStep(hi - lo, 6);
    ctx.strokeStyle = "#eef0f3";
    ctx.fillStyle = "#6b7280";
    ctx.lineWidth = 1;
    for (let p = Math.ceil(lo / step) * step; p <= hi; p += step) {
      const yy = Math.round(y(p)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, yy);
      ctx.lineTo(left + plotW, yy);
      ctx.stroke();
      ctx.fillText(p.toFixed(step < 1 ? 2 : 0), left + plotW + 6, yy + 4);
    }

    const up = color("--up");
    const down = color("--down");
    const volTop = top + priceH + 8;
    const body = Math.max(1, Math.floor(slot * 0.6));
    let lastLabel = -Infinity;
    let lastDay = "";
    shown.forEach((c, i) => {
      const x = left + i * slot + slot / 2;
      const o = Number(c.open);
      const cl = Number(c.close);
      const fill = cl >= o ? up : down;
      ctx.globalAlpha = c.final ? 1 : 0.45;
      ctx.strokeStyle = fill;
      ctx.fillStyle = fill;
      ctx.beginPath();
      ctx.moveTo(Math.round(x) + 0.5, y(Number(c.high)));
      ctx.lineTo(Math.round(x) + 0.5, y(Number(c.low)));
      ctx.stroke();
      const yTop = y(Math.max(o, cl));
      const h = Math.max(1, y(Math.min(o, cl)) - yTop);
      ctx.fillRect(Math.round(x - body / 2), yTop, body, h);
      if (c.source === "backfill" || c.source === "partial") {
        ctx.strokeStyle = color(c.source === "backfill" ? "--backfill" : "--partial");
        ctx.lineWidth = 2;
        ctx.strokeRect(Math.round(x - body / 2) - 1.5, yTop - 1.5, body + 3, h + 3);
        ctx.lineWidth = 1;
      }
      const vh = (c.volume / maxVol) * volH;
      ctx.fillStyle = fill;
      ctx.globalAlpha = (c.final ? 1 : 0.45) * 0.5;
      ctx.fillRect(Math.round(x - body / 2), volTop + volH - vh, body, vh);
      ctx.globalAlpha = 1;
      if (hover === c) {
        ctx.strokeStyle = "#9ca3af";
        ctx.strokeRect(Math.round(x - slot / 2) + 0.5, top, Math.max(1, Math.round(slot) - 1), H - top - bottom);
      }
      // time labels, at least 70 px apart; the date where the day changes
      const day = c.bucket.slice(0, 10);
      if (x - lastLabel >= 70) {
        ctx.fillStyle = "#6b7280";
        ctx.fillText(day !== lastDay ? `${day.slice(5)} ${c.bucket.slice(11, 16)}` : c.bucket.slice(11, 16), x - 14, H - 8);
        lastLabel = x;
        lastDay = day;
      }
    });
  }

  function readout() {
    const c = hover || shown[shown.length - 1];
    if (!c) {
      $("readout").innerHTML = "&nbsp;";
      return;
    }
    const when = c.bucket.slice(0, 16).replace("T", " ");
    const state = c.final ? "final" : "not final";
    $("readout").textContent =
      `${when} IST  O ${c.open}  H ${c.high}  L ${c.low}  C ${c.close}  V ${c.volume}` +
      (c.oi === null ? "" : `  OI ${c.oi}`) +
      `  ${c.source}, ${state}`;
  }

  $("chart").addEventListener("mousemove", (e) => {
    const rect = e.currentTarget.getBoundingClientRect();
    const i = Math.floor((e.clientX - rect.left - geometry.left) / geometry.slot);
    const next = i >= 0 && i < shown.length ? shown[i] : null;
    if (next !== hover) {
      hover = next;
      schedule();
    }
  });
  $("chart").addEventListener("mouseleave", () => {
    hover = null;
    schedule();
  });
  window.addEventListener("resize", schedule);
  $("symbol").addEventListener("change", () => fillIntervals($("interval").value));
  $("pick").addEventListener("submit", (e) => {
    e.preventDefault();
    open();
  });

  status();
  setInterval(status, 2000);
  symbols()
    .then(open)
    .catch((err) => streamState(`symbols: ${err.message || err}`));
})();
