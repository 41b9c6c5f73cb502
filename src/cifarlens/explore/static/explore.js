// cifarlens explore: the glue between the JSON API (cifarlens/explore/app.py) and the page.
// Charts are Plotly's; everything else is plain DOM. No framework, no network beyond this server.
"use strict";

const state = { info: null, run: 0, loaded: {}, map: null };
const $ = (id) => document.getElementById(id);

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function showError(err) {
  $("error").textContent = err ? String(err.message || err) : "";
  $("error").hidden = !err;
}

function pct(x) { return x === null || x === undefined ? "n/a" : (100 * x).toFixed(2) + "%"; }

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else if (k === "onclick") node.onclick = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function fillTable(table, header, rows) {
  table.replaceChildren(
    el("thead", {}, [el("tr", {}, header.map((h) => el("th", { text: h })))]),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((v) => el("td", { text: v }))))),
  );
}

function fillSelect(select, values, chosen) {
  select.replaceChildren(...values.map((v) => el("option", { value: v, text: v })));
  if (chosen !== undefined) select.value = chosen;
}

// One thumbnail: click opens the image page. ``row``: {index, label, predicted, confidence}.
function thumbnail(row, extra = "") {
  const wrong = row.predicted !== undefined && row.predicted !== row.label;
  const caption = `#${row.index} ${row.label}` + (row.predicted !== undefined ? ` → ${row.predicted} ${pct(row.confidence)}` : "")
    + (row.predicted_other !== undefined && row.predicted_other !== row.predicted ? ` (other run: ${row.predicted_other})` : "") + extra;
  return el("figure", { class: wrong ? "wrong" : "", title: caption, onclick: () => { location.hash = `#image/${row.index}`; } }, [
    el("img", { src: `/api/images/${row.index}.png?scale=4`, alt: caption, loading: "lazy" }),
    el("figcaption", { text: caption }),
  ]);
}

function fillGrid(grid, rows, limit = 300) {
  grid.replaceChildren(...rows.slice(0, limit).map((r) => thumbnail(r)));
  if (rows.length > limit) grid.append(el("p", { class: "muted", text: `first ${limit} of ${rows.length}` }));
}

// -- pages ------------------------------------------------------------------------------------------
async function overview() {
  const o = await api(`/api/runs/${state.run}/overview`);
  const h = o.headline;
  $("headline").replaceChildren(
    el("b", { text: h ? pct(h.accuracy) : "not scored on the test split" }),
    el("small", { text: h ? ` ${h.label}` + (h.key !== "test" ? `; plain ${pct(h.plain)}` : "") + (h.n ? ` on ${h.n} images` + (h.data ? ` of ${h.data.folder}` : "") : "") + ` · ${o.run}` : ` · ${o.run}` }),
  );
  const worst = Math.min(...o.per_class.map((r) => r.accuracy));
  fillTable($("per-class"), ["class", "accuracy", "precision", "recall", "F1", "support"],
    o.per_class.map((r) => [r.class, pct(r.accuracy) + (r.accuracy === worst ? " (worst)" : ""), pct(r.precision), pct(r.recall), r.f1.toFixed(3), r.support]));
  $("per-class-source").textContent = `from ${o.per_class_source}`;
  fillTable($("config"), ["option", "value"], Object.entries(o.config).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]));
  if (!o.metrics.length) {
    $("curves").replaceChildren(el("p", { class: "muted", text: o.config.imported ? "no training curves: the model was imported" : "no epochs recorded" }));
    return;
  }
  const epochs = o.metrics.map((m) => m.epoch);
  const series = ["train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss"].filter((k) => o.metrics.some((m) => m[k] !== undefined));
  const traces = series.map((k) => ({ x: epochs, y: o.metrics.map((m) => m[k] ?? null), name: k, mode: "lines+markers", yaxis: k.endsWith("loss") ? "y2" : "y" }));
  Plotly.react("curves", traces, { margin: { t: 20, r: 50 }, xaxis: { title: { text: "epoch" } }, yaxis: { title: { text: "accuracy" } },
    yaxis2: { title: { text: "loss" }, overlaying: "y", side: "right" }, legend: { orientation: "h" } }, { displaylogo: false, responsive: true });
}

