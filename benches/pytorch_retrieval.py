"""PyTorch baseline for benches/retrieval.rs, run in the same process tree on the same machine.

One text query (BERT-base text tower + projection, random weights, `--tokens` tokens) encoded and
searched against `--n` random `--dim`-d vectors with one matrix product + torch.topk(10): the
equivalent of the reference demo's query path (spec §9) with faiss IndexFlatIP replaced by a
GEMM, which is what IndexFlatIP computes. Reports p50/p99 of encode+search and of search alone.

Usage: python benches/pytorch_retrieval.py --out RESULT.json [--n 123287] [--dim 768]
       [--queries 50] [--tokens 16] [--threads N]
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_baseline import TextTower  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[i]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=123287)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "n": a.n, "dim": a.dim}
    with torch.no_grad():
        txt = TextTower().eval()
        db = torch.randn(a.n, a.dim)
        total, search, encode = [], [], []
        for i in range(a.queries + 3):
            ids = torch.randint(1000, 28000, (1, a.tokens))
            mask = torch.ones(1, a.tokens, dtype=torch.long)
            t0 = time.perf_counter()
            v = txt(ids, mask)
            t1 = time.perf_counter()
            scores = v @ db.T
            top = torch.topk(scores, 10, dim=1)
            _ = top.indices.tolist()
            t2 = time.perf_counter()
            if i >= 3:
                encode.append(t1 - t0)
                search.append(t2 - t1)
                total.append(t2 - t0)
    for name, xs in (("total", total), ("search", search), ("encode", encode)):
        res[name + "_p50_ms"] = pct(xs, 50) * 1e3
        res[name + "_p99_ms"] = pct(xs, 99) * 1e3
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
