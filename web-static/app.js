// Millrace page: plain JavaScript, no build step.
// Multipart PNG streams are read with fetch() and split into parts here, then each part is shown
// through a blob URL. That works the same in Chromium and Firefox (Firefox does not render
// multipart/x-mixed-replace reliably in <img>). The colorize response is multipart/form-data,
// which both browsers parse themselves with Response.formData().
"use strict";

// index.html#autorun: the self-test (startSelftest and autorun, at the end of this file). It is
// set up before anything else runs so that it sees every error of the page.
const selftest = location.hash.includes("autorun") ? startSelftest() : null;

const $ = (sel) => document.querySelector(sel);
const status = (text) => { $("#status").textContent = text; };

// --- panels ---
document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("nav button, .panel").forEach((e) => e.classList.remove("active"));
  b.classList.add("active");
  $("#" + b.dataset.panel).classList.add("active");
}));

// --- multipart reader: calls onPart(Uint8Array) for each part's body ---
async function readMultipart(response, onPart, signal) {
  const type = response.headers.get("Content-Type") || "";
  const m = /boundary=([^;]+)/.exec(type);
  if (!m) throw new Error("not a multipart response");
  const boundary = new TextEncoder().encode("--" + m[1]);
  const reader = response.body.getReader();
  let buf = new Uint8Array(0);
  const find = (hay, needle, from) => {
    outer: for (let i = from; i <= hay.length - needle.length; i++) {
      for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
      return i;
    }
    return -1;
  };
  for (;;) {
    if (signal && signal.aborted) { reader.cancel(); return; }
    const { value, done } = await reader.read();
    if (done) return;
    const next = new Uint8Array(buf.length + value.length);
    next.set(buf); next.set(value, buf.length); buf = next;
    for (;;) {
      const start = find(buf, boundary, 0);
      if (start < 0) break;
      const headerEnd = find(buf, new TextEncoder().encode("\r\n\r\n"), start);
      if (headerEnd < 0) break;
      const headers = new TextDecoder().decode(buf.slice(start, headerEnd));
      const len = /Content-Length:\s*(\d+)/i.exec(headers);
      if (!len) { buf = buf.slice(headerEnd + 4); continue; }
      const bodyStart = headerEnd + 4, bodyEnd = bodyStart + parseInt(len[1], 10);
      if (buf.length < bodyEnd) break;
      onPart(buf.slice(bodyStart, bodyEnd));
      buf = buf.slice(bodyEnd);
    }
  }
}

function showPNG(img, bytes) {
  showBlob(img, new Blob([bytes], { type: "image/png" }));
}

function showBlob(img, blob) {
  const url = URL.createObjectURL(blob);
  const old = img.dataset.url;
  img.onload = () => { if (old) URL.revokeObjectURL(old); };
  img.dataset.url = url;
  img.src = url;
}

// index.html#colorize (or #stream, #generate) opens that panel.
for (const b of document.querySelectorAll("nav button")) {
  if (location.hash.includes(b.dataset.panel)) { b.click(); break; }
}

// --- model info ---
let info = { classes: [] };
fetch("/v1/info").then((r) => r.json()).then((j) => {
  info = j;
  // The stream panel runs on the default model; the generate panel lists the models (below).
  j.classes.forEach((name, i) => {
    const o = document.createElement("option");
    o.value = String(i); o.textContent = name;
    $("#stream-class").appendChild(o);
  });
  status("ready: " + j.classes.length + " classes");
  // Colorize methods this server offers, its default first.
  const methods = j.colorize_methods || ["retrieval", "prior"];
  for (const o of [...$("#color-method").options]) if (!methods.includes(o.value)) o.remove();
  $("#color-method").value = methods[0];
  if (!j.reference_pool_images) {
    $("#color-status").textContent = "The server has no reference pool: upload one or more reference images to colorize.";
  }
}).catch((e) => status("cannot reach the server: " + e));

