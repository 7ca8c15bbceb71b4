"""Times the reference PyTorch BUTD detector on the CPU for `lightningdot bench --torch-frcnn`.

The reference is the user's copy of `lxmert/modeling_frcnn.py` + `utils.py` of
huggingface/transformers-research-projects (not shipped with lightningdot). Only torch,
torchvision, numpy and pyyaml are needed: the download helpers `utils.py` imports (cv2,
requests, wget, filelock, huggingface_hub, PIL, tqdm) are stubbed when missing, the detector
never calls them.

Same workload as lightningdot's detector row: the given config with the given input size and
RoI count, random weights drawn with the same rule (uniform, variance 1/fan_in, box regressors
10x smaller, BatchNorm at identity), one random-pixel image already at its test size, timed from
the normalized tensor through backbone, RPN, RoI head and NMS. Prints one JSON line:
{"torch": version, "threads": [{"threads": n, "mean_s": s, "samples": [...]}, ...]}.
"""

import argparse
import hashlib
import importlib.machinery
import json
import math
import sys
import time
import types


def stub_missing(names):
    stubbed = set()
    for name in names:
        try:
            __import__(name)
        except ImportError:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                sub = ".".join(parts[:i])
                if sub not in sys.modules:
                    sys.modules[sub] = types.ModuleType(sub)
                    sys.modules[sub].__spec__ = importlib.machinery.ModuleSpec(sub, None)
                    stubbed.add(sub)
    fake = lambda *a, **k: None  # noqa: E731
    attrs = {
        "filelock": {"FileLock": fake},
        "huggingface_hub.utils": {"insecure_hashlib": hashlib},
        "tqdm.auto": {"tqdm": fake},
        "PIL": {"Image": types.ModuleType("PIL.Image")},
    }
    for mod, values in attrs.items():
        m = sys.modules.get(mod) if mod in stubbed else None
        for k, v in values.items():
            if m is not None and not hasattr(m, k):
                setattr(m, k, v)


def randomize(model, torch):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2 or "anchor" in name:
                continue
            if p.dim() == 2:
                fan_in = p.shape[1] if "cls_embedding" not in name else p.shape[0]
            else:
                fan_in = math.prod(p.shape[1:])
            a = math.sqrt(3.0 / max(fan_in, 1))
            if "anchor_deltas" in name or "bbox_pred" in name:
                a *= 0.1
            p.uniform_(-a, a)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", required=True, help="the lxmert directory")
    ap.add_argument("--config", required=True)
    ap.add_argument("--height", type=int, default=600)
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--proposals", type=int, default=300)
    ap.add_argument("--min-detections", type=int, default=36)
    ap.add_argument("--max-detections", type=int, default=36)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--timed", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()

    # torch scans installed modules when imported: import it before any stub exists.
    import torch
    import torchvision  # noqa: F401

    stub_missing(
        ["cv2", "requests", "wget", "filelock", "huggingface_hub.utils", "PIL", "tqdm.auto"]
    )

    sys.path.insert(0, args.reference)
    from modeling_frcnn import GeneralizedRCNN
    from utils import Config

    cfg = Config(Config.load_yaml(args.config))
    cfg.input.min_size_test = args.height
    cfg.input.max_size_test = args.width
    cfg.rpn.post_nms_topk_test = args.proposals
    cfg.min_detections = args.min_detections
    cfg.max_detections = args.max_detections
    torch.manual_seed(0)
    model = GeneralizedRCNN(cfg).eval()
    randomize(model, torch)

    h, w = args.height, args.width
    pixels = torch.randint(0, 256, (3, h, w), dtype=torch.uint8).float()
    mean = torch.tensor(cfg.model.pixel_mean).view(3, 1, 1)
    std = torch.tensor(cfg.model.pixel_std).view(3, 1, 1)
    sizes = torch.tensor([[h, w]])
    scales = torch.tensor([[1.0, 1.0]])

    def run():
        with torch.no_grad():
            images = ((pixels - mean) / std).unsqueeze(0)
            model(
                images,
                sizes,
                scales_yx=scales,
                padding="max_detections",
                max_detections=args.max_detections,
                return_tensors="pt",
            )

    out = {"torch": torch.__version__, "threads": []}
    for n in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(n)
        for _ in range(args.warmup):
            run()
        samples = []
        for _ in range(args.timed):
            t = time.perf_counter()
            run()
            samples.append(time.perf_counter() - t)
        out["threads"].append(
            {"threads": n, "mean_s": sum(samples) / len(samples), "samples": samples}
        )
        print(f"torch {n} thread(s): {out['threads'][-1]['mean_s']:.3f} s", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
