// The Vigil dashboard: plain JavaScript, no build step, no CDN (air-gapped sites), polls the api every few seconds.
"use strict";

const API = "/api/v1";
const REFRESH_MS = 3000;
const PAGE = 50;
const SVG = "http://www.w3.org/2000/svg";
const state = {
  events: [], selected: null, olderCursor: null, labels: new Set(), sources: new Set(), zones: new Set(),
  subLabels: new Set(), layouts: new Map(), totals: { sources: {} },
};

const $ = (sel) => document.querySelector(sel);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

function svgEl(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
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

// A source's zones and lines, asked once per page load: they change only with the settings, which restarts the api.
function layoutOf(sourceId) {
  if (!state.layouts.has(sourceId)) {
    const asked = getJSON(`${API}/sources/${encodeURIComponent(sourceId)}/layout`);
    asked.catch(() => state.layouts.delete(sourceId)); // asked again next time
    state.layouts.set(sourceId, asked);
  }
  return state.layouts.get(sourceId);
}

// Draws over `figure` (an .overlay: an img under an svg) the image at `src` and, in that image's pixels, the shapes
// given as fractions of the frame: zones (those in `entered` highlighted), lines, the object's box and its path.
function drawOverlay(figure, src, shapes, drawnFor) {
  const img = figure.querySelector("img");
  const svg = figure.querySelector("svg");
  const draw = () => {
    // No frame yet: the shapes on an empty 4:3 frame, which is what the sources send.
    const [w, h] = img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : [800, 600];
    const px = ([x, y]) => [x * w, y * h];
    const pts = (points) => points.map((p) => px(p).map((v) => v.toFixed(1)).join(",")).join(" ");
    const size = Math.round(w / 36);
    const parts = [];
    for (const [name, points] of Object.entries(shapes.zones || {})) {
      const [cx, cy] = px([points.reduce((a, p) => a + p[0], 0) / points.length, points.reduce((a, p) => a + p[1], 0) / points.length]);
      const entered = (shapes.entered || []).includes(name);
      const zone = svgEl("g", { class: entered ? "zone entered" : "zone" }, svgEl("polygon", { points: pts(points) }),
        svgEl("text", { x: cx, y: cy, "font-size": size, "text-anchor": "middle" }, name));
      zone.dataset.zone = name;
      parts.push(zone);
    }
    for (const [name, line] of Object.entries(shapes.lines || {})) {
      const [[x1, y1], [x2, y2]] = line.points.map(px);
      const drawn = svgEl("g", { class: "line" }, svgEl("line", { x1, y1, x2, y2 }),
        svgEl("text", { x: x1 + size / 2, y: y1 + size, "font-size": size }, `${name} (in: ${line.in_side})`));
      drawn.dataset.line = name;
      parts.push(drawn);
    }
    if (shapes.box) {
      const [x1, y1] = px([shapes.box.x1, shapes.box.y1]);
      const [x2, y2] = px([shapes.box.x2, shapes.box.y2]);
      parts.push(svgEl("rect", { class: "box", x: x1, y: y1, width: x2 - x1, height: y2 - y1 }));
    }
    const path = (shapes.path || []).map(([, x, y]) => [x, y]);
    if (path.length) {
      const [sx, sy] = px(path[0]);
      const [ex, ey] = px(path[path.length - 1]);
      const trail = svgEl("g", { class: "path" }, svgEl("polyline", { points: pts(path) }),
        svgEl("circle", { class: "start", cx: sx, cy: sy, r: size / 3 }), svgEl("circle", { class: "end", cx: ex, cy: ey, r: size / 3 }));
      trail.dataset.points = String(path.length);
      parts.push(trail);
    }
    svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    svg.replaceChildren(...parts);
    figure.dataset.drawnFor = drawnFor;
  };
  img.hidden = !src;
  if (!src) {
    img.removeAttribute("src");
    draw();
  } else if (img.getAttribute("src") !== src) {
    img.onload = draw; // drawn in the image's own pixels, once it says what they are
    img.onerror = draw; // or on an empty frame: the shapes still say where things are
    img.src = src;
  } else if (img.complete) {
    draw();
  }
}

function renderEvents() {
  const list = $("#events");
  list.replaceChildren(...state.events.map((e) => {
    const keyframe = e.links.keyframe_annotated || e.links.keyframe;
    const thumb = keyframe
      ? el("img", { src: keyframe, alt: `key frame of ${e.id}`, loading: "lazy" })
      : el("img", { alt: "no key frame yet" });
    const title = el("span", { className: "label" }, e.label);
    if (e.sub_label) title.append(" · ", el("span", { className: "sub-label" }, e.sub_label));
    title.append(" ", el("span", { className: `state ${e.state}` }, e.state));
    if (e.stationary) title.append(" ", el("span", { className: "stationary" }, "stationary"));
    const meta = el("div", { className: "meta" }, title,
      el("span", { className: "sub" }, `${e.source_id} · ${e.start.toFixed(1)}–${e.end.toFixed(1)} s · ${e.frames} frames`),
      el("span", { className: "sub" }, when(e.start_wall)));
    if (e.zones.length) meta.append(el("span", { className: "zones" }, ...e.zones.map((z) => el("span", { className: "zone-chip" }, z))));
    const item = el("li", { className: e.id === state.selected ? "selected" : "" }, thumb, meta);
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
    ["track", e.track_id === null ? "none (a scene event)" : String(e.track_id)],
    ["sub-label", e.sub_label ? `${e.sub_label} (${(e.sub_label_score || 0).toFixed(2)})` : "none"],
    ["zones", e.zones.length ? e.zones.join(", ") : "none entered"],
    ["stationary", e.stationary ? "yes: it stopped moving, the event stopped extending" : "no"],
  ];
  if (e.error) rows.push(["error", e.error]);
  $("#details").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  const annotated = $("#annotated");
  annotated.hidden = !e.links.keyframe_annotated;
  if (e.links.keyframe_annotated) annotated.href = e.links.keyframe_annotated;
  renderEvents();
  renderEventView(e);
}

// The snapshot (the best frame with the object's box, drawn by the registrator), and the path over the key frame
// (the same frame in object mode) with the source's zones, the ones it entered highlighted.
async function renderEventView(e) {
  $("#event-view").hidden = false;
  const snapshot = $("#snapshot img");
  const src = e.links.keyframe_annotated || e.links.keyframe;
  snapshot.hidden = !src;
  if (src && snapshot.getAttribute("src") !== src) snapshot.src = src;
  $("#source-link").href = `#/sources/${encodeURIComponent(e.source_id)}`;
  let layout = { zones: {}, lines: {} };
  try {
    layout = await layoutOf(e.source_id);
  } catch (err) {
    // Drawn without the zones: the path still says where the object went.
  }
  if (state.selected !== e.id) return; // another event was chosen meanwhile
  drawOverlay($("#scene"), e.links.keyframe, { zones: layout.zones, entered: e.zones, path: e.path, box: e.best_box }, e.id);
}

function fillOptions(select, values) {
  const current = select.value;
  const known = new Set([...select.options].map((o) => o.value));
  for (const value of [...values].sort()) if (!known.has(value)) select.append(el("option", { value }, value));
  select.value = current;
}

function renderLive(sources, services, totals) {
  $("#sources tbody").replaceChildren(...sources.sources.map((s) => el("tr", {},
    el("td", {}, el("a", { href: `#/sources/${encodeURIComponent(s.source_id)}` }, s.source_id)), el("td", {}, s.state), el("td", {}, s.fps.toFixed(1)),
    el("td", {}, String(s.frames_read)),
    el("td", {}, String(Object.values(s.frames_dropped).reduce((a, b) => a + b, 0))))));
  $("#workers tbody").replaceChildren(...Object.entries(services.models).map(([model, beats]) => el("tr", {},
    el("td", {}, model), el("td", {}, String(beats.length)),
    el("td", {}, beats.reduce((a, b) => a + b.fps, 0).toFixed(1)),
    el("td", {}, String(beats.reduce((a, b) => a + b.processed, 0))))));
  const all = Object.values(totals.sources);
  const sum = (f) => all.reduce((a, s) => a + (f(s) || 0), 0);
  const perModel = (f) => sum((s) => Object.values(s.models).reduce((a, m) => a + f(m), 0));
  $("#totals").textContent = `${all.length} sources · ${sum((s) => s.frames_read)} frames read · `
    + `${sum((s) => s.frames_dropped)} dropped · ${perModel((m) => m.inferred)} inferences · `
    + `${perModel((m) => m.shed)} shed · ${sum((s) => s.events)} events`;
  state.totals = totals;
  for (const id of Object.keys(totals.sources)) state.sources.add(id);
  fillOptions($("#filters [name=source]"), state.sources);
  for (const id of state.sources) {
    layoutOf(id).then((layout) => {
      for (const zone of Object.keys(layout.zones)) state.zones.add(zone);
      fillOptions($("#filters [name=zone]"), state.zones);
    }).catch(() => {}); // a source without events nor zones: nothing to offer
  }
}

// The page of one source (#/sources/<id>): its zones and lines over its newest key frame, with the lines' counts.
async function renderSourcePage(sourceId) {
  const layout = await getJSON(`${API}/sources/${encodeURIComponent(sourceId)}/layout`);
  if (currentSource() !== sourceId) return;
  $("#source-name").textContent = sourceId;
  const frame = layout.frame;
  $("#source-caption").textContent = frame
    ? `Its newest key frame: event ${frame.event_id}, ${when(frame.start_wall)}`
    : "No key frame yet: the shapes on an empty frame";
  drawOverlay($("#source-frame"), frame ? frame.keyframe : null, layout, sourceId);
  $("#source-zones tbody").replaceChildren(...Object.entries(layout.zones).map(([name, points]) => el("tr", {},
    el("td", {}, name), el("td", {}, points.map(([x, y]) => `${x},${y}`).join(" ")))));
  const counted = (state.totals.sources[sourceId] || {}).lines || {};
  $("#source-lines tbody").replaceChildren(...Object.keys(layout.lines).flatMap((name) => {
    const labels = Object.entries(counted[name] || {});
    if (!labels.length) return [el("tr", {}, el("td", {}, name), el("td", {}, "none crossed"), el("td", {}, "0"), el("td", {}, "0"))];
    return labels.map(([label, n]) => el("tr", {}, el("td", {}, name), el("td", {}, label),
      el("td", {}, String(n.in)), el("td", {}, String(n.out))));
  }));
}

function currentSource() {
  const match = window.location.hash.match(/^#\/sources\/([^/]+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

function route() {
  const sourceId = currentSource();
  $("#fleet-page").hidden = sourceId !== null;
  $("#source-page").hidden = sourceId === null;
  if (sourceId !== null) renderSourcePage(sourceId).catch(showError);
}

function showError(err) {
  $("#error").textContent = `Cannot reach the api: ${err.message}`;
  $("#error").hidden = false;
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
    for (const e of page.events) {
      state.labels.add(e.label);
      if (e.sub_label) state.subLabels.add(e.sub_label);
      for (const zone of e.zones) state.zones.add(zone);
    }
    fillOptions($("#filters [name=label]"), state.labels);
    fillOptions($("#filters [name=sub_label]"), state.subLabels);
    fillOptions($("#filters [name=zone]"), state.zones);
    renderEvents();
    if (state.selected === null && state.events.length) select(state.events[0].id);
    else if (state.selected) select(state.selected);
    renderLive(sources, services, totals);
    if (currentSource() !== null) await renderSourcePage(currentSource());
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("#error").hidden = true;
  } catch (err) {
    showError(err);
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
window.addEventListener("hashchange", route);
route();
refresh();
setInterval(refresh, REFRESH_MS);