// --- models: the generate panel offers what the chosen model supports (GET /v1/models) ---
let models = [];
const option = (value, text) => { const o = document.createElement("option"); o.value = value; o.textContent = text ?? value; return o; };
function showModelChoices() {
  const m = models.find((x) => x.name === $("#gen-model").value) || models[0];
  if (!m) return;
  const keep = (sel, values) => {
    const old = $(sel).value;
    $(sel).replaceChildren(...values.map((v) => option(v)));
    if (values.includes(old)) $(sel).value = old;
  };
  keep("#gen-schedule", m.schedules);
  keep("#gen-source", m.sources);
  $("#gen-schedule").title = m.boss_steps.length ? "boss: steps " + m.boss_steps.join(", ") : "";
  const cls = $("#gen-class").value;
  $("#gen-class").replaceChildren(option("all"), ...m.classes.map((name, i) => option(String(i), name)));
  if ([...$("#gen-class").options].some((o) => o.value === cls)) $("#gen-class").value = cls;
  $("#gen-form").guidance.value = m.default_guidance;
}
// A model's stream defaults (strength, steps, guidance, stepping, structure, its floor and target) fill the Stream panel when it is picked.
function showStreamDefaults() {
  const m = models.find((x) => x.name === $("#stream-model").value);
  const d = m && m.stream_defaults;
  if (!d) return;
  const f = $("#stream-form");
  f.strength.value = d.strength; f.steps.value = d.steps; f.rcfg.value = d.rcfg;
  f.guidance.value = d.guidance; f.stepping.value = d.stepping; f.structure.value = d.structure;
  f.structure_floor.value = d.structure_floor;
  if (d.structure_target) f.structure_target.value = d.structure_target;
}
fetch("/v1/models").then((r) => r.json()).then((j) => {
  models = j.models;
  // Restyle models redraw a picture: they serve streams, not generation.
  const generators = models.filter((m) => m.task !== "restyle");
  $("#gen-model").replaceChildren(...generators.map((m) => option(m.name)));
  $("#gen-model").value = j.default;
  // Streams run on the stream model unless another is picked (its size shows in the list).
  $("#stream-model").replaceChildren(...models.map((m) => option(m.name, `${m.name} (${m.sample_size}×${m.sample_size})`)));
  $("#stream-model").value = j.stream_default || j.default;
  showModelChoices();
  showStreamDefaults();
}).catch((e) => status("cannot list the models: " + e));
$("#gen-model").addEventListener("change", showModelChoices);
$("#stream-model").addEventListener("change", showStreamDefaults);

// --- Generate ---
$("#gen-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const q = new URLSearchParams({ class: f.class.value, steps: f.steps.value, guidance: f.guidance.value,
                                  count: f.count.value, seed: f.seed.value, schedule: f.schedule.value,
                                  source: f.source.value, solver: f.solver.value, model: f.model.value, upscale: "4" });
  $("#gen-progress").textContent = "generating…";
  delete document.body.dataset.generateFrames; delete document.body.dataset.generateError;
  let parts = 0;
  try {
    const r = await fetch("/v1/generate/stream?" + q);
    if (!r.ok) throw new Error((await r.json().catch(() => ({ error: r.statusText }))).error);
    await readMultipart(r, (png) => {
      parts++;
      showPNG($("#gen-image"), png);
      if (selftest) selftest.generatePart(png);
      $("#gen-progress").textContent = parts <= +f.steps.value - 1 ? `step ${parts} of ${f.steps.value}` : "done";
    });
    $("#gen-progress").textContent = `done: ${parts} frames`;
    document.body.dataset.generateFrames = String(parts);
  } catch (e) {
    $("#gen-progress").textContent = "error: " + e.message;
    document.body.dataset.generateError = e.message;
  }
});

// --- Stream ---
// outputEnded: a promise of how the running stream's output response ended: "ended" (by the
// server, which ends it when the stream is deleted), "aborted" (by this page) or "error: …".
let streamId = null, sendTimer = null, outputAbort = null, outputEnded = null, statsTimer = null, clipFrame = 0;
const canvas = $("#stream-canvas"), ctx = canvas.getContext("2d");
ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
let drawing = false;
canvas.addEventListener("pointerdown", (e) => { drawing = true; ctx.beginPath(); ctx.moveTo(e.offsetX, e.offsetY); });
canvas.addEventListener("pointermove", (e) => {
  if (!drawing || $("#stream-input").value !== "draw") return;
  ctx.lineWidth = 14; ctx.lineCap = "round"; ctx.strokeStyle = "#e8a317";
  ctx.lineTo(e.offsetX, e.offsetY); ctx.stroke();
});
window.addEventListener("pointerup", () => { drawing = false; });

