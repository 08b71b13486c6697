"""Reference outputs of the shipped SmolLM2-135M-Instruct GGUF file (scripts/fetch_lm.sh), from
transformers loading the same file (`gguf_file=`, which dequantises it to f32): the last
position's logits for several prompts, and every layer's hidden state for one. The file is not
in git, so neither is this fixture: it goes to $TUTTI_HOME/parity/smollm2/, where the on-demand
test (`crates/tutti-lm/tests/llama.rs`) looks for it.

    /tmp/parity/bin/python tools/parity/make_smollm2_fixtures.py
"""

import os
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

HOME = Path(os.environ.get("TUTTI_HOME", Path.home() / ".cache" / "tutti"))
GGUF = HOME / "lm" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = HOME / "parity" / "smollm2"

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat does a dog sound like?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    ",
    "Le chat est sur la table, et le chien",
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(GGUF.parent), gguf_file=GGUF.name, torch_dtype=torch.float32
    ).eval()
    # The file has no output.weight (the head is tied to the token embeddings), but transformers
    # 4.46 builds the config from GGUF metadata with tie_word_embeddings=False and leaves lm_head
    # randomly initialised (it says so in a warning): tie it as the original checkpoint does.
    model.lm_head.weight = model.model.embed_tokens.weight
    out = {}
    for i, p in enumerate(PROMPTS):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            res = model(torch.tensor([ids]), output_hidden_states=(i == 0))
        out[f"prompt.{i}.ids"] = np.array(ids, dtype=np.int64)
        out[f"prompt.{i}.logits"] = res.logits[0, -1].numpy().astype(np.float32)
        if i == 0:
            for layer, h in enumerate(res.hidden_states):
                out[f"hidden.{layer}"] = np.ascontiguousarray(h[0].numpy().astype(np.float32))
    save_file(out, str(OUT / "expected.safetensors"))
    print("wrote", OUT / "expected.safetensors", len(out), "tensors")


if __name__ == "__main__":
    main()
