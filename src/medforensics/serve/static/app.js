// medforensics web page: upload files to /v1/scans, list verdicts, show the heat-map over the image.
// Plain JS, no build step, no network beyond this server. User-supplied strings are only ever set
// through textContent (never innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "medforensics.token";
const state = { rows: [], selected: null, image: null, heat: null, wlTimer: null, seq: 0 };

// ------------------------------------------------------------------ token & requests
const tokenInput = $("token");
tokenInput.value = sessionStorage.getItem(TOKEN_KEY) || "";
tokenInput.addEventListener("input", () => {
  sessionStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
  loadModelInfo();
});

function authHeaders() {
  const t = tokenInput.value.trim();
  return t ? { Authorization: "Bearer " + t } : {};
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail || detail; } catch (e) { /* not JSON */ }
    const err = new Error(`${resp.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    err.status = resp.status;
    throw err;
  }
  return resp;
}

function setStatus(text) { $("status").textContent = text; }

async function loadModelInfo() {
  if (!tokenInput.value.trim()) { $("model-info").textContent = "enter a token to start"; return; }
  try {
    const info = await (await api("/v1/models")).json();
    const a = info.active;
    $("model-info").textContent = `model ${a.name} (${a.detector} v${a.detector_version}), threshold ${a.threshold.toFixed(3)}`;
  } catch (e) {
    $("model-info").textContent = e.status === 401 ? "token rejected" : "cannot reach the service: " + e.message;
  }
}

// ------------------------------------------------------------------ upload
async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  const force = $("force").checked ? "?force=true" : "";
  setStatus(`scanning ${files.length} file(s)…`);
  try {
    const body = await (await api("/v1/scans" + force, { method: "POST", body: form })).json();
    for (const item of body.items) addRow(item.filename, item.status, item.error, item.scan, item.cached);
    setStatus(`${body.n} file(s): ${body.n_ok} scanned, ${body.n_error} error(s)`);
  } catch (e) {
    setStatus("upload failed — " + e.message);
  }
  $("file-input").value = "";
}

const drop = $("drop");
["dragenter", "dragover"].forEach((ev) => drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((ev) => drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => upload([...e.dataTransfer.files]));
$("file-input").addEventListener("change", (e) => upload([...e.target.files]));

// ------------------------------------------------------------------ table
function addRow(name, status, error, scan, cached) {
  const row = { key: "r" + (state.seq++), name: name || (scan && scan.path) || "", status, error, scan, cached: !!cached };
  state.rows.unshift(row);
  render();
}

function verdictOf(row) { return row.status === "ok" && row.scan ? row.scan.verdict : "error"; }

function render() {
  const filter = $("filter").value;
  const tbody = $("result-rows");
  tbody.replaceChildren();
  const shown = state.rows.filter((r) => filter === "all" || verdictOf(r) === filter);
  for (const r of shown) {
    const tr = document.createElement("tr");
    const v = verdictOf(r);
    tr.className = "row-" + (v === "error" ? "error" : "verdict") + (state.selected === r ? " selected" : "");
    tr.dataset.key = r.key;
    const cells = [r.name, null, r.scan && r.scan.score != null ? r.scan.score.toFixed(4) : "",
                   r.scan && r.scan.modality ? r.scan.modality : "",
                   v === "error" ? (r.error || "error") : (r.cached ? "from store" : "")];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      if (i === 0) td.className = "file";
      if (i === 4) td.className = "detail";
      if (i === 1) {
        const b = document.createElement("span");
        b.className = "badge " + v;
        b.textContent = v;
        td.appendChild(b);
      } else {
        td.textContent = text;
      }
      tr.appendChild(td);
    });
    tr.addEventListener("click", () => select(r));
    tbody.appendChild(tr);
  }
  $("empty").hidden = shown.length > 0;
}
$("filter").addEventListener("change", render);

$("load-stored").addEventListener("click", async () => {
  try {
    const body = await (await api("/v1/scans?limit=200")).json();
    const known = new Set(state.rows.map((r) => r.scan && r.scan.id));
    for (const rec of body.items.reverse()) {
      if (!known.has(rec.id)) addRow(rec.path, rec.error ? "error" : "ok", rec.error, rec, true);
    }
    setStatus(`${body.items.length} of ${body.total} stored result(s) loaded`);
  } catch (e) { setStatus("cannot load stored results — " + e.message); }
});

// ------------------------------------------------------------------ downloads (rows currently shown)
function shownRows() {
  const filter = $("filter").value;
  return state.rows.filter((r) => filter === "all" || verdictOf(r) === filter);
}
function download(name, type, text) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 0);
}
const FIELDS = ["file", "scan_id", "status", "verdict", "score", "threshold", "modality", "model_id", "error"];
function flat(r) {
  const s = r.scan || {};
  return { file: r.name, scan_id: s.id || "", status: r.status, verdict: verdictOf(r), score: s.score ?? "",
           threshold: s.threshold ?? "", modality: s.modality || "", model_id: s.model_id || "", error: r.error || "" };
}
$("download-json").addEventListener("click", () =>
  download("medforensics-results.json", "application/json",
           JSON.stringify(shownRows().map((r) => ({ file: r.name, status: r.status, error: r.error, scan: r.scan })), null, 2)));
$("download-csv").addEventListener("click", () => {
  const esc = (v) => { const s = String(v); return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; };
  const lines = [FIELDS.join(",")].concat(shownRows().map((r) => { const f = flat(r); return FIELDS.map((k) => esc(f[k])).join(","); }));
  download("medforensics-results.csv", "text/csv", lines.join("\n") + "\n");
});

// ------------------------------------------------------------------ viewer
async function fetchBitmap(url) {
  const blob = await (await api(url)).blob();
  return createImageBitmap(blob);
}

function draw() {
  const c = $("canvas"), ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  c.dataset.drawn = "";
  if (!state.image) return;
  c.width = state.image.width; c.height = state.image.height;
  ctx.globalAlpha = 1;
  ctx.drawImage(state.image, 0, 0);
  if (state.heat) {
    ctx.globalAlpha = parseFloat($("opacity").value);
    ctx.drawImage(state.heat, 0, 0, c.width, c.height);
    ctx.globalAlpha = 1;
  }
  c.dataset.drawn = state.heat ? "image+heatmap" : "image";
}

function setupWindow(display) {
  const ct = display && display.units === "HU";
  const lo = display ? display.min : 0, hi = display ? display.max : 1;
  const step = ct ? 1 : 0.01;
  for (const [id, min, max, val] of [["level", lo, hi, display.default_level], ["width", step, hi - lo, display.default_width]]) {
    const el = $(id);
    el.min = min; el.max = max; el.step = step; el.value = val;
  }
  $("wl-controls").dataset.units = display.units || "";
  showWindow();
}
function showWindow() {
  const u = $("wl-controls").dataset.units;
  $("level-out").textContent = $("level").value + (u ? " " + u : "");
  $("width-out").textContent = $("width").value + (u ? " " + u : "");
}

async function loadImage(r) {
  const s = r.scan;
  const q = `?level=${encodeURIComponent($("level").value)}&width=${encodeURIComponent($("width").value)}`;
  const img = await fetchBitmap(s.image_url + q);
  if (state.selected === r) { state.image = img; draw(); }
}

async function select(r) {
  state.selected = r;
  state.image = state.heat = null;
  render();
  const viewer = $("viewer");
  viewer.hidden = false;
  $("viewer-title").textContent = r.name;
  draw();
  if (!r.scan || !r.scan.image_url) {
    $("viewer-note").textContent = r.error ? "not scanned: " + r.error : "no preview stored for this result";
    return;
  }
  const s = r.scan;
  setupWindow(s.display);
  $("viewer-note").textContent = `${s.verdict} — score ${s.score.toFixed(4)} at threshold ${s.threshold.toFixed(4)}` +
    (s.heatmap_url ? "" : " (this model gives no heat-map)") +
    (s.display.units === "HU" ? " · window/level in HU" : "");
  try {
    await loadImage(r);
    if (s.heatmap_url) {
      const heat = await fetchBitmap(s.heatmap_url + "?mode=map");
      if (state.selected === r) { state.heat = heat; draw(); }
    }
  } catch (e) { $("viewer-note").textContent = "cannot load the preview — " + e.message; }
}

$("opacity").addEventListener("input", draw);
for (const id of ["level", "width"]) {
  $(id).addEventListener("input", () => {
    showWindow();
    clearTimeout(state.wlTimer);
    const r = state.selected;
    if (r && r.scan) state.wlTimer = setTimeout(() => loadImage(r).catch(() => {}), 120);
  });
}
$("wl-reset").addEventListener("click", () => {
  const r = state.selected;
  if (r && r.scan) { setupWindow(r.scan.display); loadImage(r).catch(() => {}); }
});

render();
loadModelInfo();
