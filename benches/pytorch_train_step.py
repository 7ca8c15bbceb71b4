"""PyTorch baseline for benches/train.rs: one fine-tuning step of train_itm.py's math on the two
BERT-base towers of benches/pytorch_baseline.py (random weights, train mode, dropout 0.1):
symmetric in-batch NLL, backward, clip_grad_norm_(2.0), AdamW (eps 1e-8, no weight decay).

Usage: python benches/pytorch_train_step.py --out RESULT.json [--pairs 128] [--txt-len 40]
       [--boxes 36] [--steps 2] [--threads N] [--device cpu|cuda] [--bf16]
"""

import argparse
import json
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_baseline import ImageTower, TextTower  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--txt-len", type=int, default=40)
    ap.add_argument("--boxes", type=int, default=36)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="autocast the forward in bf16")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    txt, img = TextTower().to(dev).train(), ImageTower().to(dev).train()
    params = list(txt.parameters()) + list(img.parameters())
    opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    b = a.pairs
    ids = torch.randint(1000, 28000, (b, a.txt_len), device=dev)
    tmask = torch.ones(b, a.txt_len, dtype=torch.long, device=dev)
    feat = torch.rand(b, a.boxes, 2048, device=dev)
    pos = torch.rand(b, a.boxes, 7, device=dev)
    imask = torch.ones(b, a.boxes + 1, dtype=torch.long, device=dev)
    target = torch.arange(b, device=dev)

    def step():
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            t = txt(ids, tmask)
            i = img(feat, pos, imask)
        s = t.float() @ i.float().T
        loss = 0.5 * F.cross_entropy(s.T, target) + 0.5 * F.cross_entropy(s, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    per_step = (time.perf_counter() - t) / a.steps
    res = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": a.device,
        "pairs": b,
        "first_step_s": first,
        "s_per_step": per_step,
        "pairs_per_s": b / per_step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
