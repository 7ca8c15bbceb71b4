"""PyTorch anchors for `lightningdot bench` (scripts/gpu-check.sh runs both on the same GPU in
the same call): the same workloads, shapes, warm-up and timed iteration counts as the bench's
full run, on the towers of benches/pytorch_baseline.py and the pre-training model of
benches/pytorch_pretrain.py (random weights). Every iteration ends with a device
synchronisation, as on the Rust side. Writes one JSON whose `throughput` rows carry the same
`key`s as `lightningdot bench --json`.

bf16 (`--bf16`) is autocast (f32 master weights), as the bench's bf16 keeps f32 masters; f32
runs with PyTorch's defaults (TF32 off for matmuls, recorded as `allow_tf32`).

Usage: python3 benches/pytorch_bench.py --out RESULT.json [--device cuda] [--bf16]
       [--train-pairs 128,256] [--encode-batch 256] [--pretrain-pairs 64]
       [--warmup 2] [--timed 5] [--query-warmup 10] [--query-timed 50]
"""

import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_baseline import ImageTower, TextTower  # noqa: E402
import pytorch_pretrain  # noqa: E402

TRAIN_TXT_LEN, BOXES, ENCODE_TXT_LEN, QUERY_LEN = 40, 36, 32, 16
INDEX_ROWS, DIM, TOP_K, PRETRAIN_TXT_LEN = 123287, 768, 10, 24


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure(dev, warmup, timed, fn):
    t = time.perf_counter()
    for _ in range(warmup):
        fn()
        sync(dev)
    warm = time.perf_counter() - t
    samples = []
    for _ in range(timed):
        t = time.perf_counter()
        fn()
        sync(dev)
        samples.append(time.perf_counter() - t)
    return warm, samples


def row(key, name, size, items, unit, warm, samples, dev):
    s = sorted(samples)

    def rank(q):  # nearest rank, as the Rust side
        return s[min(len(s), max(1, math.ceil(q * len(s)))) - 1]

    mean = sum(s) / len(s)
    mem = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    return {"key": key, "workload": name, "size": size, "iterations": len(s),
            "mean_ms": mean * 1e3, "p50_ms": rank(0.5) * 1e3, "p99_ms": rank(0.99) * 1e3,
            "items_per_iteration": items, "unit": unit, "per_s": items / mean,
            "warmup_s": warm, "memory_bytes": mem}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--train-pairs", default="128,256")
    ap.add_argument("--encode-batch", type=int, default=256)
    ap.add_argument("--pretrain-pairs", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--timed", type=int, default=5)
    ap.add_argument("--query-warmup", type=int, default=10)
    ap.add_argument("--query-timed", type=int, default=50)
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(a.device)
    amp = lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=a.bf16)
    rows = []

    # Inference: eval mode, no autograd.
    txt, img = TextTower().to(dev).eval(), ImageTower().to(dev).eval()
    n = a.encode_batch
    ids = torch.randint(1000, 28000, (n, ENCODE_TXT_LEN), device=dev)
    tmask = torch.ones(n, ENCODE_TXT_LEN, dtype=torch.long, device=dev)
    feat = torch.rand(n, BOXES, 2048, device=dev)
    pos = torch.rand(n, BOXES, 7, device=dev)
    imask = torch.ones(n, BOXES + 1, dtype=torch.long, device=dev)
    with torch.no_grad(), amp():
        w, s = measure(dev, a.warmup, a.timed, lambda: img(feat, pos, imask))
        rows.append(row("image_encode", "image encode", f"{n} x {BOXES} regions", n, "images", w, s, dev))
        w, s = measure(dev, a.warmup, a.timed, lambda: txt(ids, tmask))
        rows.append(row("text_encode", "text encode", f"{n} x {ENCODE_TXT_LEN} tokens", n, "captions", w, s, dev))
        db = torch.rand(INDEX_ROWS, DIM, device=dev) - 0.5
        if a.bf16:
            db = db.bfloat16()
        one = torch.randint(1000, 28000, (1, QUERY_LEN), device=dev)
        omask = torch.ones(1, QUERY_LEN, dtype=torch.long, device=dev)

        def query():
            v = txt(one, omask).to(db.dtype)
            return torch.topk(v @ db.T, TOP_K, dim=1).indices.tolist()

        w, s = measure(dev, a.query_warmup, a.query_timed, query)
        rows.append(row("query_top10", f"query encode + exact top-{TOP_K}",
                        f"1 x {QUERY_LEN} tokens, {INDEX_ROWS} x {DIM} stored", 1, "queries", w, s, dev))
    del db, feat, pos

    # Fine-tuning steps (train mode: dropout on, as the reference trains).
    txt.train()
    img.train()
    params = list(txt.parameters()) + list(img.parameters())
    opt = torch.optim.AdamW(params, lr=2e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    for pairs in [int(p) for p in a.train_pairs.split(",") if p]:
        ids = torch.randint(1000, 28000, (pairs, TRAIN_TXT_LEN), device=dev)
        tmask = torch.ones(pairs, TRAIN_TXT_LEN, dtype=torch.long, device=dev)
        feat = torch.rand(pairs, BOXES, 2048, device=dev)
        pos = torch.rand(pairs, BOXES, 7, device=dev)
        imask = torch.ones(pairs, BOXES + 1, dtype=torch.long, device=dev)
        target = torch.arange(pairs, device=dev)

        def step():
            with amp():
                t = txt(ids, tmask)
                i = img(feat, pos, imask)
            s = t.float() @ i.float().T
            loss = 0.5 * F.cross_entropy(s.T, target) + 0.5 * F.cross_entropy(s, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 2.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        w, s = measure(dev, a.warmup, a.timed, step)
        rows.append(row(f"finetune_{pairs}", "fine-tune step",
                        f"{pairs} pairs ({TRAIN_TXT_LEN} tokens, {BOXES} regions), fwd+bwd+clip+AdamW",
                        pairs, "pairs", w, s, dev))
    del txt, img, opt, params

    # Pre-training micro-step, MLM with cls_concat add, pretrain.py's optimizer.
    pa = SimpleNamespace(pairs=a.pretrain_pairs, txt_len=PRETRAIN_TXT_LEN, boxes=BOXES, vocab=28996,
                         hidden=768, layers=12, heads=12, ffn=3072)
    model = pytorch_pretrain.BiEncoderForPretraining(pytorch_pretrain.bert_config(pa), 768).to(dev).train()
    batch = {k: v.to(dev) for k, v in pytorch_pretrain.synthetic_batch(pa, torch.Generator().manual_seed(0)).items()}
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)

    def pstep():
        with amp():
            loss, _ = model.task_loss("mlm", batch)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    w, s = measure(dev, a.warmup, a.timed, pstep)
    rows.append(row("pretrain_mlm", "pre-training micro-step (MLM)",
                    f"{a.pretrain_pairs} pairs ({PRETRAIN_TXT_LEN} tokens, {BOXES} regions), fwd+bwd+clip+AdamW",
                    a.pretrain_pairs, "pairs", w, s, dev))

    res = {"torch": torch.__version__, "device": str(dev),
           "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "precision": "bf16" if a.bf16 else "f32",
           "allow_tf32": torch.backends.cuda.matmul.allow_tf32, "throughput": rows}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
