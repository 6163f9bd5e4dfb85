// vlmsearch web page: plain JavaScript, no build step. Talks to the JSON API of the same
// server; every image is fetched by id, never by path.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { collections: [], current: null, images: [], history: [], last: null };

function api(path) {
  return "/api/collections/" + encodeURIComponent(state.current.name) + path;
}

async function call(url, options) {
  const res = await fetch(url, Object.assign({ credentials: "same-origin" }, options || {}));
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) throw new Error((body && body.error) || res.status + " " + res.statusText);
  return body;
}

function showError(message) {
  const el = $("#error");
  el.textContent = message || "";
  el.hidden = !message;
}

function sqlString(value) {
  return "'" + String(value).replace(/'/g, "''") + "'";
}

function sqlName(name) {
  return '"' + name.replace(/"/g, '""') + '"';
}

// The filter: the fields built from the collection's columns, AND the free SQL box.
function whereClause() {
  const parts = [];
  for (const el of document.querySelectorAll("#filters [data-column]")) {
    const col = sqlName(el.dataset.column);
    const v = el.value.trim();
    if (!v) continue;
    if (el.dataset.op === "min") parts.push(col + " >= " + Number(v));
    else if (el.dataset.op === "max") parts.push(col + " <= " + Number(v));
    else if (el.dataset.op === "eq") parts.push(col + " = " + sqlString(v));
    else if (el.dataset.op === "like") parts.push(col + " ILIKE " + sqlString("%" + v + "%"));
  }
  const free = $("#where").value.trim();
  if (free) parts.push("(" + free + ")");
  return parts.join(" AND ") || null;
}

function buildFilters(columns) {
  const box = $("#filters");
  box.textContent = "";
  for (const [name, c] of Object.entries(columns)) {
    if (name === "id") continue;
    const fs = document.createElement("fieldset");
    const lg = document.createElement("legend");
    lg.textContent = name;
    fs.appendChild(lg);
    if (c.kind === "number") {
      for (const op of ["min", "max"]) {
        const inp = document.createElement("input");
        inp.type = "number";
        inp.placeholder = op + (c[op] !== undefined && c[op] !== null ? " " + c[op] : "");
        inp.dataset.column = name;
        inp.dataset.op = op;
        inp.setAttribute("aria-label", name + " " + op);
        fs.appendChild(inp);
      }
    } else if (c.kind === "text" && c.values) {
      const sel = document.createElement("select");
      sel.dataset.column = name;
      sel.dataset.op = "eq";
      sel.setAttribute("aria-label", name);
      sel.appendChild(new Option("any", ""));
      for (const v of c.values) sel.appendChild(new Option(v, v));
      fs.appendChild(sel);
    } else if (c.kind === "text") {
      const inp = document.createElement("input");
      inp.type = "text";
      inp.placeholder = "contains…";
      inp.dataset.column = name;
      inp.dataset.op = "like";
      inp.setAttribute("aria-label", name + " contains");
      fs.appendChild(inp);
    } else continue;
    box.appendChild(fs);
  }
}

function chooseCollection(name) {
  state.current = state.collections.find((c) => c.name === name) || state.collections[0];
  buildFilters(state.current.columns || {});
  const rr = $("#rerank");
  rr.length = 1;
  for (const r of state.current.rerankers || []) rr.appendChild(new Option(r, r));
  $("#k").max = state.current.max_k;
  $("#status").textContent = state.current.images + " images, " + state.current.model;
}

function renderChips() {
  const box = $("#chips");
  box.textContent = "";
  state.images.forEach((file, i) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    const img = document.createElement("img");
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    const rm = document.createElement("button");
    rm.type = "button";
    rm.textContent = "×";
    rm.setAttribute("aria-label", "remove " + file.name);
    rm.onclick = () => { state.images.splice(i, 1); renderChips(); };
    chip.append(img, document.createTextNode(file.name), rm);
    box.appendChild(chip);
  });
}

function addImages(files) {
  for (const f of files) if (f.type.startsWith("image/")) state.images.push(f);
  renderChips();
}

// Hits scoring under this fraction of the best hit are folded away behind a button: with
// sharp scores (ASIF) every hit after the matches scores 0.000, and a page of them is noise.
const LOW_SCORE_FRACTION = 0.01;

// Which hits to show at once: at or above the "min score" option if set, else those scoring
// at least LOW_SCORE_FRACTION of the best one (when the best is positive).
function splitByScore(hits) {
  const raw = $("#minscore") ? $("#minscore").value.trim() : "";
  let cut = raw === "" ? null : Number(raw);
  if (cut === null && hits.length) {
    const best = Math.max(...hits.map((h) => h.score));
    if (best > 0) cut = best * LOW_SCORE_FRACTION;
  }
  if (cut === null || Number.isNaN(cut)) return { shown: hits, low: [] };
  return { shown: hits.filter((h) => h.score >= cut), low: hits.filter((h) => h.score < cut) };
}

// m:ss.s, as the CLI shows a frame's time
function clock(seconds) {
  const t = Math.max(0, Math.round(seconds * 10)) / 10;
  const m = Math.floor(t / 60);
  const s = (t - 60 * m).toFixed(1).padStart(4, "0");
  return m + ":" + s;
}

// a frame hit's video, loaded when played, starting at the frame's time (the server
// answers Range requests, so the browser can seek without downloading the whole file)
function player(hit) {
  const v = document.createElement("video");
  v.className = "clip";
  v.controls = true;
  v.preload = "none";
  v.poster = hit.thumb_url;
  v.src = hit.video_url + "#t=" + hit.timestamp;
  v.addEventListener("loadedmetadata", () => { v.currentTime = hit.timestamp; }, { once: true });
  v.addEventListener("click", (e) => e.stopPropagation());
  v.addEventListener("keydown", (e) => e.stopPropagation());
  return v;
}

function card(hit) {
  const fig = document.createElement("figure");
  fig.className = "card";
  fig.tabIndex = 0;
  fig.setAttribute("role", "button");
  fig.setAttribute("aria-label", "More like " + hit.relpath + ", score " + hit.score.toFixed(3));
  fig.dataset.id = hit.id;
  const frame = document.createElement("div");
  frame.className = "frame";
  if (hit.width && hit.height) frame.style.aspectRatio = hit.width + " / " + hit.height;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.alt = hit.relpath;
  img.src = hit.thumb_url;
  frame.appendChild(img);
  if (hit.box && hit.width && hit.height) {
    // the region a region reranker matched, in pixels of the original image
    const [x0, y0, x1, y1] = hit.box;
    const b = document.createElement("div");
    b.className = "box";
    b.title = "best region (" + (hit.reranker || "reranker") + ")";
    b.style.left = (100 * x0 / hit.width) + "%";
    b.style.top = (100 * y0 / hit.height) + "%";
    b.style.width = (100 * (x1 - x0) / hit.width) + "%";
    b.style.height = (100 * (y1 - y0) / hit.height) + "%";
    frame.appendChild(b);
  }
  if (hit.ocr_line && hit.width && hit.height) frame.appendChild(ocrOverlay(hit));
  const cap = document.createElement("figcaption");
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  const where = hit.video_url ? hit.video_path + " @ " + clock(hit.timestamp) : hit.relpath;
  cap.append(score, document.createTextNode(" " + where));
  if (hit.error) cap.append(document.createTextNode(" (" + hit.error + ")"));
  if (hit.ocr_line) {
    const line = document.createElement("span");
    line.className = "ocr-text";
    line.textContent = " \u201c" + hit.ocr_line.text + "\u201d";
    cap.append(line);
  }
  fig.append(frame, cap);
  if (hit.video_url) fig.append(player(hit));
  fig.addEventListener("click", () => moreLike(hit));
  return fig;
}

// The OCR line that matched, as a polygon: its 4 corners are in pixels of the original
// image, so an SVG whose viewBox is that image's size scales them to the thumbnail.
function ocrOverlay(hit) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "ocr-box");
  svg.setAttribute("viewBox", "0 0 " + hit.width + " " + hit.height);
  svg.setAttribute("preserveAspectRatio", "none");
  const poly = document.createElementNS(ns, "polygon");
  poly.setAttribute("points", hit.ocr_line.box.map((p) => p[0] + "," + p[1]).join(" "));
  poly.setAttribute("vector-effect", "non-scaling-stroke");
  const title = document.createElementNS(ns, "title");
  title.textContent = "text in image: " + hit.ocr_line.text;
  poly.appendChild(title);
  svg.appendChild(poly);
  return svg;
}