// The sample clips (assets/clips, made by `gen clips --scenes`) and their lengths in frames.
const clipFrames = { clip: 120, still: 120, scene: 48, "scene-heldout": 48, sketch: 48 };

async function nextInputFrame() {
  const kind = $("#stream-input").value;
  if (kind in clipFrames) {
    const name = kind === "clip" ? "moving" : kind;
    const img = new Image();
    img.src = `/clips/${name}/frame-${String(clipFrame % clipFrames[kind]).padStart(3, "0")}.png`;
    clipFrame++;
    await img.decode();
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  } else if (kind === "webcam") {
    const v = $("#webcam");
    if (v.videoWidth) ctx.drawImage(v, 0, 0, canvas.width, canvas.height);
  }
  return new Promise((res) => canvas.toBlob(res, "image/png"));
}

// Stop: delete the stream, then let the server end the output response (it does when the stream
// is deleted); the page stops reading it itself only if it is still open 5 s later.
async function stopStream() {
  const id = streamId, abort = outputAbort, ended = outputEnded;
  streamId = null;
  clearInterval(sendTimer); clearInterval(statsTimer);
  $("#stream-stop").disabled = true;
  if (id) {
    const r = await fetch("/v1/streams/" + id, { method: "DELETE" }).catch((e) => ({ status: "network error: " + e.message }));
    document.body.dataset.streamStopStatus = String(r.status);
    if (r.status !== 200) status(`stream: DELETE answered ${r.status}`);
  }
  if (ended) {
    const how = await Promise.race([ended, new Promise((res) => setTimeout(res, 5000, "still open"))]);
    if (how === "still open") abort.abort();
    document.body.dataset.streamOutputEnd = how;
  }
  $("#stream-start").disabled = false;
}
$("#stream-stop").addEventListener("click", stopStream);

// Live changes: a change of class, guidance mode, scale, stepping, blend, structure, its floor or target, or filter is sent at once (PATCH).
$("#stream-form").addEventListener("change", async (ev) => {
  if (!streamId || !["class", "rcfg", "guidance", "stepping", "blend", "structure", "structure_floor", "structure_target", "filter"].includes(ev.target.name)) return;
  const f = $("#stream-form");
  try {
    const r = await fetch("/v1/streams/" + streamId, { method: "PATCH", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ class: f.class.value, rcfg: f.rcfg.value, guidance: +f.guidance.value, stepping: f.stepping.value,
                             blend: +f.blend.value, structure: +f.structure.value, structure_floor: +f.structure_floor.value,
                             structure_target: f.structure_target.value, filter: f.filter.checked }) });
    document.body.dataset.streamPatchStatus = String(r.status);
    status(r.ok ? "stream settings changed" : "stream: " + (await r.json().catch(() => ({ error: r.statusText }))).error);
  } catch (e) {
    document.body.dataset.streamPatchStatus = "network error: " + e.message;
    status("stream: " + e.message);
  }
});

