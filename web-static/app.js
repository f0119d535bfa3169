// Millrace page: plain JavaScript, no build step.
// Multipart PNG streams are read with fetch() and split into parts here, then each part is shown
// through a blob URL. That works the same in Chromium and Firefox (Firefox does not render
// multipart/x-mixed-replace reliably in <img>).
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
  const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
  const old = img.dataset.url;
  img.onload = () => { if (old) URL.revokeObjectURL(old); };
  img.dataset.url = url;
  img.src = url;
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

// --- self-test: index.html#autorun runs Generate, then a stream from the sample clip, and
// records what arrived on <body data-generate-frames data-stream-frames data-autorun>. The
// browser test (Tests/MillraceTests/BrowserTests.swift) reads these from the DOM.
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
  document.body.dataset.autorun = "done";
  status("self-test done");
}
if (location.hash.includes("autorun")) autorun();
