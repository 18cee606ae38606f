// Reader-study page: one blinded image at a time; positions are the only identifiers it ever sees.
"use strict";

const $ = (id) => document.getElementById(id);
const SESSION_KEY = "medforensics.reader.session";
const st = { sid: null, n: 0, position: null, answer: null };

function show(id) {
  for (const s of ["start", "reading", "results"]) $(s).hidden = s !== id;
}
function fail(msg) { $("error").textContent = msg; }

async function call(method, path, body) {
  const resp = await fetch(path, { method, headers: body ? { "Content-Type": "application/json" } : {},
                                   body: body ? JSON.stringify(body) : undefined });
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return resp.json();
}

function fmt(x) { return x === null || x === undefined ? "–" : Number(x).toFixed(3); }
function ci(b) { return b && b.lo !== null ? ` [${fmt(b.lo)}, ${fmt(b.hi)}]` : ""; }

async function showResults(sid) {
  const s = await call("GET", `/api/sessions/${encodeURIComponent(sid)}/summary`);
  show("results");
  $("results-intro").textContent = `${s.n} images (${s.n_real} real, ${s.n_fake} fake); reader “${s.reader_name}” vs ` +
    `detector ${s.detector_model.model_id} at threshold ${fmt(s.detector_model.threshold)}. 95% bootstrap intervals in brackets.`;
  const tbody = document.querySelector("#metrics tbody");
  tbody.replaceChildren();
  for (const [label, key] of [["Reader", "reader"], ["Detector", "detector"]]) {
    const m = s[key] || {}, b = (s.bootstrap || {})[key] || {};
    const tr = document.createElement("tr");
    tr.className = "metrics-" + key;
    for (const text of [label, fmt(m.acc) + ci(b.acc), fmt(m.auc) + ci(b.auc), fmt(m.real_acc), fmt(m.fake_acc)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  $("agreement").textContent = `Reader and detector agree on ${(100 * (s.agreement.fraction || 0)).toFixed(1)}% ` +
    `of images (Cohen's κ ${fmt(s.agreement.cohen_kappa)}).`;
  $("json-link").href = `/api/sessions/${encodeURIComponent(sid)}/summary`;
}

async function nextItem() {
  const s = await call("GET", `/api/sessions/${encodeURIComponent(st.sid)}`);
  st.n = s.n;
  $("progress").max = s.n;
  $("progress").value = s.n_answered;
  $("progress-text").textContent = `${s.n_answered} / ${s.n}`;
  if (s.next_position === null) {
    await call("POST", `/api/sessions/${encodeURIComponent(st.sid)}/finish`);
    sessionStorage.removeItem(SESSION_KEY);
    history.pushState(null, "", `/results/${encodeURIComponent(st.sid)}`);
    await showResults(st.sid);
    return;
  }
  st.position = s.next_position;
  st.answer = null;
  for (const b of document.querySelectorAll(".choice")) b.classList.remove("chosen");
  for (const r of document.querySelectorAll("input[name=conf]")) r.checked = false;
  $("next").disabled = true;
  $("image").src = `/api/sessions/${encodeURIComponent(st.sid)}/items/${st.position}/image.png`;
  show("reading");
}

function confidence() {
  const r = document.querySelector("input[name=conf]:checked");
  return r ? parseInt(r.value, 10) : null;
}
function refresh() { $("next").disabled = !(st.answer && confidence()); }
function choose(answer) {
  st.answer = answer;
  for (const b of document.querySelectorAll(".choice")) b.classList.toggle("chosen", b.dataset.answer === answer);
  refresh();
}

async function submit() {
  if ($("next").disabled) return;
  $("next").disabled = true;
  try {
    await call("POST", `/api/sessions/${encodeURIComponent(st.sid)}/items/${st.position}/answer`,
               { answer: st.answer, confidence: confidence() });
    await nextItem();
  } catch (e) { fail(e.message); refresh(); }
}

$("begin").addEventListener("click", async () => {
  try {
    const s = await call("POST", "/api/sessions", { reader: $("reader").value.trim() || "anonymous" });
    st.sid = s.session_id;
    sessionStorage.setItem(SESSION_KEY, st.sid);
    await nextItem();
  } catch (e) { fail(e.message); }
});
for (const b of document.querySelectorAll(".choice")) b.addEventListener("click", () => choose(b.dataset.answer));
for (const r of document.querySelectorAll("input[name=conf]")) r.addEventListener("change", refresh);
$("next").addEventListener("click", submit);
document.addEventListener("keydown", (e) => {
  if ($("reading").hidden || e.target.tagName === "INPUT" && e.target.type !== "radio") return;
  const k = e.key.toLowerCase();
  if (k === "r") choose("real");
  else if (k === "f") choose("fake");
  else if ("12345".includes(k) && k.length === 1) {
    document.querySelector(`input[name=conf][value="${k}"]`).checked = true;
    refresh();
  } else if (k === "enter") submit();
});

(async () => {
  const m = location.pathname.match(/^\/results\/([^/]+)$/);
  try {
    if (m) { await showResults(decodeURIComponent(m[1])); return; }
    const saved = sessionStorage.getItem(SESSION_KEY);
    if (saved) { st.sid = saved; await nextItem(); return; }
  } catch (e) { sessionStorage.removeItem(SESSION_KEY); fail(e.message); }
  show("start");
})();
