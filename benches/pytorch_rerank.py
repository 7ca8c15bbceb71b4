"""PyTorch baseline for benches/rerank.rs, run in the same process tree on the same machine.

Builds a UNITER-base `UniterForImageTextRetrieval` with random weights the way ChenRocks/UNITER
computes it (HF BertModel's layer stack — the same post-LN BertLayer — fed UNITER text + region
embeddings compacted with gather_index, pooler on token 0, rank_output Linear(768, 1)), and times
in eval mode:

* throughput: batches of --batch pairs (caption of --tokens ids, --regions regions);
* re-ranking one text query's top-K (K = 10, 20, 50, 100) in mini-batches of --batch pairs;
* the two-stage pipeline's first stage on a 5,000-image collection: one BERT-base text-tower
  pass (16 tokens) + exact inner product against 5,000 x 768 vectors + top-100.

Usage: python benches/pytorch_rerank.py --out RESULT.json [--threads N] [--batch 32]
"""

import argparse
import json
import time

import torch
from transformers import BertConfig, BertModel


def bert_base():
    return BertConfig(vocab_size=28996, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072,
                      max_position_embeddings=512, type_vocab_size=2)


class UniterItm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bert = BertModel(bert_base(), add_pooling_layer=True)
        h = 768
        self.img_linear = torch.nn.Linear(2048, h)
        self.img_ln = torch.nn.LayerNorm(h, eps=1e-12)
        self.pos_linear = torch.nn.Linear(7, h)
        self.pos_ln = torch.nn.LayerNorm(h, eps=1e-12)
        self.ln = torch.nn.LayerNorm(h, eps=1e-12)
        self.rank_output = torch.nn.Linear(h, 1)

    def forward(self, ids, feat, pos, attn, gather):
        emb = self.bert.embeddings
        txt = emb(input_ids=ids)
        t1 = emb.token_type_embeddings.weight[1]
        img = self.ln(self.img_ln(self.img_linear(feat)) + self.pos_ln(self.pos_linear(pos)) + t1)
        cat = torch.cat([txt, img], 1)
        x = torch.gather(cat, 1, gather.unsqueeze(-1).expand(-1, -1, cat.size(-1)))
        ext = (1.0 - attn[:, None, None, :].float()) * -10000.0
        h = self.bert.encoder(x, attention_mask=ext).last_hidden_state
        return self.rank_output(self.bert.pooler(h))


def pair_batch(b, tokens, regions):
    ids = torch.randint(1000, 28000, (b, tokens))
    feat = torch.rand(b, regions, 2048)
    pos = torch.rand(b, regions, 7)
    out = tokens + regions
    attn = torch.ones(b, out, dtype=torch.long)
    gather = torch.arange(out).expand(b, out).contiguous()
    return ids, feat, pos, attn, gather


def timeit(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--iters", type=int, default=2)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    res = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    with torch.no_grad():
        model = UniterItm().eval()
        batch = pair_batch(a.batch, a.tokens, a.regions)
        s = timeit(lambda: model(*batch), 1, a.iters)
        res["pairs_per_s"] = a.batch / s

        def rerank(k):
            # One caption against K images, in mini-batches as the Rust side scores them.
            q = torch.randint(1000, 28000, (1, a.tokens))
            chunks = [pair_batch(min(a.batch, k - i), a.tokens, a.regions)
                      for i in range(0, k, a.batch)]
            for c in chunks:
                c[0][:] = q
            return lambda: [model(*c) for c in chunks]

        res["rerank_10_s"] = timeit(rerank(10), 1, a.iters)
        for k in (20, 50, 100):
            res[f"rerank_{k}_s"] = timeit(rerank(k), 0, 1)

        txt = BertModel(bert_base(), add_pooling_layer=False).eval()
        proj = torch.nn.Sequential(torch.nn.Linear(768, 1536), torch.nn.GELU(),
                                   torch.nn.LayerNorm(1536, eps=1e-12),
                                   torch.nn.Linear(1536, 768)).eval()
        index = torch.randn(a.images, 768)
        q = torch.randint(1000, 28000, (1, a.tokens))
        qm = torch.ones(1, a.tokens, dtype=torch.long)

        def first_stage():
            v = proj(txt(input_ids=q, attention_mask=qm).last_hidden_state[:, 0])
            return (v @ index.T).topk(100, dim=1)

        res["first_stage_s"] = timeit(first_stage, 2, 10)
    res.update(batch=a.batch, tokens=a.tokens, regions=a.regions, images=a.images)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
