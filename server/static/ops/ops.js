// hexdispatch ops map: cells, drivers, pending orders and jobs, live from /v1/ws/ops (admin token).
// No library and no map tiles: the page draws everything on one canvas (equirectangular, scaled by cos(lat)).
// What it drew is counted on <body> (data-hexes-drawn, data-drivers-drawn, ...) for tests and scripts.
(function () {
  "use strict";

  const STATUS_COLOURS = {
    idle: "#2a9d3f", offered: "#e0a800", en_route: "#1f6fd1", at_restaurant: "#8e44ad",
    delivering: "#e8590c", offline: "#8894a5",
  };
  const VIEWPORT_DEBOUNCE_MS = 300;

  const body = document.body;
  const canvas = document.getElementById("map");
  const ctx = canvas.getContext("2d");
  const statusLine = document.getElementById("status");
  const panel = document.getElementById("cells");
  const shadeSelect = document.getElementById("shade");
  const legend = document.getElementById("legend");
  const login = document.getElementById("login");

  const state = {
    frame: null, frameAt: 0, frames: 0, interval: 1000,
    previous: new Map(),          // driver id -> [lat, lng] drawn before the latest frame (for smooth motion)
    view: null,                   // {lat, lng, scale}: the centre and pixels per degree of latitude
    autoFit: true, selected: null, socket: null, welcomed: false, retryMs: 500, viewportTimer: null,
  };
  window.opsMap = state;

  // The admin token: ?token= (then kept for this tab and taken out of the address bar), or asked for.
  function tokenFromPage() {
    const params = new URLSearchParams(location.search);
    const fromUrl = params.get("token");
    if (fromUrl) {
      sessionStorage.setItem("hexdispatch-ops-token", fromUrl);
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
      return fromUrl;
    }
    return sessionStorage.getItem("hexdispatch-ops-token");
  }

  function askForToken(why) {
    body.dataset.state = "needs-token";
    const text = document.getElementById("login-why");
    if (why) { text.textContent = why; text.classList.add("error"); }
    login.hidden = false;
    document.getElementById("token").focus();
  }

  login.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = document.getElementById("token").value.trim();
    if (!token) return;
    sessionStorage.setItem("hexdispatch-ops-token", token);
    login.hidden = true;
    connect(token);
  });

  // The feed ---------------------------------------------------------------------------------------

  function connect(token) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/v1/ws/ops?token=${encodeURIComponent(token)}`);
    state.socket = socket;
    state.welcomed = false;
    body.dataset.state = "connecting";
    setStatus("connecting…");
    socket.onmessage = (event) => onMessage(JSON.parse(event.data));
    socket.onclose = (event) => {
      if (state.socket !== socket) return;
      state.socket = null;
      if (!state.welcomed) {  // refused at the handshake (no admin token) or no server: ask again
        sessionStorage.removeItem("hexdispatch-ops-token");
        askForToken("The server did not accept this token (it needs the admin role), or it cannot be reached.");
        return;
      }
      body.dataset.state = "reconnecting";
      setStatus(`disconnected (${event.code}); reconnecting…`);
      setTimeout(() => connect(token), state.retryMs);
      state.retryMs = Math.min(state.retryMs * 2, 10000);
    };
  }

  function onMessage(message) {
    if (message.type === "welcome") {
      state.welcomed = true;
      state.retryMs = 500;
      state.interval = (message.interval_s || 1) * 1000;
      body.dataset.state = "live";
      sendViewport();
    } else if (message.type === "frame") {
      const drawn = new Map();
      if (state.frame) {
        const t = motionProgress();
        for (const d of state.frame.drivers) {
          const from = state.previous.get(d[0]) || [d[1], d[2]];
          drawn.set(d[0], [from[0] + (d[1] - from[0]) * t, from[1] + (d[2] - from[1]) * t]);
        }
      }
      state.previous = drawn;
      state.frame = message;
      state.frameAt = performance.now();
      state.frames += 1;
      body.dataset.frames = String(state.frames);
      if (state.autoFit) fit();
      renderPanel();
    } else if (message.type === "error") {
      setStatus(`server: ${message.code}: ${message.message}`);
    }
  }

  function sendViewport() {
    clearTimeout(state.viewportTimer);
    state.viewportTimer = setTimeout(() => {
      const socket = state.socket;
      if (!socket || socket.readyState !== WebSocket.OPEN || !state.view) return;
      const [north, west] = unproject(0, 0);
      const [south, east] = unproject(canvas.clientWidth, canvas.clientHeight);
      const clamp = (v, m) => Math.max(-m, Math.min(m, v));
      socket.send(JSON.stringify({
        type: "viewport", south: clamp(south, 90), north: clamp(north, 90),
        west: clamp(west, 180), east: clamp(east, 180),
      }));
    }, VIEWPORT_DEBOUNCE_MS);
  }

  // Projection, pan and zoom -----------------------------------------------------------------------

  function project(lat, lng) {
    const v = state.view;
    const k = Math.cos(v.lat * Math.PI / 180);
    return [canvas.clientWidth / 2 + (lng - v.lng) * k * v.scale, canvas.clientHeight / 2 - (lat - v.lat) * v.scale];
  }

  function unproject(x, y) {
    const v = state.view;
    const k = Math.cos(v.lat * Math.PI / 180);
    return [v.lat - (y - canvas.clientHeight / 2) / v.scale, v.lng + (x - canvas.clientWidth / 2) / (k * v.scale)];
  }

  function fit() {
    const frame = state.frame;
    if (!frame) return;
    // Every cell with drivers, orders or jobs (an empty cell far away would shrink the city to a dot), else all.
    const busy = frame.cells.filter((c) => c.drivers_total || c.pending_orders || c.open_offers || c.jobs);
    const points = [];
    for (const cell of busy.length ? busy : frame.cells) points.push(...cell.boundary);
    for (const d of frame.drivers) points.push([d[1], d[2]]);
    if (!points.length) return;
    let south = 90, north = -90, west = 180, east = -180;
    for (const [lat, lng] of points) {
      south = Math.min(south, lat); north = Math.max(north, lat);
      west = Math.min(west, lng); east = Math.max(east, lng);
    }
    const lat = (south + north) / 2, lng = (west + east) / 2;
    const k = Math.cos(lat * Math.PI / 180);
    const width = Math.max(canvas.clientWidth - 40, 50), height = Math.max(canvas.clientHeight - 40, 50);
    const scale = Math.min(height / Math.max(north - south, 1e-4), width / Math.max((east - west) * k, 1e-4));
    const changed = !state.view || Math.abs(state.view.scale - scale) > 1e-6 * scale ||
      state.view.lat !== lat || state.view.lng !== lng;
    state.view = { lat, lng, scale };
    if (changed) sendViewport();
  }

  let drag = null;
  canvas.addEventListener("mousedown", (event) => {
    drag = { x: event.clientX, y: event.clientY, moved: false };
    canvas.classList.add("dragging");
  });
  window.addEventListener("mousemove", (event) => {
    if (!drag || !state.view) return;
    const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
    if (!drag.moved) return;
    const k = Math.cos(state.view.lat * Math.PI / 180);
    state.view.lng -= dx / (k * state.view.scale);
    state.view.lat += dy / state.view.scale;
    drag.x = event.clientX; drag.y = event.clientY;
    state.autoFit = false;
    sendViewport();
  });
  window.addEventListener("mouseup", (event) => {
    if (drag && !drag.moved) selectAt(event);
    drag = null;
    canvas.classList.remove("dragging");
  });
  canvas.addEventListener("wheel", (event) => {
    if (!state.view) return;
    event.preventDefault();
    const rect = canvas.getBoundingClientRect();
    const x = event.clientX - rect.left, y = event.clientY - rect.top;
    const [lat, lng] = unproject(x, y);
    state.view.scale *= Math.exp(-event.deltaY * 0.0015);
    const [lat2, lng2] = unproject(x, y);
    state.view.lat += lat - lat2;
    state.view.lng += lng - lng2;
    state.autoFit = false;
    sendViewport();
  }, { passive: false });
  document.getElementById("fit").addEventListener("click", () => { state.autoFit = true; fit(); });
  shadeSelect.addEventListener("change", renderPanel);
  window.addEventListener("resize", () => { if (state.autoFit) fit(); sendViewport(); });

  function insidePolygon(x, y, polygon) {
    let inside = false;
    for (let i = 0, j = polygon.length - 1; i < polygon.length; j = i++) {
      const [xi, yi] = polygon[i], [xj, yj] = polygon[j];
      if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  }

  function selectAt(event) {
    if (!state.frame || !state.view) return;
    const rect = canvas.getBoundingClientRect();
    const x = event.clientX - rect.left, y = event.clientY - rect.top;
    const hit = state.frame.cells.find((c) => insidePolygon(x, y, c.boundary.map(([la, ln]) => project(la, ln))));
    select(hit ? hit.cell : null, false);
  }

  function select(cellId, centre) {
    state.selected = cellId;
    if (centre && cellId && state.frame) {
      const cell = state.frame.cells.find((c) => c.cell === cellId);
      if (cell) {
        const n = cell.boundary.length;
        state.view.lat = cell.boundary.reduce((s, p) => s + p[0], 0) / n;
        state.view.lng = cell.boundary.reduce((s, p) => s + p[1], 0) / n;
        state.autoFit = false;
        sendViewport();
      }
    }
    renderPanel();
    const card = panel.querySelector(`[data-cell="${cellId}"]`);
    if (card) card.scrollIntoView({ block: "nearest" });
  }

  // Drawing ----------------------------------------------------------------------------------------

  function shadeValue(cell) { return cell[shadeSelect.value] || 0; }

  function shadeColour(value, max) {
    const t = max > 0 ? Math.min(1, value / max) : 0;
    if (shadeSelect.value === "idle_drivers") return `rgba(42, 157, 63, ${0.06 + 0.5 * t})`;
    return `rgba(215, 38, 61, ${0.06 + 0.55 * t})`;
  }

  function motionProgress() {
    return Math.min(1, (performance.now() - state.frameAt) / state.interval);
  }

  function resizeCanvas() {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(canvas.clientWidth * ratio), height = Math.round(canvas.clientHeight * ratio);
    if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  }

  function visible(x, y) {
    return x >= -5 && y >= -5 && x <= canvas.clientWidth + 5 && y <= canvas.clientHeight + 5;
  }

  function draw() {
    resizeCanvas();
    ctx.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
    const frame = state.frame;
    const counts = { hexes: 0, drivers: 0, orders: 0, jobs: 0 };
    if (frame && state.view) {
      const max = Math.max(0, ...frame.cells.map(shadeValue));
      for (const cell of frame.cells) {
        const corners = cell.boundary.map(([lat, lng]) => project(lat, lng));
        ctx.beginPath();
        corners.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
        ctx.closePath();
        ctx.fillStyle = shadeColour(shadeValue(cell), max);
        ctx.fill();
        const selected = cell.cell === state.selected;
        ctx.lineWidth = selected ? 3 : 1;
        ctx.strokeStyle = selected ? "#1d2430" : "#7d8a9c";
        ctx.stroke();
        if (corners.some(([x, y]) => visible(x, y))) counts.hexes += 1;
      }
      const t = motionProgress();
      const at = new Map();  // where each driver is drawn now: on its way from the previous frame's position
      for (const d of frame.drivers) {
        const from = state.previous.get(d[0]) || [d[1], d[2]];
        at.set(d[0], project(from[0] + (d[1] - from[0]) * t, from[1] + (d[2] - from[1]) * t));
      }
      ctx.setLineDash([5, 4]);
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#3a506b";
      for (const job of frame.jobs) {
        const [x1, y1] = at.get(job[0]) || project(job[1], job[2]), [x2, y2] = project(job[3], job[4]);
        ctx.beginPath(); ctx.moveTo(x1, y1); ctx.lineTo(x2, y2); ctx.stroke();
        if (visible(x1, y1) || visible(x2, y2)) counts.jobs += 1;
      }
      ctx.setLineDash([]);
      ctx.fillStyle = "#d7263d";
      for (const order of frame.pending) {
        const [x, y] = project(order[1], order[2]);
        ctx.fillRect(x - 4, y - 4, 8, 8);
        if (visible(x, y)) counts.orders += 1;
      }
      for (const d of frame.drivers) {
        const [x, y] = at.get(d[0]);
        ctx.beginPath();
        ctx.arc(x, y, 4, 0, 2 * Math.PI);
        ctx.fillStyle = STATUS_COLOURS[d[3]] || "#000";
        ctx.fill();
        ctx.lineWidth = 1;
        ctx.strokeStyle = "#fff";
        ctx.stroke();
        if (visible(x, y)) counts.drivers += 1;
      }
    }
    body.dataset.hexesDrawn = String(counts.hexes);
    body.dataset.driversDrawn = String(counts.drivers);
    body.dataset.ordersDrawn = String(counts.orders);
    body.dataset.jobsDrawn = String(counts.jobs);
    if (frame) {
      const totals = frame.totals;
      const age = ((Date.now() / 1000) - frame.at).toFixed(1);
      setStatus(`${body.dataset.state} · ${totals.cells} cells · ${totals.drivers} drivers ` +
        `(${counts.drivers} drawn${totals.drivers_sampled ? ", sampled" : ""}) · ${totals.orders_waiting} orders waiting ` +
        `(${totals.pending_orders} not yet offered) · ` +
        `${totals.jobs} jobs · frame ${age} s old` + (frame.unanswered.length ? ` · ${frame.unanswered.length} cells silent` : ""));
    }
    requestAnimationFrame(draw);
  }

  // The cells' panel -------------------------------------------------------------------------------

  function escape(text) {
    return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  }

  function renderPanel() {
    const frame = state.frame;
    if (!frame) return;
    const max = Math.max(0, ...frame.cells.map(shadeValue));
    const cells = [...frame.cells].sort((a, b) => shadeValue(b) - shadeValue(a) || a.cell.localeCompare(b.cell));
    panel.innerHTML = cells.map((c) => {
      const chips = Object.entries(c.drivers).map(([status, n]) =>
        `<span class="chip"><span class="dot" style="background:${STATUS_COLOURS[status] || "#000"}"></span>` +
        `${escape(status.replace("_", " "))} ${n}</span>`).join("");
      return `<section class="cell${c.cell === state.selected ? " selected" : ""}" data-cell="${escape(c.cell)}">` +
        `<h3>${escape(c.cell)}<span class="swatch" style="background:${shadeColour(shadeValue(c), max)}"></span></h3>` +
        `<dl><dt>pending orders</dt><dd>${c.pending_orders}</dd><dt>idle drivers</dt><dd>${c.idle_drivers}</dd>` +
        `<dt>drivers online</dt><dd>${c.drivers_total}</dd><dt>open offers</dt><dd>${c.open_offers}</dd>` +
        `<dt>active jobs</dt><dd>${c.jobs}</dd><dt>tick p50 / p99</dt><dd>${c.tick_ms_p50.toFixed(1)} / ` +
        `${c.tick_ms_p99.toFixed(1)} ms</dd><dt>GPS lag p99</dt><dd>${c.gps_lag_ms_p99.toFixed(1)} ms</dd>` +
        `<dt>offers / fixes</dt><dd>${c.offers} / ${c.gps_fixes}</dd>` +
        `<dt>node</dt><dd>${escape((c.node_id || "?").slice(0, 8))}</dd></dl>` +
        `<div class="chips">${chips}</div></section>`;
    }).join("");
  }

  panel.addEventListener("click", (event) => {
    const card = event.target.closest("[data-cell]");
    if (card) select(card.dataset.cell, true);
  });

  function renderLegend() {
    legend.innerHTML = Object.entries(STATUS_COLOURS).filter(([s]) => s !== "offline").map(([status, colour]) =>
      `<div><span class="dot" style="background:${colour}"></span>${status.replace("_", " ")}</div>`).join("") +
      `<div><span class="square"></span>order waiting for a driver (at its restaurant)</div>` +
      `<div><span class="line"></span>job: driver to next stop</div>`;
  }

  function setStatus(text) { statusLine.textContent = text; }

  renderLegend();
  requestAnimationFrame(draw);
  const token = tokenFromPage();
  if (token) connect(token); else askForToken();
})();
