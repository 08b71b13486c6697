"""Fixtures for tutti-lm's llama forward: a seeded tiny LlamaForCausalLM (transformers 4.46.3;
grouped-query attention 4 / 2 heads, tied embeddings, rope base 100000) written as GGUF the way
llama.cpp's convert_hf_to_gguf.py writes llama models (the query and key weights permuted into
its interleaved rotary layout, `blk.N.*` names, the `llama.*` metadata), and the model's logits
and every hidden state on a token sequence, from PyTorch.

    /tmp/parity/bin/python tools/parity/make_llama_fixtures.py

Writes fixtures/parity/llama_tiny/{model.gguf, expected.safetensors, grad.safetensors, lora.safetensors}:
the last two for the frozen LM's backward (input gradients of a next-token loss; with LoRA
adapters, their gradients too).
"""

from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT = Path(__file__).resolve().parents[2] / "fixtures" / "parity" / "llama_tiny"


def tiny_model(vocab_size=96, seed=3):
    """A seeded tiny LlamaForCausalLM with non-trivial norms (the init sets them to one)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    return model


def permute(w, n_head, n_head_kv):
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_llama(writer, model):
    """The model's metadata and tensors, as convert_hf_to_gguf.py writes a llama model."""
    config = model.config
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        h, kv = config.num_attention_heads, config.num_key_value_heads
        writer.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], h, h))
        writer.add_tensor(f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], h, kv))
        writer.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        writer.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        writer.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    writer = gguf.GGUFWriter(str(OUT / "model.gguf"), arch="llama")
    add_llama(writer, model)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    tokens = torch.tensor([[1, 17, 42, 5, 88, 3, 60, 60, 11]])
    with torch.no_grad():
        out = model(tokens, output_hidden_states=True)
    expected = {
        "tokens": tokens[0].numpy().astype(np.int64),
        "logits": out.logits[0].numpy().astype(np.float32),
    }
    for i, h in enumerate(out.hidden_states):
        expected[f"hidden.{i}"] = np.ascontiguousarray(h[0].numpy().astype(np.float32))
    save_file(expected, str(OUT / "expected.safetensors"))
    print("wrote", OUT, {k: v.shape for k, v in expected.items()})
    grad_fixture(model)


def grad_fixture(model):
    """The loss and input gradient of a sequence with some positions fed by embeddings: tokens
    (positions 0-2), five random vectors (3-7), tokens (8-11); next-token cross-entropy (mean) at
    positions 7-10; PyTorch autograd on `inputs_embeds`."""
    g = torch.Generator().manual_seed(11)
    embed = model.get_input_embeddings().weight.detach()
    first, last = torch.tensor([1, 17, 42]), torch.tensor([88, 3, 60, 60])
    audio = 0.5 * torch.randn(5, model.config.hidden_size, generator=g)
    inputs = torch.cat([embed[first], audio, embed[last]]).clone().requires_grad_(True)
    targets = torch.full((12,), -100, dtype=torch.long)
    targets[7:11] = torch.tensor([88, 3, 60, 60])
    logits = model(inputs_embeds=inputs[None]).logits[0]
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    loss.backward()
    save_file(
        {
            "inputs": inputs.detach().numpy().astype(np.float32),
            "targets": targets.numpy().astype(np.int64),
            "loss": np.array([loss.item()], dtype=np.float64),
            "grad": inputs.grad.numpy().astype(np.float32),
        },
        str(OUT / "grad.safetensors"),
    )
    print("grad fixture: loss", loss.item(), "grad norm", inputs.grad.norm().item())
    lora_fixture(model, inputs.detach(), targets)


LORA_TARGETS = {"attn_q": "self_attn.q_proj", "attn_v": "self_attn.v_proj", "ffn_down": "mlp.down_proj"}


def lora_fixture(model, inputs, targets, rank=2, alpha=4.0):
    """The same loss with LoRA adapters (rank 2, alpha 4) on the query, value and down
    projections: `y = x W^T + (alpha / rank) (x A^T) B^T`, `A` and `B` random (B non-zero, so every
    gradient is), and the gradients of the inputs, every `A` and every `B`."""
    g = torch.Generator().manual_seed(12)
    scale = alpha / rank
    params, originals = {}, []
    for i, layer in enumerate(model.model.layers):
        for stem, attr in LORA_TARGETS.items():
            owner, name = attr.split(".")
            lin = getattr(getattr(layer, owner), name)
            a = (0.3 * torch.randn(rank, lin.in_features, generator=g)).requires_grad_(True)
            b = (0.3 * torch.randn(lin.out_features, rank, generator=g)).requires_grad_(True)
            params[f"blk.{i}.{stem}"] = (a, b)
            original = lin.forward
            originals.append((lin, original))
            lin.forward = lambda x, f=original, a=a, b=b: f(x) + scale * (x @ a.T) @ b.T
    inputs = inputs.clone().requires_grad_(True)
    logits = model(inputs_embeds=inputs[None]).logits[0]
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)
    loss.backward()
    for lin, original in originals:
        lin.forward = original
    out = {
        "loss": np.array([loss.item()], dtype=np.float64),
        "grad": inputs.grad.numpy().astype(np.float32),
    }
    for key, (a, b) in params.items():
        out[f"{key}.lora_a"] = a.detach().numpy().astype(np.float32)
        out[f"{key}.lora_b"] = b.detach().numpy().astype(np.float32)
        out[f"{key}.lora_a.grad"] = a.grad.numpy().astype(np.float32)
        out[f"{key}.lora_b.grad"] = b.grad.numpy().astype(np.float32)
    save_file(out, str(OUT / "lora.safetensors"))
    print("lora fixture: loss", loss.item())


if __name__ == "__main__":
    main()
