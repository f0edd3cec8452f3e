#!/usr/bin/env python3
"""Tiny checkpoints of the architectures teal runs beside Llama (Qwen2, Qwen3, Phi-3, Mistral with its sliding
window), made with transformers from their real config classes with random weights, and their reference outputs.

Writes tests/fixtures/tiny/<arch>/ (config.json, model.safetensors in f16, stories260K's tokenizer files: the
checkpoints are random, so any 512-piece vocabulary does) and tests/fixtures/tiny/reference.json: per
architecture, the prompt ids, the last-position logits (f32, computed from the same f16-rounded weights) and 32
greedy ids (eos not stopping). tests/it/architectures.rs compares teal against them; CI needs no PyTorch.

Usage: python tests/reference/make_tiny_arch_reference.py   (torch, transformers: tests/reference/requirements.txt)
"""
import copy
import json
import pathlib
import shutil

import torch
from make_reference import greedy  # the same greedy loop as the other references (this folder is on sys.path)
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, MistralConfig, MistralForCausalLM, Phi3Config,
                          Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/tiny"
STORIES = ROOT.parent / "shared/models/stories260K"
STEPS = 32
PROMPT = [1, 403, 407, 261, 378, 425, 275, 306, 2, 17, 500, 43, 300, 301]

COMMON = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2)
MODELS = {
    # QKV bias, a rotary base of its own.
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**COMMON, rope_theta=1_000_000.0)),
    # QK norm, head_dim not hidden/heads, tied embeddings.
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(**{**COMMON, "tie_word_embeddings": True}, head_dim=24)),
    # Fused qkv_proj and gate_up_proj, a window longer than the prompt.
    "phi3": (Phi3ForCausalLM, Phi3Config(**COMMON, sliding_window=24, pad_token_id=0)),
    # A window shorter than the prompt: every layer attends to its last 8 positions.
    "mistral": (MistralForCausalLM, MistralConfig(**COMMON, sliding_window=8)),
    # Gemma 3 as HF directories hold it (gemma3_text): norms stored as w for (1 + w), pre- and post-norms, q/k
    # norms, scaled embeddings, GELU, local layers (window 4, their own rotary base) between global ones.
    "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig(
        **{**COMMON, "tie_word_embeddings": True, "num_hidden_layers": 4}, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"] * 2,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}})),
}


def main():
    torch.manual_seed(22)
    reference = {"prompt_ids": PROMPT, "steps": STEPS, "models": {}}
    for name, (cls, cfg) in MODELS.items():
        cfg._attn_implementation = "eager"
        model = cls(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():  # weights worth the name: larger than the init's 0.02
                p.copy_(torch.randn_like(p) * (0.2 if p.dim() > 1 else 0.1))
            for n, p in model.named_parameters():
                if name == "gemma3" and "embed" in n:  # scaled by sqrt(hidden) = 8 on the way in
                    p.mul_(0.25)
                if "norm" in n:  # Gemma's norms multiply by (1 + w): weights near 0 there, near 1 elsewhere
                    p.copy_((0.0 if name == "gemma3" else 1.0) + 0.1 * torch.randn_like(p))
            for p in model.parameters():  # the f16 weights saved are exactly the ones the reference runs
                p.copy_(p.half().float())
        d = OUT / name
        shutil.rmtree(d, ignore_errors=True)
        copy.deepcopy(model).half().save_pretrained(d, safe_serialization=True)  # buffers (rotary) stay f32 here
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(STORIES / f, d / f)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([PROMPT])).logits[0, -1]
        ids = greedy(model, PROMPT, STEPS)
        reference["models"][name] = {"last_logits": [round(float(x), 6) for x in logits], "greedy": ids}
        print(f"{name}: greedy {ids[:8]}... logits range {float(logits.min()):.2f}..{float(logits.max()):.2f}")
    (OUT / "reference.json").write_text(json.dumps(reference) + "\n")


if __name__ == "__main__":
    main()