async function confusion() {
  const c = await api(`/api/runs/${state.run}/confusion`);
  const table = $("confusion");
  const head = el("tr", {}, [el("th", { text: "true \\ predicted" }), ...c.classes.map((n) => el("th", { text: n }))]);
  const rows = c.matrix.map((counts, t) => {
    const total = counts.reduce((a, b) => a + b, 0) || 1;
    return el("tr", {}, [el("th", { text: c.classes[t] }), ...counts.map((n, p) => {
      const share = n / total, hue = t === p ? "46,134,193" : "192,57,43";
      return el("td", { class: "cell", "data-true": t, "data-predicted": p, text: n,
        style: `background: rgba(${hue},${Math.min(0.9, share * (t === p ? 1 : 3)).toFixed(2)}); color: ${share > 0.5 ? "#fff" : "#222"}`,
        onclick: (e) => openCell(t, p, e.currentTarget) });
    })]);
  });
  table.replaceChildren(el("thead", {}, [head]), el("tbody", {}, rows));
  $("cell-title").textContent = `${c.images} images, accuracy ${pct(c.accuracy)}`;
  if (state.info.runs.length > 1) await disagreements();
}

async function openCell(t, p, td) {
  document.querySelectorAll("td.selected").forEach((x) => x.classList.remove("selected"));
  td.classList.add("selected");
  const cell = await api(`/api/runs/${state.run}/cell?true=${t}&predicted=${p}`);
  $("cell-title").textContent = `${cell.count} images: true ${cell.true}, predicted ${cell.predicted}`;
  fillGrid($("cell-images"), cell.images);
}

async function disagreements() {
  const d = await api("/api/disagreements");
  $("disagreements").hidden = false;
  $("only-first-title").textContent = `${d.only_first.length} images ${d.runs[0]} gets right and ${d.runs[1]} wrong`;
  $("only-second-title").textContent = `${d.only_second.length} images ${d.runs[1]} gets right and ${d.runs[0]} wrong`;
  fillGrid($("only-first"), d.only_first);
  fillGrid($("only-second"), d.only_second);
}

async function map() {
  const layer = $("map-layer").value, method = $("map-method").value;
  $("map-status").textContent = `computing the ${method} map of ${layer} (the first time for a layer and method; then cached in the run) ...`;
  const m = await api(`/api/runs/${state.run}/map?layer=${encodeURIComponent(layer)}&method=${method}`);
  state.map = m;
  const q = m.quality;
  $("map-status").textContent = `${m.x.length} images` + (q.trustworthiness != null ? `; trustworthiness ${q.trustworthiness.toFixed(3)}, kNN accuracy in the map ${pct(q.knn_accuracy_2d)}` : "");
  drawMap();
}

function drawMap() {
  const m = state.map, by = $("map-colour").value;
  const groups = by === "correct" ? [[true, "correct"], [false, "wrong"]] : m.classes.map((n, i) => [i, n]);
  const key = by === "correct" ? m.correct : by === "predicted" ? m.predicted : m.label;
  const kind = m.x.length > 12000 ? "scattergl" : "scatter";
  const traces = groups.map(([value, name]) => {
    const idx = key.map((v, i) => (v === value ? i : -1)).filter((i) => i >= 0);
    return { type: kind, mode: "markers", name, x: idx.map((i) => m.x[i]), y: idx.map((i) => m.y[i]), customdata: idx,
      marker: { size: 5, opacity: 0.75 }, hoverinfo: "none" };
  });
  const gd = $("map");
  Plotly.react(gd, traces, { margin: { t: 10 }, dragmode: "zoom", hovermode: "closest", legend: { itemsizing: "constant" },
    xaxis: { zeroline: false }, yaxis: { zeroline: false } }, { displaylogo: false, responsive: true });
  if (!gd.dataset.wired) {
    gd.dataset.wired = "1";
    gd.on("plotly_hover", (e) => showHover(e.points[0].customdata, e.event));
    gd.on("plotly_unhover", () => { $("hover").hidden = true; });
    gd.on("plotly_selected", (e) => showSelection(e ? e.points.map((p) => p.customdata) : []));
  }
}