function render(result, label, showAll) {
  const grid = $("#results");
  grid.textContent = "";
  const { shown, low } = showAll ? { shown: result.hits, low: [] } : splitByScore(result.hits);
  for (const hit of shown) grid.appendChild(card(hit));
  const more = $("#more-hits");
  more.hidden = !low.length;
  if (low.length) {
    const best = Math.max(...low.map((h) => h.score));
    more.textContent = "show " + low.length + " more (scores " + best.toFixed(3) + " and below)";
    more.onclick = () => render(result, label, true);
  }
  const ms = result.ms !== undefined ? " in " + result.ms + " ms" : "";
  const count = shown.length + " results" + (low.length ? " (" + low.length + " low-scoring hidden)" : "");
  $("#status").textContent = count + ms + (label ? " — " + label : "");
  if (!result.hits.length) $("#status").textContent = "no results" + (label ? " — " + label : "");
}

async function timed(promise) {
  const t0 = performance.now();
  const result = await promise;
  result.ms = Math.round(performance.now() - t0);
  return result;
}

async function search() {
  showError("");
  const text = $("#q").value.trim();
  if (!text && !state.images.length) { showError("Type a query or add an image."); return; }
  const req = { k: Number($("#k").value) || 24 };
  if (text) req.text = text;
  const neg = $("#neg").value.trim();
  if (neg) req.negative = neg;
  const where = whereClause();
  if (where) req.where = where;
  // the server drops hits below the cut-off (of the top k) and orders the rest by "sort"
  const minScore = $("#minscore").value.trim();
  if (minScore !== "" && !Number.isNaN(Number(minScore))) req.min_score = Number(minScore);
  if ($("#sort").value) req.sort = $("#sort").value;
  // the depth is the reranker's own default (the region teacher on a CPU takes 10)
  if ($("#rerank").value) req.rerank = $("#rerank").value;
  $("#status").textContent = "searching…";
  try {
    let result;
    if (state.images.length) {
      const form = new FormData();
      for (const f of state.images) form.append("image", f, f.name);
      form.append("query", JSON.stringify(req));
      result = await timed(call(api("/search/image"), { method: "POST", body: form }));
    } else {
      result = await timed(call(api("/search"), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(req),
      }));
    }
    state.history = [];
    state.last = { result, label: "" };
    $("#context").hidden = true;
    render(result, "");
  } catch (e) {
    $("#status").textContent = "";
    showError(e.message);
  }
}

