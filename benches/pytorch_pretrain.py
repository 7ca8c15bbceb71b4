"""PyTorch baseline for benches/pretrain.rs: one pre-training micro-step per task of pretrain.py's
math (spec §6.2-6.5) on BiEncoderForPretraining with random weights, train mode, dropout 0.1.

The towers are those of benches/pytorch_baseline.py, sized from the command line: HF BertModel
for the text tower; for the image tower a BertModel fed UNITER-style region embeddings (the
[CLS] word embedding, img_linear 2048->H + LN, pos_linear 7->H + LN, type embedding 1, LN, and
mask_embedding[1] added to masked regions), each with the encode_proj head. The heads: the MLM
head decoding with the IMAGE tower's word-embedding table, the MRFR head with img_linear's weight
transposed, the 1601-class region classifier. Fusion is cls_concat "add" (the paper's VMLM /
SMRM). A step is forward + loss + backward + clip_grad_norm_(5.0) + AdamW (betas 0.9/0.98,
eps 1e-6, weight decay 0.01 except names with "bias" / "LayerNorm.weight") at the warmup-linear LR.
Exact numerical parity with the Rust side is not the point, only the same work.

Usage: python benches/pytorch_pretrain.py --out RESULT.json [--pairs 8] [--txt-len 24]
       [--boxes 36] [--warmup 1] [--steps 3] [--threads N] [--tasks mlm,mrfr,mrckl,itm]
       [--hidden 768 --layers 12 --heads 12 --ffn 3072 --vocab 28996 --project-dim 768]
"""

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

IMG_DIM = 2048
POS_DIM = 7
REGION_CLASSES = 1601
CLS, SEP, MASK = 101, 102, 103
MASK_PROB = 0.15


def bert_config(a):
    return BertConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
                      num_attention_heads=a.heads, intermediate_size=a.ffn,
                      max_position_embeddings=512, type_vocab_size=2,
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def projection(h, p):
    # encode_proj: Linear(H, 2H), GELU, LayerNorm, Linear(2H, P) (named .0 .. .3 upstream).
    return nn.Sequential(nn.Linear(h, 2 * h), nn.GELU(), nn.LayerNorm(2 * h, eps=1e-12),
                         nn.Linear(2 * h, p))


class TextTower(nn.Module):
    def __init__(self, cfg, project_dim):
        super().__init__()
        self.bert = BertModel(cfg, add_pooling_layer=True)
        self.encode_proj = projection(cfg.hidden_size, project_dim)

    def sequence_output(self, ids, mask):
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state

    def encode(self, ids, mask):
        return self.encode_proj(self.sequence_output(ids, mask)[:, 0])


class ImageTower(nn.Module):
    """UNITER on one [CLS] text token plus the regions. Parameter names follow the reference
    where the weight-decay groups depend on them (img_layer_norm / pos_layer_norm are decayed,
    the final `LayerNorm` is not)."""

    def __init__(self, cfg, project_dim):
        super().__init__()
        h = cfg.hidden_size
        self.bert = BertModel(cfg, add_pooling_layer=True)
        self.img_linear = nn.Linear(IMG_DIM, h)
        self.img_layer_norm = nn.LayerNorm(h, eps=1e-12)
        self.pos_linear = nn.Linear(POS_DIM, h)
        self.pos_layer_norm = nn.LayerNorm(h, eps=1e-12)
        self.mask_embedding = nn.Embedding(2, IMG_DIM)
        self.LayerNorm = nn.LayerNorm(h, eps=1e-12)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.encode_proj = projection(h, project_dim)

    def sequence_output(self, feat, pos, mask, img_masks=None):
        if img_masks is not None:
            # UniterImageEmbeddings zeroes row 0 in place before every masked forward.
            self.mask_embedding.weight.data[0].fill_(0)
            feat = feat + self.mask_embedding(img_masks)
        emb = self.bert.embeddings
        b = feat.shape[0]
        cls = emb(input_ids=torch.full((b, 1), CLS, dtype=torch.long, device=feat.device))
        t1 = emb.token_type_embeddings.weight[1]
        regions = self.img_layer_norm(self.img_linear(feat)) + self.pos_layer_norm(self.pos_linear(pos))
        regions = self.dropout(self.LayerNorm(regions + t1))
        x = torch.cat([cls, regions], 1)
        ext = (1.0 - mask[:, None, None, :].float()) * -10000.0
        return self.bert.encoder(x, attention_mask=ext).last_hidden_state

    def encode(self, feat, pos, mask):
        return self.encode_proj(self.sequence_output(feat, pos, mask)[:, 0])