function describe(i) {
  const m = state.map;
  return { index: i, label: m.classes[m.label[i]], predicted: m.classes[m.predicted[i]] };
}

function showHover(i, event) {
  const row = describe(i), box = $("hover");
  $("hover-image").src = `/api/images/${i}.png?scale=4`;
  $("hover-text").textContent = `#${i} ${row.label}` + (row.predicted !== row.label ? ` → ${row.predicted}` : " ✓");
  box.style.left = `${(event ? event.clientX : 0) + 14}px`;
  box.style.top = `${(event ? event.clientY : 0) + 14}px`;
  box.hidden = false;
}

function showSelection(indices) {
  $("selection-title").textContent = indices.length ? `${indices.length} selected images` : "";
  fillGrid($("selection"), indices.map(describe));
}

function checkedMethods() {
  return [...document.querySelectorAll("#methods input:checked")].map((x) => x.value).join(",");
}

async function image(index) {
  if (index !== undefined) $("image-index").value = index;
  const i = Number($("image-index").value);
  $("image-status").textContent = `explaining image ${i} ...`;
  const q = `methods=${encodeURIComponent(checkedMethods())}&layer=${encodeURIComponent($("image-layer").value)}`;
  const r = await api(`/api/runs/${state.run}/images/${i}?${q}`);
  showImage(r, `#${i} of the ${state.info.split} split, true class ${r.label}`);
}

async function upload() {
  const file = $("image-upload").files[0];
  if (!file) return;
  $("image-status").textContent = `explaining ${file.name} ...`;
  const q = `methods=${encodeURIComponent(checkedMethods())}&layer=${encodeURIComponent($("image-layer").value)}`;
  const body = await api(`/api/runs/${state.run}/upload?${q}`, { method: "POST", headers: { "Content-Type": file.type || "application/octet-stream" }, body: file });
  showImage(body, `${file.name} (uploaded, resized to 32x32 as cifarlens predict reads it)`);
}

function showImage(r, where) {
  $("image-view").src = r.image;
  $("image-caption").textContent = where;
  $("image-status").textContent = `explained class: ${r.explained}; attributions in ${(1000 * r.attribution_seconds).toFixed(0)} ms`;
  const top = [...r.top5].reverse();
  Plotly.react("top5", [{ type: "bar", orientation: "h", x: top.map((t) => t.probability), y: top.map((t) => t.class),
    text: top.map((t) => pct(t.probability)), textposition: "auto", hoverinfo: "none" }],
    { margin: { t: 10, l: 90 }, xaxis: { range: [0, 1] } }, { displaylogo: false, staticPlot: true });
  $("attributions").replaceChildren(...r.attributions.map((a) => el("figure", {}, [
    el("img", { src: a.image, alt: `${a.method} attribution`, class: "attribution" }),
    el("figcaption", { text: `${a.method} (${a.ms} ms)` }),
  ])));
  const f = r.feature_maps;
  $("feature-title").textContent = `Feature maps of ${f.layer} ${JSON.stringify(f.shape)}` + (f.channels.length ? `: the ${f.channels.length} strongest channels` : "");
  $("feature-maps").hidden = !f.image;
  if (f.image) $("feature-maps").src = f.image;
}

async function channels() {
  const layer = $("channel-layer").value;
  $("channel-status").textContent = `optimising and scanning ${layer} (the first time: seconds to a minute; then cached in the run) ...`;
  const c = await api(`/api/runs/${state.run}/channels?layer=${encodeURIComponent(layer)}&channels=${encodeURIComponent($("channel-list").value)}&k=${$("channel-k").value}`);
  $("channel-status").textContent = `${c.channels.length} channels of ${c.layer}`;
  $("channels").replaceChildren(...c.channels.map((ch) => el("div", { class: "channel-row" }, [
    el("figure", {}, [el("img", { src: ch.optimised, alt: `channel ${ch.channel} optimised` }), el("figcaption", { text: `ch${ch.channel} optimised` })]),
    el("div", { class: "grid" }, ch.top.map((row) => thumbnail(row, ` (${row.score.toFixed(2)})`))),
  ])));
}

