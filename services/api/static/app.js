// The Vigil dashboard: plain JavaScript, no build step, no CDN (air-gapped sites), polls the api every few seconds.
"use strict";

const API = "/api/v1";
const REFRESH_MS = 3000;
const PAGE = 50;
const state = { events: [], selected: null, olderCursor: null, labels: new Set(), sources: new Set() };

const $ = (sel) => document.querySelector(sel);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

async function getJSON(path) {
  const resp = await fetch(path, { credentials: "same-origin" });
  // The session expired (or the token changed): log in again rather than show errors.
  if (resp.status === 401) window.location.assign("/login");
  const body = await resp.json();
  if (!resp.ok) throw new Error(body.error ? body.error.message : `${resp.status} ${resp.statusText}`);
  return body;
}

function filterQuery() {
  const params = new URLSearchParams({ limit: String(PAGE) });
  for (const [name, value] of new FormData($("#filters"))) if (value) params.set(name, value);
  return params;
}

function when(unix) {
  return new Date(unix * 1000).toLocaleString();
}

function renderEvents() {
  const list = $("#events");
  list.replaceChildren(...state.events.map((e) => {
    const keyframe = e.links.keyframe_annotated || e.links.keyframe;
    const thumb = keyframe
      ? el("img", { src: keyframe, alt: `key frame of ${e.id}`, loading: "lazy" })
      : el("img", { alt: "no key frame yet" });
    const item = el("li", { className: e.id === state.selected ? "selected" : "" }, thumb, el("div", { className: "meta" },
      el("span", { className: "label" }, `${e.label} `, el("span", { className: `state ${e.state}` }, e.state)),
      el("span", { className: "sub" }, `${e.source_id} · ${e.start.toFixed(1)}–${e.end.toFixed(1)} s · ${e.frames} frames`),
      el("span", { className: "sub" }, when(e.start_wall))));
    item.dataset.eventId = e.id;
    item.addEventListener("click", () => select(e.id));
    return item;
  }));
  $("#no-events").hidden = state.events.length > 0;
  $("#more").hidden = !state.olderCursor;
}

function select(id) {
  state.selected = id;
  const e = state.events.find((x) => x.id === id);
  if (!e) return;
  const player = $("#player");
  if (e.links.clip && player.dataset.eventId !== id) {
    player.dataset.eventId = id;
    player.src = e.links.clip;
    player.play().catch(() => {}); // autoplay may be refused; the controls still work
  }
  const rows = [
    ["event", e.id], ["source", e.source_id], ["model", e.model], ["state", e.state],
    ["labels", Object.entries(e.label_counts).map(([k, v]) => `${k} ${v}`).join(", ")],
    ["stream time", `${e.start.toFixed(1)} – ${e.end.toFixed(1)} s`], ["started", when(e.start_wall)],
    ["best score", e.best_score.toFixed(2)], ["clip", e.links.clip ? `${e.clip_frames} frames` : "not yet"],
  ];
  if (e.error) rows.push(["error", e.error]);
  $("#details").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  const annotated = $("#annotated");
  annotated.hidden = !e.links.keyframe_annotated;
  if (e.links.keyframe_annotated) annotated.href = e.links.keyframe_annotated;
  renderEvents();
}

function fillOptions(select, values) {
  const current = select.value;
  const known = new Set([...select.options].map((o) => o.value));
  for (const value of [...values].sort()) if (!known.has(value)) select.append(el("option", { value }, value));
  select.value = current;
}

function renderLive(sources, services, totals) {
  $("#sources tbody").replaceChildren(...sources.sources.map((s) => el("tr", {},
    el("td", {}, s.source_id), el("td", {}, s.state), el("td", {}, s.fps.toFixed(1)),
    el("td", {}, String(s.frames_read)),
    el("td", {}, String(Object.values(s.frames_dropped).reduce((a, b) => a + b, 0))))));
  $("#workers tbody").replaceChildren(...Object.entries(services.models).map(([model, beats]) => el("tr", {},
    el("td", {}, model), el("td", {}, String(beats.length)),
    el("td", {}, beats.reduce((a, b) => a + b.fps, 0).toFixed(1)),
    el("td", {}, String(beats.reduce((a, b) => a + b.processed, 0))))));
  const all = Object.values(totals.sources);
  const sum = (f) => all.reduce((a, s) => a + (f(s) || 0), 0);
  const inferred = sum((s) => Object.values(s.models).reduce((a, m) => a + m.inferred, 0));
  $("#totals").textContent = `${all.length} sources · ${sum((s) => s.frames_read)} frames read · `
    + `${sum((s) => s.frames_dropped)} dropped · ${inferred} inferences · ${sum((s) => s.events)} events`;
  for (const id of Object.keys(totals.sources)) state.sources.add(id);
  fillOptions($("#filters [name=source]"), state.sources);
}

async function refresh() {
  try {
    const [page, sources, services, totals] = await Promise.all([
      getJSON(`${API}/events?${filterQuery()}`), getJSON(`${API}/sources`),
      getJSON(`${API}/services`), getJSON(`${API}/totals`),
    ]);
    // Keep older pages the user loaded: only the newest page is replaced.
    const newest = new Set(page.events.map((e) => e.id));
    const older = state.events.slice(PAGE).filter((e) => !newest.has(e.id));
    state.events = page.events.concat(older);
    if (!older.length) state.olderCursor = page.next_cursor;
    for (const e of page.events) state.labels.add(e.label);
    fillOptions($("#filters [name=label]"), state.labels);
    renderEvents();
    if (state.selected === null && state.events.length) select(state.events[0].id);
    else if (state.selected) select(state.selected);
    renderLive(sources, services, totals);
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("#error").hidden = true;
  } catch (err) {
    $("#error").textContent = `Cannot reach the api: ${err.message}`;
    $("#error").hidden = false;
  }
}

async function loadOlder() {
  if (!state.olderCursor) return;
  const params = filterQuery();
  params.set("cursor", state.olderCursor);
  const page = await getJSON(`${API}/events?${params}`);
  state.events = state.events.concat(page.events);
  state.olderCursor = page.next_cursor;
  renderEvents();
}

$("#filters").addEventListener("change", () => {
  state.events = [];
  state.olderCursor = null;
  refresh();
});
$("#more").addEventListener("click", () => loadOlder().catch((err) => { $("#error").textContent = err.message; }));
refresh();
setInterval(refresh, REFRESH_MS);