class MlmTransform(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.dense = nn.Linear(h, h)
        self.LayerNorm = nn.LayerNorm(h, eps=1e-12)

    def forward(self, x):
        return self.LayerNorm(F.gelu(self.dense(x)))


class MlmPredictions(nn.Module):
    """BertOnlyMLMHead minus the decoder weight (tied to the image tower's word table)."""

    def __init__(self, h, vocab):
        super().__init__()
        self.transform = MlmTransform(h)
        self.bias = nn.Parameter(torch.zeros(vocab))


class MlmHead(nn.Module):
    def __init__(self, h, vocab):
        super().__init__()
        self.predictions = MlmPredictions(h, vocab)


class FeatRegression(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=1e-12))
        self.bias = nn.Parameter(torch.zeros(IMG_DIM))

    def forward(self, x, img_linear_weight):
        # img_linear.weight is [H, 2048]: F.linear with its transpose maps H -> 2048 (tied).
        return F.linear(self.net(x), img_linear_weight.t(), self.bias)


class RegionClassification(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.LayerNorm(h, eps=1e-12),
                                 nn.Linear(h, REGION_CLASSES))

    def forward(self, x):
        return self.net(x)


class BiEncoderForPretraining(nn.Module):
    def __init__(self, cfg, project_dim):
        super().__init__()
        self.img_model = ImageTower(cfg, project_dim)
        self.txt_model = TextTower(cfg, project_dim)
        h = cfg.hidden_size
        self.cls = MlmHead(h, cfg.vocab_size)
        self.feat_regress = FeatRegression(h)
        self.region_classifier = RegionClassification(h)
        self.itm_output = nn.Linear(h, 2)  # in the checkpoints, unused by every loss

    def mlm(self, b):
        txt = self.txt_model.sequence_output(b["masked_ids"], b["txt_mask"])
        img = self.img_model.sequence_output(b["feat"], b["pos"], b["img_mask"])
        h = txt + img[:, 0:1]  # cls_concat add
        masked = h[b["txt_labels"] != -1]
        t = self.cls.predictions.transform(masked)
        table = self.img_model.bert.embeddings.word_embeddings.weight
        scores = F.linear(t, table, self.cls.predictions.bias)
        targets = b["txt_labels"][b["txt_labels"] != -1]
        loss = F.cross_entropy(scores, targets, reduction="none").mean()
        correct = (scores.argmax(-1) == targets).sum()
        return loss, correct

    def mrm_hidden(self, b):
        img = self.img_model.sequence_output(b["masked_feat"], b["pos"], b["img_mask"], b["img_masks"])
        txt = self.txt_model.sequence_output(b["ids"], b["txt_mask"])
        h = img + txt[:, 0:1]  # cls_concat add
        return h[b["img_mask_tgt"]]

    def mrfr(self, b):
        pred = self.feat_regress(self.mrm_hidden(b), self.img_model.img_linear.weight)
        return F.mse_loss(pred, b["feat_targets"], reduction="none").mean(), None

    def mrc(self, b, kl):
        logits = self.region_classifier(self.mrm_hidden(b))
        hard = b["label_targets"][:, 1:].argmax(-1) + 1
        correct = (logits.argmax(-1) == hard).sum()
        if kl:
            logp = F.log_softmax(logits, -1)
            loss = F.kl_div(logp, b["label_targets"], reduction="none").mean()
        else:
            loss = F.cross_entropy(logits, hard, reduction="none").mean()
        return loss, correct

    def itm(self, b):
        t = self.txt_model.encode(b["ids"], b["txt_mask"])
        i = self.img_model.encode(b["feat"], b["pos"], b["img_mask"])
        s = t @ i.t()
        target = torch.arange(s.shape[0], device=s.device)
        l1 = F.cross_entropy(s, target, reduction="none")
        l2 = F.cross_entropy(s.t(), target, reduction="none")
        correct = 0.5 * ((s.argmax(1) == target).sum() + (s.argmax(0) == target).sum())
        return (0.5 * l1 + 0.5 * l2).mean(), correct

    def task_loss(self, task, b):
        if task == "mlm":
            return self.mlm(b)
        if task == "mrfr":
            return self.mrfr(b)
        if task in ("mrckl", "mrc"):
            return self.mrc(b, kl=task == "mrckl")
        if task == "itm":
            return self.itm(b)
        raise ValueError(f"unknown task {task}")


