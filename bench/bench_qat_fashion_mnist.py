"""QAT vs post-training quantization on Fashion-MNIST, fastq and torch.ao side by side.

Run:  PYTHONPATH=. python bench/bench_qat_fashion_mnist.py [--epochs 3] [--qat-epochs 1] [--json out.json]

Data: the Debian package dataset-fashion-mnist (idx files in /usr/share/datasets/fashion-mnist/;
``apt-get install -y dataset-fashion-mnist``), 60k train / 10k test images.
Network: conv(1->32, 3x3) ReLU maxpool, conv(32->64, 3x3) ReLU maxpool, fc(3136->128) ReLU, fc(128->10),
with torch.ao QuantStub/DeQuantStub at the ends (identity for float and fastq).
Protocol: train fp32 (Adam, ``--epochs``); from those weights
- fastq PTQ: static W8A8 (calibrated on 2,000 training images) and dynamic per-token W8A8;
- fastq QAT: ``prepare_qat_`` with the same static config (calibrated first), ``--qat-epochs`` of
  fine-tuning (Adam, lr 1e-4), ``convert_``;
- torch.ao eager mode (x86 engine, its default qconfigs): PTQ (prepare, calibrate on the same 2,000
  images, convert) and QAT (fuse conv+relu / linear+relu, prepare_qat, the same fine-tune, convert);
all scored on the 10k test images. int8 is the lowest-bit config fastq has today; an int4 config
plugs into the same QAT loop through ``fastq.quantization.register_qat``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import sys
import time
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--qat-epochs", type=float, default=1)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    train_set, test_set = dataset("train"), dataset("test")
    calib = [train_set[0][i:i + 250] for i in range(0, 2000, 250)]
    rows = []

    def report(method: str, model, secs=None):
        acc = accuracy(model, test_set)
        rows.append({"method": method, "test_acc": acc, "train_s": secs})
        print(f"  {method}: {acc:.2f}%" + (f" ({secs:.0f} s of training)" if secs else ""), flush=True)

    fp32 = Net()
    secs = train(fp32, train_set, args.epochs, 1e-3)
    report(f"fp32 ({args.epochs:g} epochs)", fp32, secs)

    cfg = fastq.Int8StaticConfig(observer="minmax")
    ptq = copy.deepcopy(fp32)
    fastq.calibrate(ptq, calib, cfg, progress=False)
    report("fastq PTQ static W8A8", fastq.quantize_(ptq, cfg))
    report("fastq PTQ dynamic W8A8", fastq.quantize_(copy.deepcopy(fp32), fastq.Int8DynamicConfig()))

    qat = copy.deepcopy(fp32)
    fastq.calibrate(qat, calib, cfg, progress=False)
    fastq.prepare_qat_(qat, cfg)
    secs = train(qat, train_set, args.qat_epochs, 1e-4, seed=1)
    qat_acc_fake = accuracy(qat, test_set)
    fastq.convert_(qat)
    report(f"fastq QAT static W8A8 ({args.qat_epochs:g} epoch)", qat, secs)
    rows[-1]["qat_forward_acc"] = qat_acc_fake

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
    secs = train(ao_qat, train_set, args.qat_epochs, 1e-4, seed=1)
    report(f"torch.ao QAT int8 (x86, {args.qat_epochs:g} epoch)", torch.ao.quantization.convert(ao_qat.eval()), secs)

    print("\n| method | test accuracy (%) | training time (s) |")
    print("|---|--:|--:|")
    for r in rows:
        secs = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"
        print(f"| {r['method']} | {r['test_acc']:.2f} | {secs} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
