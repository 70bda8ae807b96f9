"""QAT vs post-training quantization on Fashion-MNIST, fastq and torch.ao side by side, int8 to int2.

Run:  PYTHONPATH=. python bench/bench_qat_fashion_mnist.py [--epochs 3] [--qat-epochs 1] [--json out.json]
      [--threads 2] [--only binary,ternary,pow2,kmeans]   (row groups: int8 intx ao4 binary ternary pow2 kmeans; the fp32
      and control rows always run; --json then merges into an existing file, replacing rows by method)

Data: the Debian package dataset-fashion-mnist (idx files in /usr/share/datasets/fashion-mnist/;
``apt-get install -y dataset-fashion-mnist``), 60k train / 10k test images.
Network: conv(1->32, 3x3) ReLU maxpool, conv(32->64, 3x3) ReLU maxpool, fc(3136->128) ReLU, fc(128->10),
with torch.ao QuantStub/DeQuantStub at the ends (identity for float and fastq).
Protocol: train fp32 (Adam lr 1e-3, ``--epochs``); from those weights, every QAT run fine-tunes
``--qat-epochs`` (Adam, ``--qat-lr``, the same batch order), and everything is scored on the 10k
test images. The same fine-tune without quantization is a row of its own (the QAT rows train that
much longer than fp32: compare QAT with it, PTQ with fp32).
- fastq int8: PTQ static W8A8 (calibrated on 2,000 training images) and dynamic per-token W8A8;
  QAT with the same static config (calibrated first);
- fastq sub-8-bit weights (IntxWeightOnlyConfig family, float activations): int4 in groups
  (Int4WeightOnlyConfig(group_size=128), fitted to 112 on fc1 where 128 does not divide K=3136),
  int4 per channel, int2 asymmetric in groups of 32: PTQ (``quantize_``), and QAT (``prepare_qat_``,
  fine-tune, ``convert_``: real int4/int2 kernels) with scales from the weights and with LSQ scales. These configs take nn.Linear
  only: conv1/conv2 (4.4% of the weights) stay float, fc1/fc2 (95.6%) are quantized;
- torch.ao eager mode, int8 (x86 engine, its default qconfigs): PTQ (prepare, calibrate on the same
  2,000 images, convert) and QAT (fuse conv+relu / linear+relu, prepare_qat, fine-tune, convert);
- fastq codebook weights (``codebook`` configs, float activations; these take nn.Conv2d as well):
  binary (XNOR-Net sign * mean |W| per channel), ternary (TWN, threshold 0.7), power of two (4-bit
  codes: +-2^k or 0, 7 exponents per channel) on every conv and linear; k-means weight sharing, 16
  clusters per row (exact 1-D k-means) on conv2, fc1, fc2 (conv1's rows hold 9 weights, fewer than
  16 clusters: float). PTQ (``quantize_``) and QAT (``prepare_qat_``: binary / ternary / power of two
  re-encode each step with a straight-through gradient; k-means clusters once and trains the
  centroids; ``convert_``: real SharedWeight kernels);
- torch.ao at 4 bits: FakeQuantize weights per channel, symmetric, restricted to [-8, 7] (the grid of
  fastq's symmetric int4: step amax / 7.5), (a) on every conv and linear with 8-bit activations
  (quint8 [0, 255]), (b) on fc1/fc2 only, weight-only (fastq's layer coverage). torch.ao has no
  4-bit CPU kernels, so its 4-bit models are scored fake-quantized (observers frozen, float math).
  PTQ = prepare_qat, observe the 2,000 calibration images, freeze; QAT = the same fine-tune.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastq  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist")


def load_idx(name: str) -> np.ndarray:
    path = DATA / name
    if not path.exists():
        raise SystemExit(f"{path} missing: apt-get install -y dataset-fashion-mnist")
    raw = gzip.open(path).read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def dataset(split: str):
    prefix = "train" if split == "train" else "t10k"
    x = torch.from_numpy(load_idx(f"{prefix}-images-idx3-ubyte.gz").copy()).float().div(255).unsqueeze(1)
    y = torch.from_numpy(load_idx(f"{prefix}-labels-idx1-ubyte.gz").copy()).long()
    return (x - 0.2860) / 0.3530, y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv1, self.relu1 = nn.Conv2d(1, 32, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(32, 64, 3, padding=1), nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.relu3 = nn.Linear(64 * 7 * 7, 128), nn.ReLU()
        self.fc2 = nn.Linear(128, 10)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.pool(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(torch.flatten(x, 1)))
        return self.dequant(self.fc2(x))


def train(model, data, epochs: float, lr: float, batch: int = 128, seed: int = 0) -> float:
    x, y = data
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    steps = int(epochs * len(x) / batch)
    order = torch.cat([torch.randperm(len(x), generator=g) for _ in range(int(epochs) + 1)])
    for s in range(steps):
        idx = order[s * batch:(s + 1) * batch]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


@torch.no_grad()
def accuracy(model, data, batch: int = 1000) -> float:
    model.eval()
    x, y = data
    right = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * right / len(x)


def ao_fused(model, qat: bool):
    fuse = torch.ao.quantization.fuse_modules_qat if qat else torch.ao.quantization.fuse_modules
    m = copy.deepcopy(model).train(qat)
    return fuse(m, [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"]])


def ao_4bit(model, linears_only: bool):
    """torch.ao fake-quantized model with 4-bit per-channel symmetric weights ([-8, 7]); 8-bit
    activations on every layer, or (linears_only) fc1/fc2 only, weight-only. Observers on."""
    aoq = torch.ao.quantization
    weight = aoq.FakeQuantize.with_args(observer=aoq.MovingAveragePerChannelMinMaxObserver, quant_min=-8, quant_max=7,
                                        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    act = aoq.FakeQuantize.with_args(observer=aoq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                     dtype=torch.quint8, qscheme=torch.per_tensor_affine)
    m = ao_fused(model, qat=True)
    if linears_only:
        qconfig = aoq.QConfig(activation=nn.Identity, weight=weight)
        m.fc1.qconfig = m.fc2.qconfig = qconfig
    else:
        m.qconfig = aoq.QConfig(activation=act, weight=weight)
    return aoq.prepare_qat(m, inplace=True)


def ao_freeze(model):
    """Stop the fake quantizers' observers (scales fixed) and switch to eval."""
    model.apply(torch.ao.quantization.disable_observer)
    return model.eval()


