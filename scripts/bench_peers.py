#!/usr/bin/env python3
"""Millrace against its peers on this CPU: ONNX Runtime and PyTorch (diffusers' UNet2DModel).

Run through scripts/bench-peers.sh, which makes the virtual environment this needs. For each
model folder the same safetensors weights are loaded into diffusers' UNet2DModel and exported
to ONNX (dynamic batch axis). Then, R rounds, interleaved so that machine noise hits every
runtime alike:

  for each model:  Millrace forward (gen)  ->  ONNX Runtime forward  ->  PyTorch forward
  training:        `gen bench train`       ->  PyTorch training step (same loss and optimiser)

Each figure of a round is measured the way `gen bench` measures (one warm-up call, then calls
until 0.6 s and at least 3 calls have passed, the fastest kept); the figure reported is the
median over the rounds. Every runtime gets 2 threads. One JSON object goes to stdout (and to
--out), progress to stderr.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "assets/models/emoji32"
# The reference UNet of `gen bench kernels` (Sources/gen/Bench.swift, benchUNetConfig): 32×32,
# [64, 128, 256], 2 layers per block, attention at 8×8 (head dim 32), 32 norm groups, 10 class
# embeddings; the shipped config.json otherwise (same block types). Written once with random
# weights, because gen cannot write a model folder for it.
BENCH_DIR = REPO / ".build-peers/models/bench-unet"
BENCH_CHANGES = {"block_out_channels": [64, 128, 256], "layers_per_block": 2, "norm_num_groups": 32}
ONNX_DIR = REPO / ".build-peers/onnx"
THREADS = 2


def log(msg):
    print(f"[bench-peers {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def best_time(fn, min_seconds=0.6, min_reps=3):
    """gen's bestTime: one warm-up call, then repeat until min_seconds and min_reps; fastest call."""
    fn()
    best = float("inf")
    reps = 0
    start = time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best


def run_json(cmd):
    """Runs a command whose stdout is one JSON object; its stderr (progress) passes through."""
    log("$ " + " ".join(str(c) for c in cmd))
    out = subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out)


def cpu_snapshot():
    """(wall s, busy CPU s of the whole machine, CPU s of this process and its reaped children)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError):
        busy = None
    t = os.times()
    return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system


def other_cpu_share(a, b):
    """Share of the machine's CPU time between snapshots a and b used by other processes."""
    if a[1] is None or b[1] is None:
        return None
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / ((b[0] - a[0]) * (os.cpu_count() or 1)))


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rnd(x, n=3):
    return None if x is None else round(x, n)


# ---------------------------------------------------------------- machine and versions

def machine_info(gen):
    info = {"cpu_model": None, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}
    try:
        for line in subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info["env"] = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                                  "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    import diffusers
    import numpy
    import onnx
    import onnxruntime
    import safetensors
    import torch
    info["versions"] = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                        "diffusers": diffusers.__version__, "onnx": onnx.__version__,
                        "safetensors": safetensors.__version__, "numpy": numpy.__version__}
    try:
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        pass
    info["gen"] = str(gen)
    return info


# ---------------------------------------------------------------- models

def ensure_bench_model():
    """The kernel benchmark's UNet as a model folder (random weights, seed 1), made once."""
    if (BENCH_DIR / "config.json").exists() and (BENCH_DIR / "diffusion_pytorch_model.safetensors").exists():
        return BENCH_DIR
    import torch
    from diffusers import UNet2DModel
    cfg = json.loads((SHIPPED / "config.json").read_text())
    cfg.update(BENCH_CHANGES)
    torch.manual_seed(1)
    model = UNet2DModel.from_config(cfg)
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(BENCH_DIR), safe_serialization=True)
    log(f"wrote the bench-config model folder {BENCH_DIR}")
    return BENCH_DIR


def load_unet(folder):
    """diffusers' UNet2DModel from a Millrace/diffusers model folder, every weight matched (strict)."""
    import safetensors.torch
    from diffusers import UNet2DModel
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    model = UNet2DModel.from_config(cfg)
    for name in ("model.safetensors", "diffusion_pytorch_model.safetensors"):  # gen's order
        if (folder / name).exists():
            model.load_state_dict(safetensors.torch.load_file(str(folder / name)), strict=True)
            break
    else:
        raise SystemExit(f"no weights in {folder}")
    return model.eval(), cfg


