// Millrace page: plain JavaScript, no build step.
// Multipart PNG streams are read with fetch() and split into parts here, then each part is shown
// through a blob URL. That works the same in Chromium and Firefox (Firefox does not render
// multipart/x-mixed-replace reliably in <img>). The colorize response is multipart/form-data,
// which both browsers parse themselves with Response.formData().
"use strict";

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
  for (const sel of ["#gen-class", "#stream-class"]) {
    j.classes.forEach((name, i) => {
      const o = document.createElement("option");
      o.value = String(i); o.textContent = name;
      $(sel).appendChild(o);
    });
  }
  $("#gen-form").guidance.value = j.default_guidance;
  status("ready: " + j.classes.length + " classes");
  if (!j.reference_pool_images) {
    $("#color-status").textContent = "The server has no reference pool: upload one or more reference images to colorize.";
  }
}).catch((e) => status("cannot reach the server: " + e));

// --- Generate ---
$("#gen-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const q = new URLSearchParams({ class: f.class.value, steps: f.steps.value, guidance: f.guidance.value,
                                  count: f.count.value, seed: f.seed.value, schedule: f.schedule.value,
                                  source: f.source.value, upscale: "4" });
  $("#gen-progress").textContent = "generating…";
  let parts = 0;
  try {
    const r = await fetch("/v1/generate/stream?" + q);
    if (!r.ok) throw new Error((await r.json()).error);
    await readMultipart(r, (png) => {
      parts++;
      showPNG($("#gen-image"), png);
      $("#gen-progress").textContent = parts <= +f.steps.value - 1 ? `step ${parts} of ${f.steps.value}` : "done";
    });
    $("#gen-progress").textContent = `done: ${parts} frames`;
    document.body.dataset.generateFrames = String(parts);
  } catch (e) {
    $("#gen-progress").textContent = "error: " + e.message;
  }
});

// --- Stream ---
let streamId = null, sendTimer = null, outputAbort = null, statsTimer = null, clipFrame = 0;
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

async function nextInputFrame() {
  const kind = $("#stream-input").value;
  if (kind === "clip" || kind === "still") {
    const name = kind === "clip" ? "moving" : "still";
    const img = new Image();
    img.src = `/clips/${name}/frame-${String(clipFrame % 120).padStart(3, "0")}.png`;
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

async function stopStream() {
  clearInterval(sendTimer); clearInterval(statsTimer);
  if (outputAbort) outputAbort.abort();
  if (streamId) await fetch("/v1/streams/" + streamId, { method: "DELETE" }).catch(() => {});
  streamId = null;
  $("#stream-start").disabled = false; $("#stream-stop").disabled = true;
}
$("#stream-stop").addEventListener("click", stopStream);

$("#stream-form").addEventListener("change", async (ev) => {
  if (!streamId || !["class", "rcfg", "guidance", "filter"].includes(ev.target.name)) return;
  const f = $("#stream-form");
  await fetch("/v1/streams/" + streamId, { method: "PATCH", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ class: f.class.value, rcfg: f.rcfg.value, guidance: +f.guidance.value, filter: f.filter.checked }) });
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
  const r = await fetch("/v1/streams", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ class: f.class.value, strength: +f.strength.value, steps: +f.steps.value,
                           rcfg: f.rcfg.value, guidance: +f.guidance.value, filter: f.filter.checked, size: 256 }) });
  const j = await r.json();
  if (!r.ok) { status("stream: " + j.error); return; }
  streamId = j.id;
  $("#stream-start").disabled = true; $("#stream-stop").disabled = false;
  let shown = 0; const t0 = performance.now();
  outputAbort = new AbortController();
  fetch(`/v1/streams/${streamId}/output`, { signal: outputAbort.signal })
    .then((resp) => readMultipart(resp, (png) => {
      shown++; showPNG($("#stream-image"), png);
      document.body.dataset.streamFrames = String(shown);
      $("#stream-stats").dataset.fps = (shown / ((performance.now() - t0) / 1000)).toFixed(1);
    }, outputAbort.signal)).catch(() => {});
  sendTimer = setInterval(async () => {
    const blob = await nextInputFrame();
    const sent = performance.now();
    const resp = await fetch(`/v1/streams/${streamId}/frames`, { method: "POST", headers: { "Content-Type": "image/png" }, body: blob }).catch(() => null);
    if (resp) $("#stream-stats").dataset.latency = (performance.now() - sent).toFixed(0);
  }, 1000 / Math.max(1, +f.fps.value));
  statsTimer = setInterval(async () => {
    if (!streamId) return;
    const s = await (await fetch("/v1/streams/" + streamId)).json();
    const el = $("#stream-stats");
    el.textContent = `output ${el.dataset.fps || 0} fps · post latency ${el.dataset.latency || "-"} ms · in ${s.frames_in} · processed ${s.processed} · skipped ${s.skipped} · dropped ${s.dropped} · errors ${s.errors}`;
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
    const r = await fetch("/v1/colorize?references=1", { method: "POST", body: form });
    if (!r.ok) throw new Error((await r.json().catch(() => ({ error: r.statusText }))).error);
    const parts = await r.formData();
    const result = parts.get("image"), canvas = parts.get("canvas");
    const info = JSON.parse(parts.get("references"));
    showBlob($("#color-canvas"), canvas);
    showBlob($("#color-result"), result);
    await $("#color-result").decode();
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
    say(`${info.width}×${info.height} colorized in ${ms} ms from ${info.references.length} patches of the ` +
        (info.pool === "uploaded" ? `${info.pool_images} uploaded reference(s)` : `server's pool (${info.pool_images} images)`));
    document.body.dataset.colorizeWidth = String($("#color-result").naturalWidth);
    document.body.dataset.colorizeRefs = String(info.references.length);
    document.body.dataset.colorizeBytes = String(result.size);
  } catch (e) {
    say("error: " + e.message);
    document.body.dataset.colorizeError = e.message;
  }
});

// --- self-test: index.html#autorun runs Generate, then a stream from the sample clip, then
// Colorize on the first sample with the server's pool, and records what arrived on <body
// data-generate-frames data-stream-frames data-colorize-bytes data-colorize-refs
// data-colorize-width data-autorun>. At the end it POSTs those attributes as JSON to
// /__selftest: the browser test (Tests/MillraceTests/BrowserTests.swift) serves that path and
// waits for the report in real time (gen serve answers it with a harmless 405).
async function autorun() {
  const until = async (cond, ms) => { const t = Date.now(); while (!cond() && Date.now() - t < ms) await new Promise((r) => setTimeout(r, 100)); };
  await until(() => info.classes.length > 0, 10000);
  const g = $("#gen-form");
  g.steps.value = "3"; g.count.value = "1";
  g.requestSubmit();
  await until(() => document.body.dataset.generateFrames, 60000);
  const s = $("#stream-form");
  s.fps.value = "5"; s.filter.checked = false;
  $("#stream-input").value = "clip";
  s.requestSubmit();
  await until(() => +(document.body.dataset.streamFrames || 0) >= 3, 60000);
  await stopStream();
  await until(() => $("#color-sample").options.length > 1, 10000);
  $("#color-sample").selectedIndex = 1;
  $("#color-form").requestSubmit();
  await until(() => document.body.dataset.colorizeBytes || document.body.dataset.colorizeError, 60000);
  document.body.dataset.autorun = "done";
  status("self-test done");
  await fetch("/__selftest", { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify({ ...document.body.dataset }) }).catch(() => {});
}
if (location.hash.includes("autorun")) autorun();