def masked_count(n):
    # Same as the Rust side: round(0.15 n), at least one.
    return max(1, int(MASK_PROB * n + 0.5))


def synthetic_batch(a, gen):
    """One batch holding every task's inputs; the masked counts match benches/pretrain.rs."""
    b, l, n = a.pairs, a.txt_len, a.boxes
    ids = torch.randint(1000, min(28000, a.vocab), (b, l), generator=gen)
    ids[:, 0], ids[:, -1] = CLS, SEP
    labels = torch.full((b, l), -1, dtype=torch.long)
    masked_ids = ids.clone()
    for r in range(b):
        cols = (torch.randperm(l - 2, generator=gen)[:masked_count(l - 2)] + 1).tolist()
        for c in cols:
            labels[r, c] = ids[r, c]
            u = torch.rand(1, generator=gen).item()
            if u < 0.8:
                masked_ids[r, c] = MASK
            elif u < 0.9:
                masked_ids[r, c] = int(torch.randint(1000, min(28000, a.vocab), (1,), generator=gen))
    feat = torch.rand(b, n, IMG_DIM, generator=gen)
    pos = torch.rand(b, n, POS_DIM, generator=gen)
    img_masks = torch.zeros(b, n, dtype=torch.long)
    for r in range(b):
        img_masks[r, torch.randperm(n, generator=gen)[:masked_count(n)]] = 1
    sel = img_masks.bool()
    feat_targets = feat[sel]
    masked_feat = feat.masked_fill(sel[..., None], 0.0)
    soft = torch.rand(int(sel.sum()), REGION_CLASSES, generator=gen)
    soft = soft / soft.sum(-1, keepdim=True)
    img_mask_tgt = torch.cat([torch.zeros(b, 1, dtype=torch.bool), sel], 1)
    return {
        "ids": ids, "masked_ids": masked_ids, "txt_labels": labels,
        "txt_mask": torch.ones(b, l, dtype=torch.long),
        "feat": feat, "masked_feat": masked_feat, "pos": pos,
        "img_mask": torch.ones(b, n + 1, dtype=torch.long),
        "img_masks": img_masks, "img_mask_tgt": img_mask_tgt,
        "feat_targets": feat_targets, "label_targets": soft,
    }


def lr_at(step, base=5e-5, warmup=10000, total=300000):
    """get_lr_sched (decay linear), as src/pretrain/schedule.rs."""
    lr = base * step / warmup if step < warmup else base * max(0.0, (total - step) / (total - warmup))
    return lr if lr > 0 else 1e-8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--txt-len", type=int, default=24)
    ap.add_argument("--boxes", type=int, default=36)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tasks", default="mlm,mrfr,mrckl,itm")
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=28996)
    ap.add_argument("--project-dim", type=int, default=768)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = bert_config(a)
    model = BiEncoderForPretraining(cfg, a.project_dim).train()
    no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    params = [p for _, p in named]
    opt = torch.optim.AdamW(groups, lr=lr_at(1), betas=(0.9, 0.98), eps=1e-6)
    batch = synthetic_batch(a, torch.Generator().manual_seed(0))
    updates = 0

    def step(task):
        nonlocal updates
        loss, _correct = model.task_loss(task, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        updates += 1
        for g in opt.param_groups:
            g["lr"] = lr_at(updates)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    tasks = {}
    for task in a.tasks.split(","):
        t = time.perf_counter()
        for _ in range(a.warmup):
            step(task)
        warm = time.perf_counter() - t
        t = time.perf_counter()
        loss = float("nan")
        for _ in range(a.steps):
            loss = step(task)
        per_step = (time.perf_counter() - t) / max(a.steps, 1)
        tasks[task] = {"s_per_step": per_step, "warmup_s": warm, "loss": loss}
        print(f"pytorch {task}: {per_step:.3f}s/step (loss {loss:.4f})", flush=True)
    res = {
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "threads": torch.get_num_threads(),
        "attn_implementation": getattr(cfg, "_attn_implementation", None),
        "params": sum(p.numel() for p in params),
        "tasks": tasks,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