async function moreLike(hit) {
  showError("");
  const k = Number($("#k").value) || 24;
  const where = whereClause();
  const qs = "?k=" + k + (where ? "&where=" + encodeURIComponent(where) : "");
  try {
    const result = await timed(call(api("/similar/" + hit.id + qs)));
    if (state.last) state.history.push(state.last);
    state.last = { result, label: "more like " + hit.relpath };
    $("#context").hidden = false;
    $("#context-text").textContent = "More like " + hit.relpath;
    render(result, state.last.label);
    const first = $("#results .card");
    if (first) first.focus();
  } catch (e) {
    showError(e.message);
  }
}

function back() {
  const prev = state.history.pop();
  if (!prev) return;
  state.last = prev;
  $("#context").hidden = !state.history.length;
  // the heading names the page we are back on, not the one we left
  $("#context-text").textContent = prev.label ? "More" + prev.label.slice(4) : "";
  render(prev.result, prev.label);
}

// Arrow keys move through the grid by visual position, so rows work at any width.
function moveFocus(card, key) {
  const cards = Array.from(document.querySelectorAll("#results .card"));
  const i = cards.indexOf(card);
  if (key === "ArrowLeft") return cards[Math.max(0, i - 1)];
  if (key === "ArrowRight") return cards[Math.min(cards.length - 1, i + 1)];
  const top = card.offsetTop;
  const perRow = cards.filter((c) => c.offsetTop === top).length || 1;
  if (key === "ArrowDown") return cards[Math.min(cards.length - 1, i + perRow)];
  if (key === "ArrowUp") return cards[Math.max(0, i - perRow)];
  return card;
}

function onKey(ev) {
  const card = ev.target.closest && ev.target.closest(".card");
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(ev.target.tagName);
  if (ev.key === "/" && !typing) { ev.preventDefault(); $("#q").focus(); return; }
  if (ev.key === "Escape") { back(); return; }
  if (!card) return;
  if (ev.key.startsWith("Arrow")) { ev.preventDefault(); moveFocus(card, ev.key).focus(); }
  else if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); card.click(); }
  else if (ev.key === "o") window.open(api("/images/" + card.dataset.id), "_blank", "noopener");
}

function setupDrop() {
  const overlay = $("#drop");
  let depth = 0;
  window.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; overlay.hidden = false; });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; overlay.hidden = true; } });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    overlay.hidden = true;
    if (e.dataTransfer && e.dataTransfer.files.length) { addImages(e.dataTransfer.files); search(); }
  });
}

async function init() {
  $("#search").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("#file").addEventListener("change", (e) => { addImages(e.target.files); e.target.value = ""; });
  $("#collection").addEventListener("change", (e) => chooseCollection(e.target.value));
  $("#back").addEventListener("click", back);
  // the slider and the number box are one setting: the box may be empty ("auto")
  $("#minscore-slider").addEventListener("input", (e) => { $("#minscore").value = e.target.value; });
  $("#minscore").addEventListener("input", (e) => {
    if (e.target.value.trim() !== "") $("#minscore-slider").value = e.target.value;
  });
  document.addEventListener("keydown", onKey);
  setupDrop();
  try {
    state.collections = await call("/api/collections");
  } catch (e) {
    showError("Cannot list collections: " + e.message);
    return;
  }
  const sel = $("#collection");
  for (const c of state.collections) sel.appendChild(new Option(c.name + " (" + c.images + ")", c.name));
  sel.hidden = state.collections.length < 2;
  if (state.collections.length) chooseCollection(state.collections[0].name);
  document.body.dataset.ready = "1";
}

init();