$("#stream-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  if ($("#stream-input").value === "webcam") {
    try {
      const media = await navigator.mediaDevices.getUserMedia({ video: true });
      $("#webcam").srcObject = media; await $("#webcam").play();
    } catch (e) { status("no webcam: " + e.message); return; }
  }
  let j;
  try {
    const r = await fetch("/v1/streams", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: f.model.value || undefined, class: f.class.value, strength: +f.strength.value, steps: +f.steps.value,
                             rcfg: f.rcfg.value, guidance: +f.guidance.value, stepping: f.stepping.value, blend: +f.blend.value,
                             structure: +f.structure.value, structure_floor: +f.structure_floor.value,
                             structure_target: f.structure_target.value, filter: f.filter.checked, size: 256 }) });
    j = await r.json();
    if (!r.ok) throw new Error(j.error);
  } catch (e) { status("stream: " + e.message); return; }
  const id = j.id;
  streamId = id;
  delete document.body.dataset.streamFrames;
  $("#stream-start").disabled = true; $("#stream-stop").disabled = false;
  let shown = 0; const t0 = performance.now();
  const abort = new AbortController();
  outputAbort = abort;
  outputEnded = fetch(`/v1/streams/${id}/output`, { signal: abort.signal })
    .then((resp) => readMultipart(resp, (png) => {
      shown++; showPNG($("#stream-image"), png);
      if (selftest) selftest.streamPart(png);
      document.body.dataset.streamFrames = String(shown);
      $("#stream-stats").dataset.fps = (shown / ((performance.now() - t0) / 1000)).toFixed(1);
    }, abort.signal))
    .then(() => abort.signal.aborted ? "aborted" : "ended", (e) => abort.signal.aborted ? "aborted" : "error: " + e.message);
  sendTimer = setInterval(async () => {
    try {
      const blob = await nextInputFrame();
      if (streamId !== id) return;
      const sent = performance.now();
      const resp = await fetch(`/v1/streams/${id}/frames`, { method: "POST", headers: { "Content-Type": "image/png" }, body: blob });
      if (streamId !== id) return;
      $("#stream-stats").dataset.latency = (performance.now() - sent).toFixed(0);
      if (selftest) selftest.streamInput(blob, resp.status);
      if (resp.status !== 202) status(`stream: a frame was answered ${resp.status}`);
    } catch (e) {
      if (streamId === id) status("stream: cannot send a frame: " + e.message);
    }
  }, 1000 / Math.max(1, +f.fps.value));
  statsTimer = setInterval(async () => {
    try {
      const r = await fetch("/v1/streams/" + id);
      if (streamId !== id || !r.ok) return;
      const s = await r.json();
      const el = $("#stream-stats");
      const num = (v, d) => (v === null || v === undefined ? "-" : v.toFixed(d));
      el.textContent = `output ${el.dataset.fps || 0} fps · post latency ${el.dataset.latency || "-"} ms · in ${s.frames_in} · processed ${s.processed} · skipped ${s.skipped} · dropped ${s.dropped} · errors ${s.errors}`
        + ` · layout kept (luma correlation) ${num(s.luma_correlation, 2)} · flicker ${num(s.flicker_static, 4)}`;
    } catch (e) { /* the next tick tries again */ }
  }, 1000);
});

// --- Colorize ---
fetch("samples/index.json").then((r) => r.json()).then((list) => {
  for (const s of list) {
    const o = document.createElement("option");
    o.value = s.file; o.textContent = `${s.name} (${s.class})`;
    $("#color-sample").appendChild(o);
  }
  if (list.length) $("#color-sample").value = list[0].file;
}).catch(() => {});
$("#color-file").addEventListener("change", () => { if ($("#color-file").files.length) $("#color-sample").value = ""; });

const quadrantOrder = ["top-left", "top-right", "bottom-left", "bottom-right"];

