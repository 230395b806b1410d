// The inferd dashboard: models, live charts and a "try it" panel, from the server's own HTTP API.
// Rates, latency percentiles and queue times are computed here from the cumulative counters of
// /v2/models/stats and /dashboard/api/latency, polled; nothing is kept on the server for the page.
"use strict";

(() => {
  const HISTORY = 60; // points per chart
  const COLORS = { rate: "#0b5cad", p50: "#1a7f37", p99: "#b42318", queue: "#8250df", errors: "#b42318",
    bars: "#0b5cad" };
  const state = {
    key: sessionStorage.getItem("inferd-key") || "",
    models: new Map(), // name -> [{version, state, reason}]
    selected: null,
    previous: new Map(), // name -> counters at the last poll
    series: new Map(), // name -> [{rate, p50, p99, queue, errors}]
    batches: new Map(), // name -> Map(batch size -> executions)
    latest: new Map(), // name -> the last point
    described: new Map(), // name -> {metadata, config} of a ready model
    timer: null,
  };
  const $ = (id) => document.getElementById(id);

  // ---- the API ----

  async function api(path, options = {}) {
    const headers = Object.assign({}, options.headers || {});
    if (state.key) headers.Authorization = "Bearer " + state.key;
    const response = await fetch(path, Object.assign({}, options, { headers }));
    const text = await response.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch (error) { body = text; }
    if (response.status === 401) {
      const form = $("key-form");
      if (form.hidden) {
        form.hidden = false;
        $("api-key").focus();
      }
      throw new Error(state.key ? "The API key was not accepted (401)." : "This server needs an API key (401).");
    }
    if (!response.ok) {
      throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
    }
    return body;
  }

  function setStatus(message, isError = false) {
    const status = $("status");
    status.textContent = message;
    status.classList.toggle("error", isError);
  }

  // ---- polling ----

  async function poll() {
    try {
      const [index, stats, latency] = await Promise.all([
        api("v2/repository/index", { method: "POST", body: "{}" }),
        api("v2/models/stats"),
        api("dashboard/api/latency"),
      ]);
      updateModels(index);
      record(stats.model_stats || [], latency);
      renderModels();
      renderCharts();
      if (state.pollFailed) setStatus(""); // the poll's own error is over; an action's result stays shown
      state.pollFailed = false;
    } catch (error) {
      setStatus(error.message, true);
      state.pollFailed = true;
    }
    schedule();
  }

  function schedule() {
    clearTimeout(state.timer);
    const every = Number($("poll").value);
    if (every > 0) state.timer = setTimeout(poll, every);
  }

  function updateModels(index) {
    const models = new Map();
    for (const row of index || []) {
      if (!models.has(row.name)) models.set(row.name, []);
      models.get(row.name).push({ version: row.version || "", state: row.state || "UNAVAILABLE",
        reason: row.reason || "" });
    }
    for (const [name, rows] of models) {
      const before = state.models.get(name);
      if (!before || summary(before) !== summary(rows)) state.described.delete(name);
    }
    state.models = models;
    if (state.selected && models.has(state.selected)) describe(state.selected);
  }

  const summary = (rows) => rows.map((r) => r.version + r.state).join(",");
  const isReady = (name) => (state.models.get(name) || []).some((r) => r.state === "READY");

  // ---- numbers from the counters ----

  function counters(stats, latency, name) {
    const total = { requests: 0, fails: 0, queueCount: 0, queueNs: 0, batches: new Map(), buckets: null };
    for (const s of stats.filter((s) => s.name === name)) {
      const inference = s.inference_stats;
      total.requests += inference.success.count + inference.fail.count;
      total.fails += inference.fail.count;
      total.queueCount += inference.queue.count;
      total.queueNs += inference.queue.ns;
      for (const b of s.batch_stats || []) {
        total.batches.set(b.batch_size, (total.batches.get(b.batch_size) || 0) + b.compute_infer.count);
      }
    }
    for (const m of (latency.model_latency || []).filter((m) => m.name === name)) {
      total.buckets = total.buckets ? total.buckets.map((c, i) => c + m.counts[i]) : m.counts.slice();
    }
    return total;
  }

  function percentile(deltas, bounds, q) {
    const count = deltas.reduce((a, b) => a + b, 0);
    if (count === 0) return null;
    const rank = q * count;
    let seen = 0;
    for (let i = 0; i < deltas.length; i++) {
      if (seen + deltas[i] >= rank && deltas[i] > 0) {
        const low = i === 0 ? 0 : bounds[i - 1];
        const high = i < bounds.length ? bounds[i] : bounds[bounds.length - 1] * 2;
        return (low + (high - low) * ((rank - seen) / deltas[i])) / 1000; // ms
      }
      seen += deltas[i];
    }
    return bounds[bounds.length - 1] / 1000;
  }

  function record(stats, latency) {
    const now = performance.now() / 1000;
    const names = new Set([...state.models.keys(), ...stats.map((s) => s.name)]);
    for (const name of names) {
      const current = counters(stats, latency, name);
      current.time = now;
      const before = state.previous.get(name);
      state.previous.set(name, current);
      state.batches.set(name, current.batches);
      if (!before || current.requests < before.requests) continue; // first sight, or reloaded: a new baseline
      const seconds = Math.max(now - before.time, 1e-3);
      const queued = current.queueCount - before.queueCount;
      let p50 = null;
      let p99 = null;
      if (current.buckets && before.buckets && current.buckets.length === before.buckets.length) {
        const deltas = current.buckets.map((c, i) => Math.max(0, c - before.buckets[i]));
        p50 = percentile(deltas, latency.bounds_us, 0.5);
        p99 = percentile(deltas, latency.bounds_us, 0.99);
      }
      const point = {
        rate: (current.requests - before.requests) / seconds,
        errors: (current.fails - before.fails) / seconds,
        queue: queued > 0 ? (current.queueNs - before.queueNs) / queued / 1e6 : null,
        p50, p99,
      };
      const series = state.series.get(name) || [];
      series.push(point);
      if (series.length > HISTORY) series.shift();
      state.series.set(name, series);
      state.latest.set(name, point);
    }
  }

  // ---- the models table ----

  function renderModels() {
    const body = $("models").tBodies[0];
    // Rebuilt only when something shown changed: rows under the pointer or the keyboard stay put otherwise.
    const shown = JSON.stringify([state.selected, [...state.models]]);
    if (shown === state.shown) return;
    state.shown = shown;
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.focusKey : null;
    body.replaceChildren();
    for (const [name, rows] of [...state.models].sort((a, b) => a[0].localeCompare(b[0]))) {
      rows.forEach((row, i) => {
        const tr = document.createElement("tr");
        tr.dataset.model = name;
        if (name === state.selected) tr.classList.add("selected");
        const nameCell = document.createElement("td");
        if (i === 0) {
          const select = button(name, () => select_(name), `select-${name}`);
          select.className = "model-name";
          select.setAttribute("aria-pressed", String(name === state.selected));
          nameCell.append(select);
        }
        const stateCell = cell(row.state);
        stateCell.classList.add("state", "state-" + row.state);
        const reasonCell = cell(row.reason);
        reasonCell.classList.add("reason");
        const actions = document.createElement("td");
        if (i === 0) {
          const box = document.createElement("div");
          box.className = "actions";
          box.append(button("Load", () => change(name, "load"), `load-${name}`, `Load ${name}`),
            button("Unload", () => change(name, "unload"), `unload-${name}`, `Unload ${name}`));
          actions.append(box);
        }
        tr.append(nameCell, cell(row.version || "–"), stateCell, reasonCell, actions);
        body.append(tr);
      });
    }
    if (focused) {
      const again = body.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function button(text, onClick, focusKey, label) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    b.dataset.focusKey = focusKey;
    if (label) b.setAttribute("aria-label", label);
    b.addEventListener("click", onClick);
    return b;
  }

  async function change(name, action) {
    setStatus(`${action === "load" ? "Loading" : "Unloading"} ${name}…`);
    try {
      await api(`v2/repository/models/${encodeURIComponent(name)}/${action}`, { method: "POST", body: "{}" });
      setStatus(`${name} ${action === "load" ? "loaded" : "unloaded"}.`);
    } catch (error) {
      setStatus(`${action} ${name}: ${error.message}`, true);
    }
    state.described.delete(name);
    await poll();
  }

  // ---- the selected model ----

  function select_(name) {
    state.selected = name;
    $("detail-heading").textContent = name;
    renderModels();
    renderCharts();
    describe(name);
  }

  async function describe(name) {
    if (!isReady(name)) {
      $("config").textContent = "";
      showTry(null);
      return;
    }
    if (state.described.has(name)) return;
    state.described.set(name, null); // asked
    try {
      const base = `v2/models/${encodeURIComponent(name)}`;
      const [metadata, config] = await Promise.all([api(base), api(base + "/config")]);
      state.described.set(name, { metadata, config });
      if (state.selected === name) {
        $("config").textContent = JSON.stringify(config, null, 2);
        showTry({ name, metadata, config });
      }
    } catch (error) {
      state.described.delete(name);
      setStatus(`${name}: ${error.message}`, true);
    }
  }

  // ---- charts ----

  function renderCharts() {
    const name = state.selected;
    const series = (name && state.series.get(name)) || [];
    const latest = (name && state.latest.get(name)) || null;
    const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : v.toFixed(digits));
    $("value-rate").textContent = latest ? fmt(latest.rate) : "–";
    $("value-errors").textContent = latest ? fmt(latest.errors) : "–";
    $("value-queue").textContent = latest ? fmt(latest.queue, 3) : "–";
    $("value-latency").textContent = latest ? `${fmt(latest.p50, 2)} / ${fmt(latest.p99, 2)}` : "–";
    lineChart($("chart-rate"), [{ values: series.map((p) => p.rate), color: COLORS.rate }]);
    lineChart($("chart-latency"), [{ values: series.map((p) => p.p50), color: COLORS.p50, label: "p50" },
      { values: series.map((p) => p.p99), color: COLORS.p99, label: "p99" }]);
    lineChart($("chart-queue"), [{ values: series.map((p) => p.queue), color: COLORS.queue }]);
    lineChart($("chart-errors"), [{ values: series.map((p) => p.errors), color: COLORS.errors }]);
    const batches = (name && state.batches.get(name)) || new Map();
    const sizes = [...batches.keys()].sort((a, b) => a - b);
    $("value-batches").textContent = sizes.length
      ? sizes.map((s) => `${s}: ${batches.get(s)}`).join("  ") : "–";
    barChart($("chart-batches"), sizes, sizes.map((s) => batches.get(s)));
  }

  function prepare(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 320;
    const height = canvas.clientHeight || 120;
    if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
    if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    return { ctx, width, height };
  }

  function axes(ctx, width, height, top, label) {
    ctx.strokeStyle = "#d0d7de";
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(32, 8);
    ctx.lineTo(32, height - 16);
    ctx.lineTo(width - 4, height - 16);
    ctx.stroke();
    ctx.fillStyle = "#57606a";
    ctx.fillText(label(top), 2, 14);
    ctx.fillText("0", 20, height - 16);
  }

  function niceTop(max) {
    if (!(max > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(max)));
    for (const step of [1, 2, 5, 10]) if (step * power >= max) return step * power;
    return 10 * power;
  }

  function lineChart(canvas, lines) {
    const { ctx, width, height } = prepare(canvas);
    const all = lines.flatMap((l) => l.values).filter((v) => v !== null && v !== undefined);
    const top = niceTop(Math.max(0, ...all));
    axes(ctx, width, height, top, (v) => (v >= 100 ? v.toFixed(0) : String(+v.toPrecision(2))));
    const x = (i) => 32 + ((width - 40) * i) / (HISTORY - 1);
    const y = (v) => height - 16 - ((height - 26) * v) / top;
    lines.forEach((line, i) => { // a legend where a chart has several lines
      if (!line.label) return;
      ctx.fillStyle = line.color;
      ctx.fillText(line.label, 40 + i * 36, 14);
    });
    for (const line of lines) {
      const offset = HISTORY - line.values.length;
      ctx.strokeStyle = line.color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      let drawing = false;
      line.values.forEach((v, i) => {
        if (v === null || v === undefined) { drawing = false; return; }
        if (drawing) ctx.lineTo(x(offset + i), y(v)); else ctx.moveTo(x(offset + i), y(v));
        drawing = true;
      });
      ctx.stroke();
      const last = line.values.length - 1;
      if (last >= 0 && line.values[last] !== null && line.values[last] !== undefined) { // the latest value
        ctx.fillStyle = line.color;
        ctx.beginPath();
        ctx.arc(x(offset + last), y(line.values[last]), 3, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
  }

  function barChart(canvas, labels, values) {
    const { ctx, width, height } = prepare(canvas);
    const top = niceTop(Math.max(0, ...values));
    axes(ctx, width, height, top, (v) => String(v));
    if (!values.length) return;
    const slot = (width - 40) / values.length;
    values.forEach((v, i) => {
      const h = ((height - 26) * v) / top;
      ctx.fillStyle = COLORS.bars;
      ctx.fillRect(36 + i * slot, height - 16 - h, Math.max(2, slot - 6), h);
      ctx.fillStyle = "#57606a";
      ctx.fillText(String(labels[i]), 36 + i * slot, height - 3);
    });
  }

  // ---- try it ----

  function imageInput(metadata, config) {
    const inputs = metadata.inputs || [];
    const outputs = metadata.outputs || [];
    if (inputs.length !== 1 || outputs.length !== 1 || !(config.input || []).length) return null;
    const format = config.input[0].format;
    if (format !== "FORMAT_NCHW" && format !== "FORMAT_NHWC") return null;
    const batching = (config.max_batch_size || 0) > 0;
    const shape = inputs[0].shape.map(Number);
    const dims = batching ? shape.slice(1) : shape;
    if (dims.length !== 3 || !["FP32", "UINT8"].includes(inputs[0].datatype)) return null;
    const [c, h, w] = format === "FORMAT_NHWC" ? [dims[2], dims[0], dims[1]] : dims;
    if (!(c === 1 || c === 3) || h < 1 || w < 1) return null;
    return { name: inputs[0].name, datatype: inputs[0].datatype, output: outputs[0].name, format, batching, c, h, w };
  }

  function showTry(model) {
    const image = model ? imageInput(model.metadata, model.config) : null;
    $("try-image").hidden = !image;
    $("try-json").hidden = !model || Boolean(image);
    $("try-hint").textContent = !model ? "Select a ready model to send it a request."
      : image ? `An image model: the picture is resized to ${image.w}×${image.h} and sent as ${image.datatype}.`
        : "Edit the inputs (JSON arrays, flattened or nested) and send them.";
    $("result").replaceChildren();
    state.tryModel = model ? Object.assign({ image }, model) : null;
    if (model && !image) buildJsonForm(model.metadata, model.config);
  }

  function buildJsonForm(metadata, config) {
    const box = $("json-inputs");
    box.replaceChildren();
    const batching = (config.max_batch_size || 0) > 0;
    (metadata.inputs || []).forEach((input, i) => {
      const shape = input.shape.map(Number).map((d, j) => (d < 0 ? 1 : d));
      if (batching && shape.length) shape[0] = 1;
      const count = shape.reduce((a, b) => a * b, 1);
      const field = document.createElement("div");
      field.className = "field";
      const label = document.createElement("label");
      label.htmlFor = `input-${i}`;
      label.textContent = `${input.name} (${input.datatype}, shape [${shape.join(", ")}])`;
      const area = document.createElement("textarea");
      area.id = `input-${i}`;
      area.dataset.name = input.name;
      area.dataset.datatype = input.datatype;
      area.dataset.shape = JSON.stringify(shape);
      area.value = JSON.stringify(new Array(Math.min(count, 4096)).fill(input.datatype === "BYTES" ? "" : 0));
      field.append(label, area);
      box.append(field);
    });
  }

  async function sendJson(event) {
    event.preventDefault();
    const model = state.tryModel;
    if (!model) return;
    try {
      const inputs = [...$("json-inputs").querySelectorAll("textarea")].map((area) => {
        let data;
        try { data = JSON.parse(area.value); } catch (error) {
          throw new Error(`${area.dataset.name}: not JSON (${error.message})`);
        }
        return { name: area.dataset.name, datatype: area.dataset.datatype, shape: JSON.parse(area.dataset.shape),
          data: [data].flat(Infinity) };
      });
      const answer = await infer(model.name, { inputs });
      const pre = document.createElement("pre");
      pre.tabIndex = 0;
      pre.textContent = (answer.outputs || []).map((o) =>
        `${o.name} (${o.datatype}, [${o.shape.join(", ")}])\n${JSON.stringify(o.data)}`).join("\n\n");
      $("result").replaceChildren(heading("Result"), pre);
    } catch (error) {
      $("result").replaceChildren(heading("Failed"), paragraph(error.message));
    }
  }

  function infer(name, body) {
    return api(`v2/models/${encodeURIComponent(name)}/infer`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
  }

  async function sendImage(event) {
    event.preventDefault();
    const model = state.tryModel;
    const file = $("image-file").files[0];
    if (!model || !model.image) return;
    if (!file) { $("result").replaceChildren(paragraph("Choose an image first.")); return; }
    try {
      const spec = model.image;
      const bitmap = await createImageBitmap(file);
      const canvas = document.createElement("canvas");
      canvas.width = spec.w;
      canvas.height = spec.h;
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(bitmap, 0, 0, spec.w, spec.h);
      const pixels = ctx.getImageData(0, 0, spec.w, spec.h).data;
      const data = tensorOf(pixels, spec, $("scaling").value);
      const k = Math.max(1, Number($("top-k").value) || 1);
      const shape = spec.format === "FORMAT_NCHW" ? [spec.c, spec.h, spec.w] : [spec.h, spec.w, spec.c];
      const answer = await infer(model.name, {
        inputs: [{ name: spec.name, datatype: spec.datatype, shape: spec.batching ? [1, ...shape] : shape,
          data: Array.from(data) }],
        outputs: [{ name: spec.output, parameters: { classification: k } }],
      });
      const preview = $("preview");
      preview.src = URL.createObjectURL(file);
      preview.hidden = false;
      const list = document.createElement("ol");
      list.id = "classes";
      for (const item of (answer.outputs[0].data || [])) {
        const [score, index, ...label] = String(item).split(":");
        const li = document.createElement("li");
        li.textContent = `${label.join(":") || "class " + index} (${index}): ${Number(score).toFixed(4)}`;
        list.append(li);
      }
      $("result").replaceChildren(heading(`Top ${k} classes`), list);
    } catch (error) {
      $("result").replaceChildren(heading("Failed"), paragraph(error.message));
    }
  }

  // RGBA pixels as the model's input: RGB (or gray) values, scaled as image_client.py scales them, in the
  // model's layout.
  function tensorOf(pixels, spec, scaling) {
    const { c, h, w } = spec;
    const out = spec.datatype === "UINT8" ? new Uint8Array(c * h * w) : new Float32Array(c * h * w);
    const means = c === 1 ? [128] : [123, 117, 104];
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const p = (y * w + x) * 4;
        const rgb = c === 1
          ? [Math.round(0.299 * pixels[p] + 0.587 * pixels[p + 1] + 0.114 * pixels[p + 2])]
          : [pixels[p], pixels[p + 1], pixels[p + 2]];
        for (let ch = 0; ch < c; ch++) {
          let v = rgb[ch];
          if (scaling === "INCEPTION") v = v / 127.5 - 1;
          else if (scaling === "VGG") v = v - means[ch];
          const at = spec.format === "FORMAT_NCHW" ? ch * h * w + y * w + x : (y * w + x) * c + ch;
          out[at] = v;
        }
      }
    }
    return out;
  }

  function heading(text) {
    const h = document.createElement("h4");
    h.textContent = text;
    return h;
  }

  function paragraph(text) {
    const p = document.createElement("p");
    p.textContent = text;
    return p;
  }

  // ---- start ----

  async function start() {
    $("try-json").addEventListener("submit", sendJson);
    $("try-image").addEventListener("submit", sendImage);
    $("poll").addEventListener("change", () => { schedule(); if (Number($("poll").value) > 0) poll(); });
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.key = $("api-key").value.trim();
      sessionStorage.setItem("inferd-key", state.key);
      $("key-form").hidden = true;
      poll();
    });
    try {
      const server = await api("v2");
      $("server-info").textContent = `${server.name} ${server.version}`;
    } catch (error) {
      $("server-info").textContent = "";
    }
    await poll();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
