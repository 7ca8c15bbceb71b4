"""PyTorch baseline for benches/encode.rs, run in the same process tree on the same machine.

Builds the reference towers at full size with random weights (HF BertModel for the text tower;
for the image tower a BertModel fed UNITER-style region embeddings: img_linear 2048->768 + LN,
pos_linear 7->768 + LN, type embedding, LN, prepended [CLS] embedding), times eval-mode encoding,
and writes a full-size random fine-tune checkpoint (flickr-ft.pt layout, fp16 like the release)
whose torch.load + load_state_dict time is the conversion baseline.

Usage: python benches/pytorch_baseline.py --out RESULT.json --checkpoint CKPT.pt [--threads N]
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


class ImageTower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bert = BertModel(bert_base(), add_pooling_layer=True)
        h = 768
        self.img_linear = torch.nn.Linear(2048, h)
        self.img_ln = torch.nn.LayerNorm(h, eps=1e-12)
        self.pos_linear = torch.nn.Linear(7, h)
        self.pos_ln = torch.nn.LayerNorm(h, eps=1e-12)
        self.ln = torch.nn.LayerNorm(h, eps=1e-12)
        self.proj = projection()

    def forward(self, feat, pos, mask):
        emb = self.bert.embeddings
        b = feat.shape[0]
        cls = emb(input_ids=torch.full((b, 1), 101, dtype=torch.long, device=feat.device))
        t1 = emb.token_type_embeddings.weight[1]
        regions = self.ln(self.img_ln(self.img_linear(feat)) + self.pos_ln(self.pos_linear(pos)) + t1)
        x = torch.cat([cls, regions], 1)
        ext = (1.0 - mask[:, None, None, :].float()) * -10000.0
        h = self.bert.encoder(x, attention_mask=ext).last_hidden_state
        return self.proj(h[:, 0])


def projection():
    return torch.nn.Sequential(torch.nn.Linear(768, 1536), torch.nn.GELU(),
                               torch.nn.LayerNorm(1536, eps=1e-12), torch.nn.Linear(1536, 768))


class TextTower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bert = BertModel(bert_base(), add_pooling_layer=True)
        self.proj = projection()

    def forward(self, ids, mask):
        return self.proj(self.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0])


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
    ap.add_argument("--checkpoint", default=None, help="also write and time a full-size fp16 checkpoint")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    res = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    with torch.no_grad():
        txt = TextTower().eval()
        img = ImageTower().eval()
        b = a.batch
        ids = torch.randint(1000, 28000, (b, 32))
        tmask = torch.ones(b, 32, dtype=torch.long)
        feat = torch.rand(b, 36, 2048)
        pos = torch.rand(b, 36, 7)
        imask = torch.ones(b, 37, dtype=torch.long)
        res["text_s_per_batch"] = timeit(lambda: txt(ids, tmask), 1, a.iters)
        res["image_s_per_batch"] = timeit(lambda: img(feat, pos, imask), 1, a.iters)
        one = torch.randint(1000, 28000, (1, 16))
        res["query_s"] = timeit(lambda: txt(one, torch.ones(1, 16, dtype=torch.long)), 2, 10)
    res["batch"] = b

    if a.checkpoint is None:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        return

    # A flickr-ft.pt-shaped checkpoint: {model_dict: fp16 BiEncoder.state_dict(), ...}.
    rename = {"img_linear.": "bert.img_embeddings.img_linear.",
              "img_ln.": "bert.img_embeddings.img_layer_norm.",
              "pos_linear.": "bert.img_embeddings.pos_linear.",
              "pos_ln.": "bert.img_embeddings.pos_layer_norm.",
              "ln.": "bert.img_embeddings.LayerNorm.",
              "proj.": "encode_proj."}
    sd = {}
    for prefix, tower in (("img_model.", img), ("txt_model.", txt)):
        for k, v in tower.state_dict().items():
            if "position_ids" in k:
                continue
            for old, new in rename.items():
                if k.startswith(old):
                    k = new + k[len(old):]
                    break
            sd[prefix + k] = v.half()
    sd["img_model.bert.img_embeddings.mask_embedding.weight"] = torch.zeros(2, 2048).half()
    torch.save({"model_dict": sd, "optimizer_dict": {}, "scheduler_dict": {}, "offset": 0,
                "epoch": 0, "encoder_params": None}, a.checkpoint)
    t = time.perf_counter()
    loaded = torch.load(a.checkpoint, weights_only=True)["model_dict"]
    fresh = {k: v.float() for k, v in loaded.items()}
    res["torch_load_s"] = time.perf_counter() - t
    res["checkpoint_tensors"] = len(fresh)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
