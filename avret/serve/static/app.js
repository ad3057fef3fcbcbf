// The avret search page: no framework, no build step. Talks to the same server's JSON API.
// A search by clip id is a URL (?q=ID&dir=a2v&k=10&classes=a,b): it is pushed to the browser
// history, so back/forward and a shared link reproduce it.
"use strict";

const token = new URLSearchParams(window.location.search).get("token");
const $ = (id) => document.getElementById(id);
const DIRS = { a2v: "audio-to-video", v2a: "video-to-audio" };
const SHORT = { "audio-to-video": "a2v", "video-to-audio": "v2a" };
let INFO = null;

// Server URLs ("/media/x") are made relative to the page, so the page also works under a prefix.
function withToken(url) {
  url = url.replace(/^\//, "");
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
  if ($("search-file")) $("search-file").disabled = busy;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// ------------------------------------------------------------------ state <-> URL

function selectedClasses() {
  const picked = [...document.querySelectorAll("#class-list input:checked")].map((c) => c.value);
  return picked.length ? picked : null;
}

function setClasses(classes) {
  const want = new Set(classes || []);
  for (const box of document.querySelectorAll("#class-list input")) box.checked = want.has(box.value);
  updateClassSummary();
}

function updateClassSummary() {
  const picked = selectedClasses();
  $("class-summary").textContent = picked ? picked.join(", ") : "all";
}

function readK() {
  const k = Number($("k").value);
  if (!Number.isInteger(k) || k < 1) throw new Error("results: expected a whole number >= 1");
  return k;
}

function stateFromControls(q) {
  return { q, dir: $("direction").value, k: readK(), classes: selectedClasses() };
}

function stateFromURL() {
  const p = new URLSearchParams(window.location.search);
  const q = p.get("q");
  if (!q) return null;
  const dir = DIRS[p.get("dir")] || p.get("dir") || $("direction").value;
  const k = Number(p.get("k") || $("k").value);
  const classes = (p.get("classes") || "").split(",").map((c) => c.trim()).filter((c) => c);
  return { q, dir, k, classes: classes.length ? classes : null };
}

function urlOf(state) {
  const p = new URLSearchParams();
  if (token) p.set("token", token);
  p.set("q", state.q);
  p.set("dir", SHORT[state.dir] || state.dir);
  p.set("k", String(state.k));
  if (state.classes) p.set("classes", state.classes.join(","));
  return window.location.pathname + "?" + p.toString();
}

function showState(state) {
  $("clip-id").value = state.q;
  $("direction").value = state.dir;
  $("k").value = String(state.k);
  setClasses(state.classes);
}

// ------------------------------------------------------------------ rendering

function mediaBlock(kind, urls, label) {
  // kind "video": a player whose poster is a frame of the clip; "audio": a spectrogram and a player.
  const box = el("div", "preview preview-" + kind);
  if (!urls.media_url) {
    box.appendChild(el("div", "no-media", "no media"));
    return box;
  }
  if (kind === "video") {
    const v = document.createElement("video");
    v.controls = true;
    v.preload = "none";
    v.poster = withToken(urls.poster_url);
    v.src = withToken(urls.media_url);
    v.setAttribute("aria-label", "video of " + label);
    box.appendChild(v);
  } else {
    const img = el("img", "spectrogram");
    img.src = withToken(urls.spectrogram_url);
    img.alt = "spectrogram of " + label;
    box.appendChild(img);
    const a = document.createElement("audio");
    a.controls = true;
    a.preload = "none";
    a.src = withToken(urls.media_url);
    a.setAttribute("aria-label", "sound of " + label);
    box.appendChild(a);
  }
  return box;
}

function previewURLs(clipId, mediaUrl) {
  if (!mediaUrl) return { media_url: null };
  const q = encodeURIComponent(clipId);
  return { media_url: mediaUrl, poster_url: "poster/" + q, spectrogram_url: "spectrogram/" + q };
}

function pct(x) { return (100 * x).toFixed(1) + "%"; }

function renderQuery(direction, name, qclass, card, uploadURL) {
  const root = $("query");
  root.innerHTML = "";
  const box = el("article", "query-card");
  const queryIsVideo = direction === "video-to-audio";
  if (uploadURL) {
    const preview = el("div", "preview preview-" + (queryIsVideo ? "video" : "audio"));
    const player = document.createElement(queryIsVideo ? "video" : "audio");
    player.controls = true;
    player.src = uploadURL;
    preview.appendChild(player);
    box.appendChild(preview);
  } else if (card) {
    box.appendChild(mediaBlock(queryIsVideo ? "video" : "audio", card, name));
  }
  const meta = el("div", "query-meta");
  const head = el("h2", "query-head");
  head.textContent = "Query " + name;
  meta.appendChild(head);
  meta.appendChild(el("p", "query-what", (queryIsVideo ? "its video → which sounds fit it?" : "its sound → which videos sound like it?")));
  if (qclass) meta.appendChild(el("p", "query-class", "class " + qclass));
  if (card && card.stats) {
    const s = card.stats;
    meta.appendChild(el("p", "query-stats", "AP " + pct(s.ap) + " · P@" + card.k + " " + pct(s.precision_at_k)
      + " over this index (" + s.n_relevant + " of " + s.n_gallery + " items share its class)"));
  }
  box.appendChild(meta);
  root.appendChild(box);
}

function renderResults(answer, block) {
  const root = $("results");
  root.innerHTML = "";
  const galleryIsVideo = answer.direction === "audio-to-video";
  const head = el("h2", "results-head", block.results.length + " results (" + answer.direction + ")");
  root.appendChild(head);
  for (const hit of block.results) {
    const card = el("article", "card hit");
    card.dataset.clipId = hit.clip_id;
    card.appendChild(mediaBlock(galleryIsVideo ? "video" : "audio", previewURLs(hit.clip_id, hit.media_url), hit.clip_id));
    const meta = el("div", "meta");
    const top = el("div", "meta-top");
    top.appendChild(el("span", "rank", "#" + hit.rank));
    const link = el("a", "clip-id", hit.clip_id);
    const same = { q: hit.clip_id, dir: answer.direction, k: lastState ? lastState.k : readK(),
                   classes: lastState ? lastState.classes : selectedClasses() };
    link.href = urlOf(same);
    link.title = "search from this clip (" + answer.direction + ")";
    link.addEventListener("click", (ev) => {
      if (ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;  // a new tab: let the link go
      ev.preventDefault();
      search(same, true);
    });
    top.appendChild(link);
    top.appendChild(el("span", "score", hit.score.toFixed(3)));
    meta.appendChild(top);
    const bottom = el("div", "meta-bottom");
    bottom.appendChild(el("span", "class", hit.class === null ? "" : hit.class));
    if (hit.match === null || hit.match === undefined) bottom.appendChild(el("span", "match", "–"));
    else bottom.appendChild(el("span", hit.match ? "match match-yes" : "match match-no", hit.match ? "✓ same class" : "✗ other class"));
    meta.appendChild(bottom);
    const other = answer.direction === "audio-to-video" ? "video-to-audio" : "audio-to-video";
    if (INFO && INFO.directions.includes(other)) {
      const b = el("button", "small search-other", other === "video-to-audio" ? "its video → sounds" : "its sound → videos");
      b.type = "button";
      b.addEventListener("click", () => search(Object.assign({}, same, { dir: other }), true));
      meta.appendChild(b);
    }
    card.appendChild(meta);
    root.appendChild(card);
  }
}

// ------------------------------------------------------------------ searches

let lastState = null;
let generation = 0;

async function search(state, push) {
  showError("");
  setBusy(true);
  const mine = ++generation;
  try {
    showState(state);
    const body = { direction: state.dir, clip_ids: [state.q], k: state.k };
    if (state.classes) body.classes = state.classes;
    const [answer, card] = await Promise.all([
      api("search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }),
      api("clip/" + encodeURIComponent(state.q) + "?direction=" + state.dir + "&k=" + state.k),
    ]);
    if (mine !== generation) return;  // a newer search has started
    lastState = state;
    if (push) history.pushState(state, "", urlOf(state));
    const block = answer.queries[0];
    renderQuery(answer.direction, block.query, block.query_class, card, null);
    renderResults(answer, block);
    document.title = "avret — " + state.q;
  } catch (err) {
    searchFailed(mine, err);
  } finally {
    if (mine === generation) setBusy(false);
  }
}

// A failed search clears the answer, unless a newer search has started since.
function searchFailed(mine, err) {
  if (mine !== generation) return;
  $("results").innerHTML = "";
  $("query").innerHTML = "";
  showError(err.message);
}

$("by-id").addEventListener("submit", (ev) => {
  ev.preventDefault();
  try {
    const ids = $("clip-id").value.split(",").map((s) => s.trim()).filter((s) => s);
    if (!ids.length) throw new Error("clip id: enter a clip id of the index");
    if (ids.length > 1) throw new Error("clip id: one clip id at a time here (POST /search takes many)");
    search(stateFromControls(ids[0]), true);
  } catch (err) {
    showError(err.message);
  }
});

$("by-file").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  setBusy(true);
  const mine = ++generation;
  try {
    const file = $("file").files[0];
    if (!file) throw new Error("media file: choose a wav, mp4, … file first");
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("direction", $("direction").value);
    form.append("k", String(readK()));
    const classes = selectedClasses();
    if (classes) form.append("classes", classes.join(","));
    const answer = await api("search/media", { method: "POST", body: form });
    if (mine !== generation) return;
    const block = answer.queries[0];
    renderQuery(answer.direction, block.query, null, null, URL.createObjectURL(file));
    renderResults(answer, block);
  } catch (err) {
    searchFailed(mine, err);
  } finally {
    if (mine === generation) setBusy(false);
  }
});

window.addEventListener("popstate", () => {
  const state = stateFromURL();
  if (state) search(state, false);
  else { $("results").innerHTML = ""; $("query").innerHTML = ""; showError(""); }
});

$("class-list").addEventListener("change", updateClassSummary);
$("class-clear").addEventListener("click", () => setClasses(null));

// ------------------------------------------------------------------ start

async function loadInfo() {
  const info = await api("info");
  INFO = info;
  const counts = Object.entries(info.indexes).map(([m, ix]) => ix.count + " " + m + " (" + ix.factory + ", " + ix.device + ")");
  // A data set given as a path is shown by its last folder name only (no server path on the page).
  const dataset = String(info.dataset || "?").split("/").filter((s) => s).pop();
  $("info").textContent = (info.synthetic ? "SYNTHETIC data (scores say nothing about real audio-visual retrieval) · " : "")
    + "data set " + dataset + " · " + counts.join(", ")
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
  const classes = $("class-list");
  for (const c of info.classes) {
    const label = el("label", "class-option");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = c;
    label.appendChild(box);
    label.appendChild(document.createTextNode(" " + c));
    classes.appendChild(label);
  }
  // An upload needs the feature extractors the index was built with; without them, no upload control.
  if (info.media.queries) $("by-file").hidden = false;
  else $("by-file").remove();
}

async function loadLinks() {
  try {
    const links = await api("page/links");
    if (links.report) {
      $("report-href").href = withToken(links.report);
      $("report-link").hidden = false;
    }
  } catch (_) { /* no link */ }
}

async function start() {
  try {
    await loadInfo();
  } catch (err) {
    $("info").textContent = "";
    showError("the server's description could not be read: " + err.message);
    return;
  }
  loadLinks();
  const state = stateFromURL();
  if (state) {
    history.replaceState(state, "", window.location.href);
    search(state, false);
  }
}

start();