$("#color-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const say = (t) => { $("#color-status").textContent = t; };
  delete document.body.dataset.colorizeError;
  try {
    let input, name;
    const sample = $("#color-sample").value, file = $("#color-file").files[0];
    if (sample) {
      const r = await fetch("samples/" + sample);
      if (!r.ok) throw new Error("cannot load the sample " + sample);
      input = await r.blob(); name = sample;
    } else if (file) {
      input = file; name = file.name;
    } else {
      throw new Error("pick a sample or upload an image");
    }
    showBlob($("#color-input"), input);
    const form = new FormData();
    form.append("image", input, name);
    for (const ref of $("#color-refs").files) form.append("reference", ref, ref.name);
    say("colorizing…");
    const t0 = performance.now();
    const method = $("#color-method").value;
    const r = await fetch("/v1/colorize?references=1&method=" + encodeURIComponent(method), { method: "POST", body: form });
    if (!r.ok) throw new Error((await r.json().catch(() => ({ error: r.statusText }))).error);
    const parts = await r.formData();
    const result = parts.get("image"), canvas = parts.get("canvas");
    const info = JSON.parse(parts.get("references"));
    showBlob($("#color-canvas"), canvas);
    showBlob($("#color-result"), result);
    await Promise.all([$("#color-result").decode(), $("#color-canvas").decode()]);
    const rows = info.references.slice().sort((a, b) => a.quadrant - b.quadrant || a.rank - b.rank);
    const body = $("#color-table tbody");
    body.textContent = "";
    for (const p of rows) {
      const tr = document.createElement("tr");
      for (const [text, cls] of [[quadrantOrder[p.quadrant] || p.quadrant, ""], [String(p.rank + 1), "num"],
                                 [p.name, ""], [p.similarity.toFixed(3), "num"]]) {
        const td = document.createElement("td");
        td.textContent = text; if (cls) td.className = cls;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    $("#color-table").hidden = false;
    const ms = (performance.now() - t0).toFixed(0);
    say(`${info.width}×${info.height} colorized (${info.method}) in ${ms} ms from ${info.references.length} patches of the ` +
        (info.pool === "uploaded" ? `${info.pool_images} uploaded reference(s)` : `server's pool (${info.pool_images} images)`));
    document.body.dataset.colorizeWidth = String($("#color-result").naturalWidth);
    document.body.dataset.colorizeHeight = String($("#color-result").naturalHeight);
    document.body.dataset.colorizeCanvas = `${$("#color-canvas").naturalWidth}x${$("#color-canvas").naturalHeight}`;
    document.body.dataset.colorizeRefs = String(info.references.length);
    document.body.dataset.colorizeBytes = String(result.size);
    document.body.dataset.colorizeMethod = info.method;
  } catch (e) {
    say("error: " + e.message);
    document.body.dataset.colorizeError = e.message;
  }
});

// --- self-test: index.html#autorun runs Generate (one image of the first class, 3 steps), then a
// Stream from the moving sample clip (a live change of class and guidance while it runs, then
// Stop), then Colorize on the first sample with the server's pool, and POSTs a JSON report of
// what arrived to /__selftest. The browser test (Tests/MillraceTests/BrowserTests.swift) serves
// that path, waits for the report in real time and checks every value (gen serve answers it with
// a harmless 405). The report:
//   errors      uncaught errors, unhandled rejections, console.error calls, files of the page
//               (stylesheet, script, images) that failed to load or were answered with an error
//   csp         Content-Security-Policy violations (events, and the browser's reports, which also
//               cover those from before this script ran)
//   timeouts    the waits of the self-test that ran out
//   generate    parts, sizes (what each part decoded to in the browser: WxH, or the error), error
//   stream      before/after (GET /v1/streams/ID before and after the PATCH), patchStatus,
//               posted/postStatuses/inputsDistinct (frames sent), frames/decoded/sizes/distinct
//               (frames received; distinct by bytes), pixelChanges/maxPixelDiff (consecutive
//               received frames whose pixels differ; the largest mean absolute difference, 0–255),
//               framesAfterPatch, stopStatus (DELETE), outputEnd ("ended": the server ended the
//               output response), afterStop (status of GET /v1/streams/ID after Stop)
//   colorize    bytes, refs, width, height, canvas (WxH), error, method
function startSelftest() {
  const t = { errors: [], csp: [], timeouts: [], generate: [], inputs: [], frames: [], framesDone: Promise.resolve() };
  const text = (v) => (v instanceof Error ? `${v.name}: ${v.message}` : typeof v === "object" ? JSON.stringify(v) : String(v));
  window.addEventListener("error", (e) => {
    if (e.target && e.target !== window) {   // a resource (seen in the capture phase: these do not bubble)
      t.errors.push(`failed to load <${e.target.localName}> ${e.target.src || e.target.href || ""}`);
    } else {
      t.errors.push(`${e.message} at ${e.filename}:${e.lineno}:${e.colno}`);
    }
  }, true);
  window.addEventListener("unhandledrejection", (e) => t.errors.push("unhandled rejection: " + text(e.reason)));
  const consoleError = console.error;
  console.error = (...args) => { t.errors.push("console.error: " + args.map(text).join(" ")); consoleError.apply(console, args); };
  const seen = new Set();
  const violation = (directive, blocked, where) => {
    const line = `${directive} blocked ${blocked || "inline"} at ${where}`;
    if (!seen.has(line)) { seen.add(line); t.csp.push(line); }
  };
  document.addEventListener("securitypolicyviolation",
    (e) => violation(e.effectiveDirective, e.blockedURI, `${e.sourceFile}:${e.lineNumber}:${e.columnNumber}`));
  // The events of violations from before this script ran (in the HTML) have fired already; the
  // reports of the browser, buffered, include them.
  const fromReports = (reports) => { for (const r of reports) {
    violation(r.body.effectiveDirective, r.body.blockedURL, `${r.body.sourceFile}:${r.body.lineNumber}:${r.body.columnNumber}`);
  } };
  t.observer = window.ReportingObserver ? new ReportingObserver(fromReports, { types: ["csp-violation"], buffered: true }) : null;
  if (t.observer) t.observer.observe(); else t.errors.push("this browser has no ReportingObserver");
  // Files the page loads (stylesheet, script, images) that failed or were answered with an
  // error, also those that failed before this script ran; the API's answers (fetch) are checked
  // one by one by the self-test instead, and /favicon.ico is the browser's own request (the page
  // has no icon). responseStatus is 0 for a load that failed without a usable response (such as
  // a stylesheet answered with a JSON 404).
  const loads = (entries) => { for (const e of entries) {
    if (e.initiatorType === "fetch" || typeof e.responseStatus !== "number" || new URL(e.name).pathname === "/favicon.ico") continue;
    if (e.responseStatus < 200 || e.responseStatus >= 400) t.errors.push(`${e.name} (${e.initiatorType}) was answered ${e.responseStatus || "with no response"}`);
  } };
  t.loads = window.PerformanceObserver ? new PerformanceObserver((list) => loads(list.getEntries())) : null;
  if (t.loads) t.loads.observe({ type: "resource", buffered: true }); else t.errors.push("this browser has no PerformanceObserver");
  t.flushReports = () => {
    if (t.observer) fromReports(t.observer.takeRecords());
    if (t.loads) loads(t.loads.takeRecords());
  };

  // What a PNG decodes to in this browser: its size and RGBA pixels.
  t.decode = async (bytes) => {
    const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
    const c = new OffscreenCanvas(bitmap.width, bitmap.height), g = c.getContext("2d");
    g.drawImage(bitmap, 0, 0);
    bitmap.close();
    return { size: `${c.width}x${c.height}`, pixels: g.getImageData(0, 0, c.width, c.height).data };
  };
  const hash = (bytes) => { let h = 0x811c9dc5; for (const b of bytes) h = Math.imul(h ^ b, 0x01000193) >>> 0; return h.toString(16) + ":" + bytes.length; };
  t.generatePart = (png) => t.generate.push(t.decode(png).then((d) => d.size, (e) => "error: " + text(e)));
  t.streamInput = async (blob, status) => t.inputs.push({ status, hash: hash(new Uint8Array(await blob.arrayBuffer())) });
  // Received frames are decoded in order, each compared with the one before.
  let previous = null;
  t.streamPart = (png) => {
    const frame = { hash: hash(png), size: null, diff: null };
    t.frames.push(frame);
    t.framesDone = t.framesDone.then(() => t.decode(png)).then((d) => {
      frame.size = d.size;
      if (previous && previous.length === d.pixels.length) {
        let sum = 0;
        for (let i = 0; i < d.pixels.length; i++) sum += Math.abs(d.pixels[i] - previous[i]);
        frame.diff = sum / d.pixels.length;
      }
      previous = d.pixels;
    }, (e) => { frame.size = "error: " + text(e); });
  };
  return t;
}

async function autorun() {
  const t = selftest;
  const report = { errors: t.errors, csp: t.csp, timeouts: t.timeouts };
  const body = document.body.dataset;
  // Polls cond every 50 ms until it holds or ms have passed; a wait that runs out is reported.
  const until = async (what, cond, ms) => {
    const end = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > end) { t.timeouts.push(what); return false; }
      await new Promise((r) => setTimeout(r, 50));
    }
    return true;
  };
  const getStream = async (id) => {
    const r = await fetch("/v1/streams/" + id);
    const j = await r.json().catch(() => ({}));
    return { status: r.status, class: j.class, guidance: j.guidance, rcfg: j.rcfg };
  };
  try {
    await until("model info", () => info.classes.length > 0 && models.length > 0, 10000);

    const g = $("#gen-form");
    g.class.value = "0"; g.steps.value = "3"; g.count.value = "1";
    g.requestSubmit();
    await until("generate", () => body.generateFrames || body.generateError, 30000);
    report.generate = { parts: +(body.generateFrames || 0), error: body.generateError || null, sizes: await Promise.all(t.generate) };

    const s = $("#stream-form");
    s.fps.value = "5"; s.filter.checked = false; s.class.value = "0"; s.guidance.value = "3"; s.rcfg.value = "full";
    $("#stream-input").value = "clip";
    s.requestSubmit();
    const frames = () => +(body.streamFrames || 0);
    await until("3 stream frames", () => frames() >= 3, 30000);
    const id = streamId;
    const stream = report.stream = { before: id ? await getStream(id) : null };
    // A live change while it runs, as a user makes it: another class and guidance scale.
    const shown = frames();
    delete body.streamPatchStatus;
    s.guidance.value = "2.5";
    s.class.value = "1";
    s.class.dispatchEvent(new Event("change", { bubbles: true }));
    await until("PATCH", () => body.streamPatchStatus, 10000);
    stream.patchStatus = body.streamPatchStatus ? +body.streamPatchStatus || body.streamPatchStatus : null;
    stream.after = id ? await getStream(id) : null;
    await until("2 stream frames after the PATCH", () => frames() >= shown + 2, 30000);
    stream.framesAfterPatch = frames() - shown;
    // Stop, as a user does.
    $("#stream-stop").click();
    await until("Stop", () => body.streamOutputEnd, 15000);
    stream.stopStatus = body.streamStopStatus ? +body.streamStopStatus || body.streamStopStatus : null;
    stream.outputEnd = body.streamOutputEnd || null;
    stream.afterStop = id ? (await getStream(id)).status : null;
    await t.framesDone;
    const posted = t.inputs.filter((i) => i.status === 202).length;
    Object.assign(stream, {
      posted, postStatuses: [...new Set(t.inputs.map((i) => i.status))],
      inputsDistinct: new Set(t.inputs.map((i) => i.hash)).size,
      frames: t.frames.length,
      decoded: t.frames.filter((f) => /^\d+x\d+$/.test(f.size)).length,
      sizes: [...new Set(t.frames.map((f) => f.size))],
      distinct: new Set(t.frames.map((f) => f.hash)).size,
      pixelChanges: t.frames.filter((f) => f.diff > 0).length,
      maxPixelDiff: Math.max(0, ...t.frames.map((f) => f.diff || 0)),
    });

    await until("samples", () => $("#color-sample").options.length > 1, 10000);
    $("#color-sample").selectedIndex = 1;
    $("#color-form").requestSubmit();
    await until("colorize", () => body.colorizeBytes || body.colorizeError, 30000);
    report.colorize = { bytes: +(body.colorizeBytes || 0), refs: +(body.colorizeRefs || 0), width: +(body.colorizeWidth || 0),
                        height: +(body.colorizeHeight || 0), canvas: body.colorizeCanvas || null, error: body.colorizeError || null,
                        method: body.colorizeMethod || null };
    report.autorun = "done";
  } catch (e) {
    t.errors.push("self-test: " + (e && e.stack || e));
    report.autorun = "failed";
  }
  t.flushReports();
  status("self-test " + report.autorun);
  await fetch("/__selftest", { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify(report) }).catch(() => {});
}
if (selftest) autorun();