def inputs(cfg, batch, seed=3):
    """Noise at t = 500 (of 1000) and class 0, as `gen bench serve` times its forward."""
    import torch
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"], generator=g)
    t = torch.full((batch,), 500.0)
    c = torch.zeros(batch, dtype=torch.long)
    return x, t, c


def wrapped(model):
    import torch

    class Forward(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, class_labels):
            return self.unet(sample, timestep, class_labels=class_labels).sample

    return Forward(model).eval()


def export_onnx(model, cfg, path):
    """ONNX with a dynamic batch axis: the TorchScript exporter if this torch still has it,
    else the dynamo exporter."""
    import warnings
    import torch
    net = wrapped(model)
    args = inputs(cfg, 2)
    names = ["sample", "timestep", "class_labels"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, args, str(path), dynamo=False, opset_version=17, input_names=names,
                              output_names=["velocity"],
                              dynamic_axes={n: {0: "batch"} for n in names + ["velocity"]})
            return "torchscript"
        except Exception as e:  # noqa: BLE001 -- any failure: try the other exporter
            log(f"TorchScript ONNX export failed ({type(e).__name__}: {e}); trying dynamo=True")
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(net, args, str(path), dynamo=True, input_names=names, output_names=["velocity"],
                          dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
        return "dynamo"


def ort_session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class Peer:
    """One model folder in PyTorch and ONNX Runtime."""

    def __init__(self, name, folder):
        import hashlib
        import torch
        self.name, self.folder = name, Path(folder)
        self.model, self.cfg = load_unet(folder)
        self.net = wrapped(self.model)
        ONNX_DIR.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        for f in sorted(self.folder.glob("*.safetensors")) + [self.folder / "config.json"]:
            h.update(f.read_bytes())
        h.update(torch.__version__.encode())
        self.onnx_path = ONNX_DIR / f"{name}-{h.hexdigest()[:12]}.onnx"
        if self.onnx_path.exists():
            self.exporter = "cached"
        else:
            log(f"{name}: exporting ONNX to {self.onnx_path}")
            self.exporter = export_onnx(self.model, self.cfg, self.onnx_path)
        self.session = ort_session(self.onnx_path)
        self.feeds = {}

    def agreement(self, batch=2):
        """Max |ORT − torch| / max |torch| on one batch (float32 both)."""
        import numpy as np
        import torch
        x, t, c = inputs(self.cfg, batch, seed=11)
        with torch.inference_mode():
            ref = self.net(x, t, c).numpy()
        out = self.session.run(None, {"sample": x.numpy(), "timestep": t.numpy(), "class_labels": c.numpy()})[0]
        return float(np.abs(out - ref).max() / np.abs(ref).max())

    def torch_ms(self, batch, min_seconds):
        import torch
        x, t, c = inputs(self.cfg, batch)
        with torch.inference_mode():
            s = best_time(lambda: self.net(x, t, c), min_seconds=min_seconds)
        return s * 1000 / batch

    def ort_ms(self, batch, min_seconds):
        x, t, c = inputs(self.cfg, batch)
        feed = {"sample": x.numpy(), "timestep": t.numpy(), "class_labels": c.numpy()}
        s = best_time(lambda: self.session.run(None, feed), min_seconds=min_seconds)
        return s * 1000 / batch


# ---------------------------------------------------------------- Millrace through gen

def gen_has_bench(gen, name):
    """Whether `gen bench --help` lists the subcommand (an unknown one still prints help, exit 0)."""
    r = subprocess.run([str(gen), "bench", "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return any(line.split()[:1] == [name] for line in r.stdout.splitlines() if line.startswith("  "))


def millrace_forward(gen, folder, batches, has_forward):
    """ms per sample at each batch. Wanted: `gen bench forward --model DIR --batch 1,2,4,16 --json`
    printing {"ms_per_sample": {"1": ..., ...}}. Until gen has it, `gen bench serve` does: it
    times the model's forward per row at batch 1, 2, 4, 8, 16 and 32 before its service figures
    (kept short here: 0.2 s each, one stream and one client)."""
    if has_forward:
        out = run_json([gen, "bench", "forward", "--model", folder, "--batch", ",".join(map(str, batches)),
                        "--json", "--threads", THREADS])
        per = out["ms_per_sample"]
        source = "gen bench forward"
    else:
        out = run_json([gen, "bench", "serve", "--model", folder, "--json", "--seconds", "0.2",
                        "--streams", "1", "--clients", "1", "--threads", THREADS])
        per = out["forward_ms_per_row"]
        source = "gen bench serve (forward_ms_per_row)"
    return {b: per.get(str(b)) for b in batches}, source, out.get("machine")


# ---------------------------------------------------------------- training

class TorchTrainer:
    """A Millrace training step in PyTorch (docs/TRAINING.md, Sources/Millrace/Train): random images
    in [−1, 1] (4 × batch, labels n mod classes, as `gen bench train`), a class drawn image,
    horizontal flip with probability ½, t ~ U(0, 1), x0 ~ N(0, I), x_t = t·x1 + (1 − t)·x0,
    target x1 − x0, labels replaced by the null class with probability 0.1, timestep 1000·t,
    loss mean((v − target)²); AdamW (β 0.9, 0.999, ε 1e-8, lr 2e-4, weight decay 0.01 on tensors
    of rank ≥ 2 only), gradient clipping at global norm 1, EMA update with decay
    min(0.999, (1+n)/(10+n)). The learning-rate warm-up is left out (it costs nothing)."""

    def __init__(self, folder, batch):
        import torch
        from diffusers import UNet2DModel
        cfg = json.loads((Path(folder) / "config.json").read_text())
        self.classes = max((cfg.get("num_class_embeds") or 2) - 1, 1)
        cfg["num_class_embeds"] = self.classes + 1
        torch.manual_seed(0)
        self.model = UNet2DModel.from_config(cfg).train()
        self.batch, self.size = batch, cfg["sample_size"]
        n = 4 * batch
        self.images = torch.rand(n, 3, self.size, self.size) * 2 - 1
        self.labels = torch.arange(n) % self.classes
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.ndim >= 2]
        other = [p for p in self.params if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                      {"params": other, "weight_decay": 0.0}],
                                     lr=2e-4, betas=(0.9, 0.999), eps=1e-8)
        self.ema = [p.detach().clone() for p in self.params]
        self.steps = 0

    def step(self):
        import torch
        b = self.batch
        idx = torch.randint(len(self.labels), (b,))
        x1 = self.images[idx]
        flip = (torch.rand(b) < 0.5).view(b, 1, 1, 1)
        x1 = torch.where(flip, x1.flip(-1), x1)
        t = torch.rand(b)
        labels = torch.where(torch.rand(b) < 0.1, torch.full((b,), self.classes), self.labels[idx])
        x0 = torch.randn_like(x1)
        tt = t.view(b, 1, 1, 1)
        xt = tt * x1 + (1 - tt) * x0
        target = x1 - x0
        pred = self.model(xt, t * 1000, class_labels=labels).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.steps += 1
        decay = min(0.999, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1 - decay)
        return loss.item()

    def images_per_second(self, steps):
        """As `gen bench train`: one warm-up step, then the fastest of `steps` steps."""
        self.step()
        best = float("inf")
        for _ in range(steps):
            t0 = time.perf_counter()
            self.step()
            best = min(best, time.perf_counter() - t0)
        return self.batch / best, best * 1000


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick 1)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 1 round, batches 1 and 2, 2 training steps")
    ap.add_argument("--model", action="append", default=None,
                    help="model folder (repeatable); 'bench' = the kernel benchmark's UNet "
                         "(default: assets/models/emoji32 and bench)")
    ap.add_argument("--batches", default=None, help="inference batch sizes (default 1,2,4,16; --quick 1,2)")
    ap.add_argument("--train-model", default=str(SHIPPED), help="model folder whose config is trained")
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=None, help="timed training steps per round (default 8)")
    ap.add_argument("--no-train", action="store_true", help="inference only")
    ap.add_argument("--gen", default=os.environ.get("GEN", str(REPO / ".build/release/gen")),
                    help="the gen binary (default: $GEN or .build/release/gen)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args()

    rounds = a.rounds or (1 if a.quick else 5)
    batches = [int(b) for b in (a.batches or ("1,2" if a.quick else "1,2,4,16")).split(",")]
    train_steps = a.train_steps or (2 if a.quick else 8)
    min_seconds = 0.2 if a.quick else 0.6
    gen = Path(a.gen)
    if not os.access(gen, os.X_OK):
        raise SystemExit(f"bench-peers: no gen binary at {gen} (swift build -c release, or --gen PATH / GEN=PATH)")

    import torch
    torch.set_num_threads(THREADS)
    torch.set_num_interop_threads(1)

    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["scripts/bench-peers.sh"] + sys.argv[1:]),
              "rounds": rounds, "threads": THREADS, "batches": batches,
              "method": "per round: one warm-up call, then the fastest call of >= 3 calls and >= "
                        f"{min_seconds} s (gen's bestTime); reported: the median over the rounds; "
                        "runtimes interleaved within each round"}
    result["machine"] = machine_info(gen)
    result["notes"] = [
        "load_average counts this benchmark's own 2 threads: about 2 on an otherwise idle machine; "
        "other_cpu_share_per_round: the share of the machine's CPU time that other processes took",
        "best_round: the fastest round's figure, next to the median",
        "round_ratio_median: the median over the rounds of each round's own ratio (the runtimes of "
        "a round ran seconds apart, so a slow spell of the host that spans a round cancels out; "
        "the speedups above divide medians taken over different rounds)",
        "Millrace against diffusers numerically: not measured here (gen prints no raw model output); "
        "Tests/MillraceTests/DiffusersParityTests.swift compares them on fixtures",
        "torch: eager, float32, inference_mode; ONNX Runtime: CPU EP, ORT_ENABLE_ALL, intra-op 2, inter-op 1",
    ]

    # The machine's sgemm peak and Millrace's whole-UNet forward on the bench config, once.
    kern = run_json([gen, "bench", "kernels", "--json", "--threads", THREADS] + (["--quick"] if a.quick else []))
    result["machine"]["gen_machine"] = kern.get("machine")
    result["machine"]["sgemm_gflops"] = kern.get("sgemm_gflops")
    result["machine"]["sgemm_size"] = 512 if a.quick else 2048
    result["gen_bench_kernels_unet_forward"] = kern.get("unet_forward")

    names = a.model or [str(SHIPPED), "bench"]
    peers = []
    for m in names:
        folder = ensure_bench_model() if m == "bench" else Path(m).resolve()
        name = "bench-unet" if m == "bench" else folder.name
        info = run_json([gen, "info", folder, "--json"])  # gen must load it, too
        peer = Peer(name, folder)
        peer.info = {"path": os.path.relpath(folder, REPO), "parameters": info.get("parameters"),
                     "gflop_per_image": rnd(info.get("forward_flops_batch1", 0) / 1e9),
                     "block_out_channels": info.get("block_out_channels"),
                     "layers_per_block": info.get("layers_per_block"),
                     "onnx_exporter": peer.exporter, "onnx_file": os.path.relpath(peer.onnx_path, REPO),
                     "ort_vs_torch_max_rel_diff": peer.agreement()}
        log(f"{name}: ORT vs torch max relative difference {peer.info['ort_vs_torch_max_rel_diff']:.2e}")
        peers.append(peer)

    has_forward = gen_has_bench(gen, "forward")
    if not has_forward:
        log("gen has no `bench forward`: using the forward timing of `gen bench serve`")
    raw = {p.name: {"millrace": {b: [] for b in batches}, "ort": {b: [] for b in batches},
                    "torch": {b: [] for b in batches}} for p in peers}
    train_raw = {"millrace_images_s": [], "torch_images_s": [], "millrace_step_ms": [], "torch_step_ms": [],
                 "sgemm_gflops": []}
    trainer = None if a.no_train else TorchTrainer(a.train_model, a.train_batch)
    source = None
    result["load_average"] = {"start": [round(x, 2) for x in os.getloadavg()], "rounds": []}
    result["other_cpu_share_per_round"] = []
    for r in range(rounds):
        log(f"round {r + 1} of {rounds} (load average {os.getloadavg()[0]:.2f})")
        result["load_average"]["rounds"].append(round(os.getloadavg()[0], 2))
        snap = cpu_snapshot()
        for p in peers:
            ms, source, _ = millrace_forward(gen, p.folder, batches, has_forward)
            for b in batches:
                raw[p.name]["millrace"][b].append(ms[b])
            for b in batches:
                raw[p.name]["ort"][b].append(round(p.ort_ms(b, min_seconds), 3))
            for b in batches:
                raw[p.name]["torch"][b].append(round(p.torch_ms(b, min_seconds), 3))
            log(f"{p.name}: ms/sample " + ", ".join(
                f"b{b} millrace {raw[p.name]['millrace'][b][-1]} ort {raw[p.name]['ort'][b][-1]:.2f} "
                f"torch {raw[p.name]['torch'][b][-1]:.2f}" for b in batches))
        if trainer:
            tr = run_json([gen, "bench", "train", "--json", "--model", a.train_model, "--batch", a.train_batch,
                           "--steps", train_steps, "--threads", THREADS])
            train_raw["millrace_images_s"].append(tr["images_per_second"])
            train_raw["millrace_step_ms"].append(tr["step_ms"])
            train_raw["sgemm_gflops"].append(tr["sgemm_gflops"])
            train_raw["millrace_workers"] = tr.get("workers")
            ips, step_ms = trainer.images_per_second(train_steps)
            train_raw["torch_images_s"].append(round(ips, 2))
            train_raw["torch_step_ms"].append(round(step_ms, 1))
            log(f"training batch {a.train_batch}: millrace {tr['images_per_second']} images/s, torch {ips:.1f}")
        share = other_cpu_share(snap, cpu_snapshot())
        result["other_cpu_share_per_round"].append(rnd(share))
        if share is not None:
            log(f"round {r + 1}: other processes used {100 * share:.0f}% of the machine's CPU time")

    result["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    result["millrace_forward_source"] = source
    result["models"] = {}
    for p in peers:
        rows = []
        for b in batches:
            mm, oo, tt = (median(raw[p.name][k][b]) for k in ("millrace", "ort", "torch"))
            best = {k: min([x for x in raw[p.name][k][b] if x is not None], default=None)
                    for k in ("millrace", "ort", "torch")}
            rows.append({"batch": b, "millrace_ms": rnd(mm), "ort_ms": rnd(oo), "torch_ms": rnd(tt),
                         "millrace_speedup_vs_ort": rnd(oo / mm) if mm else None,
                         "millrace_speedup_vs_torch": rnd(tt / mm) if mm else None,
                         "best_round": {k + "_ms": rnd(v) for k, v in best.items()},
                         "round_ratio_median": {
                             peer: rnd(median([o / m for o, m in zip(raw[p.name][peer][b], raw[p.name]["millrace"][b])
                                               if o is not None and m]))
                             for peer in ("ort", "torch")}})
        result["models"][p.name] = dict(p.info, inference_ms_per_sample=rows,
                                        rounds_raw={k: {str(b): v for b, v in d.items()}
                                                    for k, d in raw[p.name].items()})
    if trainer:
        mi, ti = median(train_raw["millrace_images_s"]), median(train_raw["torch_images_s"])
        result["training"] = {"model": os.path.relpath(Path(a.train_model).resolve(), REPO), "batch": a.train_batch,
                              "timed_steps_per_round": train_steps,
                              "millrace_workers": train_raw.pop("millrace_workers", None),
                              "millrace_images_s": rnd(mi, 2), "torch_images_s": rnd(ti, 2),
                              "millrace_speedup": rnd(mi / ti),
                              "round_ratio_median": rnd(median([m / t for m, t in zip(train_raw["millrace_images_s"],
                                                                                      train_raw["torch_images_s"]) if t])),
                              "best_round": {"millrace_images_s": max(train_raw["millrace_images_s"]),
                                             "torch_images_s": max(train_raw["torch_images_s"])},
                              "rounds_raw": train_raw,
                              "sgemm_gflops_median": median(train_raw["sgemm_gflops"])}
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
        log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
