#!/usr/bin/env python3
"""GGUF files of the tiny Qwen2, Qwen3 and Phi-3 checkpoints (tests/fixtures/tiny/<arch>/), written by llama.cpp's
own converter (convert_hf_to_gguf.py and its conversion/ package, from the llama.cpp sources inside the
llama-cpp-python sdist), so that teal's reading of each architecture's GGUF layout (tensor names, Phi-3's fused
attn_qkv and gate/up in ffn_up, Qwen3's q/k norms, rotary style, keys) is checked against llama.cpp's writing of
it, not against teal's own idea of it.

The checkpoints carry stories260K's tokenizer.json, so the vocabulary is written the way the converter writes
Llama's Hugging Face tokenizers (a SentencePiece "llama" vocabulary). Weights stay f16 (norms f32), the numbers
the safetensors files hold, so tests/it/architectures.rs holds the GGUF files to the same transformers reference
(tests/fixtures/tiny/reference.json) as the directories.

Usage: python tests/reference/make_tiny_gguf.py /path/to/llama.cpp
       (torch, numpy, sentencepiece; the converter's gguf-py is taken from the llama.cpp tree)
Writes tests/fixtures/tiny/<arch>.gguf.
"""
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/fixtures/tiny"
ARCHES = ["qwen2", "qwen3", "phi3"]


def set_vocab(self):
    """The converter's `_set_vocab_llama_hf`, less the tokens past the model's embedding rows: transformers reports
    an added `<|endoftext|>` for these tokenizer files that the 512-row checkpoints have no row for (llama.cpp
    refuses a file whose token list is longer than its embedding)."""
    import gguf

    rows = self.hparams["vocab_size"]
    vocab = gguf.LlamaHfVocab(self.dir_model)
    tokens, scores, types = zip(*list(vocab.all_tokens())[:rows])
    self.gguf_writer.add_tokenizer_model("llama")
    self.gguf_writer.add_tokenizer_pre("default")
    self.gguf_writer.add_token_list(list(tokens))
    self.gguf_writer.add_token_scores(list(scores))
    self.gguf_writer.add_token_types(list(types))
    gguf.SpecialVocab(self.dir_model, n_vocab=rows).add_to_gguf(self.gguf_writer)


def main():
    llama = pathlib.Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(llama))
    sys.path.insert(1, str(llama / "gguf-py"))
    import gguf
    import torch
    from conversion import ModelBase, get_model_class
    from conversion.base import ModelType, get_model_architecture

    for arch in ARCHES:
        src = TINY / arch
        hparams = ModelBase.load_hparams(src, False)
        cls = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
        cls.set_vocab = set_vocab
        out = TINY / f"{arch}.gguf"
        with torch.inference_mode():
            cls(src, gguf.LlamaFileType.MOSTLY_F16, out, model_name=f"tiny-{arch}").write()
        print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