def coverage(model) -> dict:
    """Which layers fastq quantized (with their format) and which it left float (with the reason)."""
    s = fastq.summary(model)
    return {"quantized": {l.name: f"{l.type} {l.detail}" for l in s.layers if l.quantized},
            "float": {l.name: l.note or "" for l in s.layers if not l.quantized and l.type in ("Conv2d", "Linear")}}


GROUPS = ("int8", "intx", "ao4", "binary", "ternary", "pow2", "kmeans")


def codebook_configs() -> list:
    """(group, row name, config) of the codebook rows."""
    return [("binary", "binary (XNOR-Net, per channel)", fastq.BinaryConfig()),
            ("ternary", "ternary (TWN 0.7, per channel)", fastq.TernaryConfig()),
            ("pow2", "power of two 4-bit (7 exponents + 0)", fastq.PowerOfTwoConfig()),
            ("kmeans", "k-means 16 per row (exact)", fastq.WeightSharingConfig(clusters=16, scope="row"))]


def write_json(path: Path, settings: dict, rows: list, only: list) -> None:
    """Write the results file, or merge a partial (--only) run into it: the file's fp32 and control rows
    stay (this run's own are kept with its settings under ``runs``, its rows name that run: compare
    them with their own run's baselines), other rows replace those of the same method or are added."""
    old = json.loads(path.read_text()) if path.exists() else {}
    if set(only) == set(GROUPS) or not old:
        path.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
        return
    runs = old.get("runs", [])
    runs.append({"only": only, **settings, "fp32_acc": rows[0]["test_acc"], "control_acc": rows[1]["test_acc"]})
    new = {r["method"]: {**r, "run": len(runs) - 1} for r in rows[2:]}
    merged = [new.pop(r["method"], r) for r in old["rows"]] + list(new.values())
    path.write_text(json.dumps({"settings": old["settings"], "runs": runs, "rows": merged}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--qat-epochs", type=float, default=1)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--json", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(GROUPS),
                    help=f"comma-separated row groups from {GROUPS} (fp32 and the control always run)")
    args = ap.parse_args()
    only = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = sorted(set(only) - set(GROUPS))
    if unknown:
        ap.error(f"--only: unknown row groups {unknown}; choose from {GROUPS}")
    t_start = time.perf_counter()
    warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_set, test_set = dataset("train"), dataset("test")
    calib = [train_set[0][i:i + 250] for i in range(0, 2000, 250)]
    rows = []
    qat_epochs = f"{args.qat_epochs:g} epoch"

    def report(method: str, model, secs=None, **extra):
        acc = accuracy(model, test_set)
        rows.append({"method": method, "test_acc": acc, "train_s": secs, **extra})
        print(f"  {method}: {acc:.2f}%" + (f" ({secs:.0f} s of training)" if secs else ""), flush=True)

    def finetune(model) -> float:
        return train(model, train_set, args.qat_epochs, args.qat_lr, seed=1)

    fp32 = Net()
    secs = train(fp32, train_set, args.epochs, 1e-3)
    report(f"fp32 ({args.epochs:g} epochs)", fp32, secs)
    control = copy.deepcopy(fp32)  # QAT rows train this much longer than fp32: the same fine-tune, unquantized
    secs = finetune(control)
    report(f"fp32 + the same fine-tune ({qat_epochs}, no quantization)", control, secs)

    # ---- int8: fastq and torch.ao ----
    if "int8" in only:
        cfg = fastq.Int8StaticConfig(observer="minmax")
        ptq = copy.deepcopy(fp32)
        fastq.calibrate(ptq, calib, cfg, progress=False)
        report("fastq PTQ static W8A8", fastq.quantize_(ptq, cfg))
        report("fastq PTQ dynamic W8A8", fastq.quantize_(copy.deepcopy(fp32), fastq.Int8DynamicConfig()))

        qat = copy.deepcopy(fp32)
        fastq.calibrate(qat, calib, cfg, progress=False)
        fastq.prepare_qat_(qat, cfg)
        secs = finetune(qat)
        qat_acc_fake = accuracy(qat, test_set)
        fastq.convert_(qat)
        report(f"fastq QAT static W8A8 ({qat_epochs})", qat, secs, qat_forward_acc=qat_acc_fake)

        torch.backends.quantized.engine = "x86"
        ao_ptq = ao_fused(fp32, qat=False).eval()
        ao_ptq.qconfig = torch.ao.quantization.get_default_qconfig("x86")
        torch.ao.quantization.prepare(ao_ptq, inplace=True)
        with torch.no_grad():
            for b in calib:
                ao_ptq(b)
        report("torch.ao PTQ static int8 (x86)", torch.ao.quantization.convert(ao_ptq))

        ao_qat = ao_fused(fp32, qat=True)
        ao_qat.qconfig = torch.ao.quantization.get_default_qat_qconfig("x86")
        torch.ao.quantization.prepare_qat(ao_qat, inplace=True)
        secs = finetune(ao_qat)
        report(f"torch.ao QAT int8 (x86, {qat_epochs})", torch.ao.quantization.convert(ao_qat.eval()), secs)

    # ---- sub-8-bit weights: fastq (real kernels) ----
    if "intx" in only:
        intx = [("int4 weight-only g128 (fc1: 112)", fastq.quantization.Int4WeightOnlyConfig(group_size=128)),
                ("int4 weight-only per channel", fastq.quantization.Int4WeightOnlyConfig(group_size=None)),
                ("int2 weight-only g32 asym", fastq.quantization.IntxWeightOnlyConfig(bits=2, group_size=32,
                                                                                      symmetric=False))]
        for name, icfg in intx:
            ptq = fastq.quantize_(copy.deepcopy(fp32), icfg)
            report(f"fastq PTQ {name}", ptq, layers=coverage(ptq))
            for lsq in (False, True):
                qat = copy.deepcopy(fp32)
                fastq.prepare_qat_(qat, icfg, lsq=lsq)
                secs = finetune(qat)
                fastq.convert_(qat)
                report(f"fastq QAT {name}{' LSQ' if lsq else ''} ({qat_epochs})", qat, secs, layers=coverage(qat))

    # ---- torch.ao at 4 bits (fake-quantized: no int4 CPU kernels) ----
    if "ao4" in only:
        for linears_only, name in ((False, "W4 per channel [-8, 7] + A8, all layers"),
                                   (True, "W4 per channel [-8, 7] weight-only, fc1/fc2")):
            ao = ao_4bit(fp32, linears_only).eval()
            with torch.no_grad():
                for b in calib:
                    ao(b)
            report(f"torch.ao PTQ {name} (fake-quantized)", ao_freeze(ao))
            ao = ao_4bit(fp32, linears_only)
            secs = finetune(ao)
            report(f"torch.ao QAT {name} ({qat_epochs}, fake-quantized)", ao_freeze(ao), secs)

    # ---- codebook weights: fastq (real kernels), convolutions included ----
    for group, name, ccfg in codebook_configs():
        if group not in only:
            continue
        ptq = fastq.quantize_(copy.deepcopy(fp32), ccfg)
        report(f"fastq PTQ {name}", ptq, layers=coverage(ptq))
        qat = copy.deepcopy(fp32)
        fastq.prepare_qat_(qat, ccfg)
        secs = finetune(qat)
        qat_acc_fake = accuracy(qat, test_set)
        fastq.convert_(qat)
        report(f"fastq QAT {name} ({qat_epochs})", qat, secs, qat_forward_acc=qat_acc_fake, layers=coverage(qat))

    wall = time.perf_counter() - t_start
    print("\n| method | test accuracy (%) | vs fp32 | vs fp32 + fine-tune | training time (s) |")
    print("|---|--:|--:|--:|--:|")
    for r in rows:
        secs = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"
        print(f"| {r['method']} | {r['test_acc']:.2f} | {r['test_acc'] - rows[0]['test_acc']:+.2f} | "
              f"{r['test_acc'] - rows[1]['test_acc']:+.2f} | {secs} |")
    print(f"\nwall time {wall:.0f} s ({torch.get_num_threads()} threads)")
    if args.json:
        settings = {"fp32_epochs": args.epochs, "qat_epochs": args.qat_epochs, "qat_lr": args.qat_lr,
                    "qat_steps": int(args.qat_epochs * len(train_set[0]) / 128), "batch": 128,
                    "calibration_images": 2000, "test_images": len(test_set[0]),
                    "threads": torch.get_num_threads(), "wall_s": round(wall, 1), "torch": torch.__version__,
                    "torch_ao_4bit": "fake-quantized (no int4 CPU kernels in torch.ao)",
                    "fastq_sub8bit_layers": "nn.Linear only (fc1, fc2); conv1/conv2 float",
                    "fastq_codebook_layers": "binary / ternary / power of two: conv1, conv2, fc1, fc2; k-means 16 "
                                             "per row: conv2, fc1, fc2 (conv1's 9-weight rows < 16 clusters)"}
        write_json(Path(args.json), settings, rows, only)


if __name__ == "__main__":
    main()
