// The avret search page: no framework, no build step. Talks to the same server's JSON API.
"use strict";

const token = new URLSearchParams(window.location.search).get("token");
const $ = (id) => document.getElementById(id);

function withToken(url) {
  if (!token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (err) {
    throw new Error("the server did not answer (" + err.message + ")");
  }
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    const msg = body && body.error ? body.error : "HTTP " + response.status;
    throw new Error(msg);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setBusy(busy) {
  $("busy").hidden = !busy;
  $("search-id").disabled = busy;
  $("search-file").disabled = busy;
}

function selectedClasses() {
  const raw = $("classes").value.trim();
  if (!raw) return null;
  return raw.split(",").map((c) => c.trim()).filter((c) => c);
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function render(answer) {
  const root = $("results");
  root.innerHTML = "";
  const galleryIsVideo = answer.direction === "audio-to-video";
  for (const block of answer.queries) {
    const head = document.createElement("h2");
    head.className = "query-head";
    head.textContent = "Query " + block.query + (block.query_class ? " — class " + block.query_class : "")
      + " (" + answer.direction + ", " + block.results.length + " results)";
    root.appendChild(head);
    const table = document.createElement("table");
    table.className = "results";
    const hr = document.createElement("tr");
    for (const h of ["rank", "clip id", "score", "class", "same class", "media"]) {
      const th = document.createElement("th");
      th.textContent = h;
      hr.appendChild(th);
    }
    table.appendChild(hr);
    for (const hit of block.results) {
      const tr = document.createElement("tr");
      tr.className = "hit";
      tr.dataset.clipId = hit.clip_id;
      cell(tr, String(hit.rank), "rank");
      cell(tr, hit.clip_id, "clip-id");
      cell(tr, hit.score.toFixed(4), "score");
      cell(tr, hit.class === null ? "" : hit.class, "class");
      if (hit.match === null || hit.match === undefined) cell(tr, "–", "match");
      else cell(tr, hit.match ? "✓ yes" : "✗ no", hit.match ? "match match-yes" : "match match-no");
      const td = cell(tr, "", "media");
      if (hit.media_url) {
        const el = document.createElement(galleryIsVideo ? "video" : "audio");
        el.controls = true;
        el.preload = "metadata";
        el.src = withToken(hit.media_url);
        td.appendChild(el);
      } else {
        td.textContent = "no media";
      }
      table.appendChild(tr);
    }
    root.appendChild(table);
  }
}

async function run(request) {
  showError("");
  setBusy(true);
  try {
    render(await request());
  } catch (err) {
    $("results").innerHTML = "";
    showError(err.message);
  } finally {
    setBusy(false);
  }
}

function readK() {
  const k = Number($("k").value);
  if (!Number.isInteger(k) || k < 1) throw new Error("results: expected a whole number >= 1");
  return k;
}

$("by-id").addEventListener("submit", (ev) => {
  ev.preventDefault();
  run(async () => {
    const ids = $("clip-id").value.split(",").map((s) => s.trim()).filter((s) => s);
    if (!ids.length) throw new Error("clip id: enter a clip id of the index");
    const body = { direction: $("direction").value, clip_ids: ids, k: readK() };
    const classes = selectedClasses();
    if (classes) body.classes = classes;
    return api("search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  });
});

$("by-file").addEventListener("submit", (ev) => {
  ev.preventDefault();
  run(async () => {
    const file = $("file").files[0];
    if (!file) throw new Error("media file: choose a wav, mp4, … file first");
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("direction", $("direction").value);
    form.append("k", String(readK()));
    const classes = selectedClasses();
    if (classes) form.append("classes", classes.join(","));
    return api("search/media", { method: "POST", body: form });
  });
});

async function loadInfo() {
  try {
    const info = await api("info");
    const counts = Object.entries(info.indexes).map(([m, ix]) => ix.count + " " + m + " (" + ix.factory + ", " + ix.device + ")");
    $("info").textContent = (info.synthetic ? "SYNTHETIC data (scores say nothing about real audio-visual retrieval) · " : "")
      + "index " + info.index + " · data set " + (info.dataset || "?") + " · " + counts.join(", ")
      + " · " + info.classes.length + " classes · media for " + info.media.clips + " clips";
    const list = $("examples");
    for (const id of info.examples) {
      const opt = document.createElement("option");
      opt.value = id;
      list.appendChild(opt);
    }
    if (info.examples.length && !$("clip-id").value) $("clip-id").placeholder = "e.g. " + info.examples[0];
    const dir = $("direction");
    for (const opt of dir.options) opt.disabled = !info.directions.includes(opt.value);
    if (dir.selectedOptions[0].disabled) dir.value = info.directions[0];
  } catch (err) {
    $("info").textContent = "";
    showError("cannot read /info: " + err.message);
  }
}

loadInfo();