async function robustness() {
  const key = $("robustness-key").value || "";
  const r = await api(`/api/runs/${state.run}/robustness` + (key ? `?key=${encodeURIComponent(key)}` : ""));
  if (!r.keys.length) {
    $("robustness-headline").replaceChildren(el("small", { text: `no robustness result yet; run: ${r.command}` }));
    Plotly.purge("robustness-heat");
    return;
  }
  if ($("robustness-key").options.length !== r.keys.length) fillSelect($("robustness-key"), r.keys, r.key);
  state.robustness = r;
  $("robustness-headline").replaceChildren(
    el("b", { text: pct(r.mean_corruption_accuracy) }),
    el("small", { text: ` mean corruption accuracy (${r.benchmark_corruptions} of 15 benchmark corruptions) · clean ${pct(r.clean)} · ` +
      `${r.n} images of the ${r.split} split, ${r.source} corruptions (seed ${r.seed}), ${r.backend}` }),
  );
  const labels = r.corruptions.map((n, i) => n + (r.benchmark[i] ? "" : " *"));
  const text = r.accuracy.map((row, i) => row.map((a, j) => `${(100 * a).toFixed(1)}%<br>${r.flipped[i][j]} flipped`));
  Plotly.react("robustness-heat", [{ type: "heatmap", z: r.accuracy.map((row) => row.map((a) => 100 * a)), x: r.severities.map((s) => `severity ${s}`),
    y: labels, text, texttemplate: "%{z:.1f}", hovertemplate: "%{y}, %{x}<br>%{text}<extra></extra>", colorscale: [[0, "#b2182b"], [0.5, "#fee08b"], [1, "#1a9850"]],
    zmin: Math.min(...r.accuracy.flat()) * 100, zmax: r.clean * 100,
    colorbar: { title: { text: "accuracy %" } } }],
    { margin: { t: 10, l: 150 }, yaxis: { autorange: "reversed" } }, { displaylogo: false, responsive: true });
  const gd = $("robustness-heat");
  if (!gd.dataset.wired) {
    gd.dataset.wired = "1";
    gd.on("plotly_click", (e) => {
      const p = e.points[0];
      flipped(state.robustness.corruptions[p.pointIndex[0]], state.robustness.severities[p.pointIndex[1]]).catch(showError);
    });
  }
}

async function flipped(corruption, severity) {
  const r = state.robustness;
  $("flipped-title").textContent = `${corruption} at severity ${severity}: finding the flipped images and their attributions ...`;
  const f = await api(`/api/runs/${state.run}/robustness/flipped?key=${encodeURIComponent(r.key)}&corruption=${corruption}&severity=${severity}`);
  $("flipped-title").textContent = `${corruption} at severity ${severity}: ${f.count} images flipped from right to wrong` +
    (f.count > f.images.length ? ` (the first ${f.images.length})` : "") + `; attributions: ${f.method}`;
  const view = (v, what) => el("figure", {}, [
    el("div", { class: "views" }, [el("img", { src: v.image, alt: what, class: "pixelated" }), el("img", { src: v.attribution, alt: `${what} attribution` })]),
    el("figcaption", { text: `${what}: ${v.predicted} ${pct(v.confidence)}` })]);
  $("flipped").replaceChildren(...f.images.map((x) => el("div", { class: "pair" }, [
    el("p", { text: `#${x.index} of ${r.split}, true ${x.label}` }), el("div", { class: "views" }, [view(x.clean, "clean"), view(x.corrupted, "corrupted")])])));
}

async function calibration() {
  const c = await api(`/api/runs/${state.run}/calibration`);
  const after = c.calibrated ? ` · after temperature ${c.temperature.toFixed(3)}: ECE ${pct(c.calibrated.ece)}, NLL ${c.calibrated.nll.toFixed(4)}` : " · not calibrated (cifarlens calibrate RUN)";
  $("calibration-headline").replaceChildren(el("b", { text: `ECE ${pct(c.ece)}` }),
    el("small", { text: ` MCE ${pct(c.mce)} · NLL ${c.nll.toFixed(4)} · Brier ${c.brier.toFixed(4)} on ${c.n} ${c.split} images (no TTA)` + after }));
  const filled = (bins) => bins.filter((b) => b.count);
  const centre = (b) => (b.lower + b.upper) / 2;
  const traces = [
    { type: "bar", x: filled(c.bins).map(centre), y: filled(c.bins).map((b) => b.accuracy), width: 1 / c.n_bins * 0.9, name: "accuracy",
      customdata: filled(c.bins).map((b) => [b.count, b.confidence]), hovertemplate: "confidence %{customdata[1]:.3f}<br>accuracy %{y:.3f}<br>%{customdata[0]} images<extra></extra>" },
    { x: [0, 1], y: [0, 1], mode: "lines", line: { dash: "dash", color: "#444" }, name: "perfect calibration" },
  ];
  if (c.calibrated) traces.push({ x: filled(c.calibrated.bins).map(centre), y: filled(c.calibrated.bins).map((b) => b.accuracy), mode: "lines+markers", name: "after temperature" });
  Plotly.react("reliability", traces, { margin: { t: 10 }, xaxis: { title: { text: "confidence" }, range: [0, 1] }, yaxis: { title: { text: "accuracy" }, range: [0, 1] },
    legend: { orientation: "h", y: -0.3 } }, { displaylogo: false, responsive: true });
  Plotly.react("coverage", [{ x: c.coverage.coverage, y: c.coverage.accuracy, mode: "lines+markers", name: "accuracy" }],
    { margin: { t: 10 }, xaxis: { title: { text: "coverage (most confident share kept)" }, tickformat: ".0%" }, yaxis: { title: { text: "accuracy" }, tickformat: ".0%", range: [Math.max(0, Math.min(...c.coverage.accuracy) - 0.05), 1.01] } },
    { displaylogo: false, responsive: true });
  $("mistakes-title").textContent = `The ${c.mistakes.length} most confident of ${c.mistakes_total} mistakes`;
  fillGrid($("mistakes"), c.mistakes);
}

// -- routing ----------------------------------------------------------------------------------------
const pages = { overview, confusion, map, image, channels, robustness, calibration };

async function route() {
  const [name, arg] = (location.hash.slice(1) || "overview").split("/");
  const page = pages[name] ? name : "overview";
  document.querySelectorAll(".page").forEach((s) => { s.hidden = s.id !== `page-${page}`; });
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === page));
  showError(null);
  try {
    const key = `${page}/${state.run}`;
    if (page === "image") await image(arg);
    else if (!state.loaded[key] && page !== "channels") { await pages[page](); state.loaded[key] = true; }
  } catch (err) { showError(err); }
}

function guarded(fn) { return () => fn().catch(showError); }

async function start() {
  state.info = await api("/api/info");
  const info = state.info;
  $("runs").textContent = `${info.runs.join(" vs ")} · ${info.images} ${info.split} images`;
  if (info.runs.length > 1) {
    $("run-choice").hidden = false;
    $("run").replaceChildren(...info.runs.map((n, i) => el("option", { value: i, text: `${i}: ${n}` })));
    $("run").onchange = () => { state.run = Number($("run").value); route(); };
  }
  fillSelect($("map-layer"), info.layers.probe, info.layers.probe[info.layers.probe.length - 1]);
  fillSelect($("map-method"), info.projection_methods, "pca");
  fillSelect($("image-layer"), info.layers.spatial, info.layers.feature_maps);
  fillSelect($("channel-layer"), info.layers.spatial, info.layers.spatial[info.layers.spatial.length - 1]);
  $("image-index").max = info.images - 1;
  $("methods").append(...info.methods.map((m) => el("label", {}, [
    Object.assign(el("input", { type: "checkbox", value: m }), { checked: info.default_methods.includes(m) }), ` ${m}`])));
  $("map-layer").onchange = $("map-method").onchange = guarded(map);
  $("map-colour").onchange = () => state.map && drawMap();
  $("image-open").onclick = () => { location.hash = `#image/${$("image-index").value}`; };
  $("image-upload").onchange = guarded(upload);
  $("image-layer").onchange = guarded(() => image());
  $("channel-show").onclick = guarded(channels);
  $("robustness-key").onchange = guarded(robustness);
  window.addEventListener("hashchange", route);
  await route();
}

start().catch(showError);
