"""Fixtures for tutti-lm's tokenizer (built from a GGUF file's vocabulary, merges, token types and
pre-tokenizer type) and chat template.

1. A tiny byte-level BPE (about 600 tokens) trained by Hugging Face `tokenizers` on the sample
   below plus a few lines of filler, with SmolLM2's special tokens (token type 3), written as a
   vocabulary-only GGUF file by the `gguf` package (`tokenizer.ggml.pre = smollm`, SmolLM2's chat
   template). The reference ids come from two tokenizers:
   - `transformers`: what `AutoTokenizer.from_pretrained(..., gguf_file=...)` builds from the file
     (4.46.3: `ByteLevel` pre-tokenizer alone), with `add_special_tokens=False`;
   - `native`: the same tokenizer with the pre-tokenizer of SmolLM2's original `tokenizer.json`
     (`Digits(individual_digits=True)` then `ByteLevel`), the rule llama.cpp applies for
     `smollm`.
   The tiny vocabulary is trained with `ByteLevel` alone, so it holds multi-digit tokens and the
   two rules give different ids on numbers (the test checks that they do).
2. A seeded tiny llama over the same vocabulary (`tiny_lm.gguf`), with transformers' greedy
   continuation of a prompt and a text's per-token log-likelihood, for the `tutti lm` CLI test.
3. With `--smollm2 PATH` (the real GGUF file), the same two id lists for the real vocabulary and
   the chat template rendered by transformers, for the on-demand real-file test.

    /tmp/parity/bin/python tools/parity/make_tokenizer_fixtures.py [--smollm2 PATH]

Writes fixtures/parity/tokenizer/{tiny.gguf, tiny.json, tiny_lm.gguf, tiny_lm.json[, smollm2.json]}.
"""

import argparse
import json
from pathlib import Path

import gguf
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

OUT = Path(__file__).resolve().parents[2] / "fixtures" / "parity" / "tokenizer"

SAMPLES = [
    "Hello, world! The year 2024 had 366 days; π ≈ 3.14159.",
    "Ça va? Größe, façade, naïve, Ærøskøbing, São Paulo, Kraków, İstanbul.",
    "日本語のテキストと中文文本，한국어 텍스트.",
    "Emoji: 🎵🎶🥁 👩‍👩‍👧 ❤️ and flags 🇫🇷🇯🇵.",
    "def f(x):\n    return x**2 + 1  # square\n\n\tif x >= 10_000: print(f'{x:,}')",
    "   leading spaces, trailing   \n\n\nnew lines\r\n tabs\t\tand  double  spaces  ",
    "Numbers 0 007 1234567890 3.5e-8 -42 +1 (555) 123-4567, 12:30pm",
    "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n391<|im_end|>",
    "Русский текст, ελληνικά, עברית, العربية, हिन्दी.",
    "URLs https://example.com/a?b=1&c=2 and e-mail someone@example.org",
]

CONVERSATIONS = [
    {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "add_generation_prompt": True,
    },
    {
        "messages": [
            {"role": "system", "content": "You describe sounds."},
            {"role": "user", "content": "A dog barks twice."},
            {"role": "assistant", "content": "Two short barks."},
        ],
        "add_generation_prompt": False,
    },
]

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
]

TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] +"
    " '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def native(tok):
    """The same tokenizer with SmolLM2's original pre-tokenizer."""
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True),
        ]
    )
    return backend


def reference(gguf_path: Path) -> dict:
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    out = {
        "samples": SAMPLES,
        "transformers": [tok(s, add_special_tokens=False)["input_ids"] for s in SAMPLES],
        "decoded": [
            tok.decode(tok(s, add_special_tokens=False)["input_ids"], skip_special_tokens=False)
            for s in SAMPLES
        ],
        "chat": [
            {
                **c,
                "text": tok.apply_chat_template(
                    c["messages"], tokenize=False, add_generation_prompt=c["add_generation_prompt"]
                ),
            }
            for c in CONVERSATIONS
        ],
    }
    backend = native(tok)
    out["native"] = [backend.encode(s, add_special_tokens=False).ids for s in SAMPLES]
    return out


def add_tokenizer(w, tokens, merges):
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_unk_token_id(tokens.index("<|endoftext|>"))
    w.add_pad_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(TEMPLATE)


def tiny_lm(tokens, merges):
    """A seeded tiny llama over the tiny vocabulary, with its tokenizer, for the `tutti lm` CLI
    test: transformers' greedy continuation of a raw prompt and a text's per-token log-likelihood
    (given the beginning-of-text token)."""
    import torch
    from make_llama_fixtures import add_llama, tiny_model

    model = tiny_model(vocab_size=len(tokens), seed=5)
    # Larger weights than the init's (std 0.02), so the greedy continuation depends on the context
    # instead of repeating one token.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(8.0)
    path = OUT / "tiny_lm.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tutti-tiny-lm")
    add_llama(w, model)
    add_tokenizer(w, tokens, merges)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = AutoTokenizer.from_pretrained(str(OUT), gguf_file=path.name)
    eos = tokens.index("<|im_end|>")
    prompt = "Hello, world! The year"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(12):
            logits = model(torch.tensor([ids + new])).logits[0, -1]
            nxt = int(torch.argmax(logits))
            new.append(nxt)
            if nxt == eos:
                break
    text = "sound speech music 2024"
    # Scored with the native rule (digits one by one), as `tutti lm` tokenizes.
    scored = [tokens.index("<|im_start|>")] + native(tok).encode(text, add_special_tokens=False).ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([scored])).logits[0].double(), dim=-1)
    out = {
        "prompt": prompt,
        "prompt_ids": ids,
        "greedy_ids": new,
        "greedy_text": tok.decode(new, skip_special_tokens=True),
        "score_text": text,
        "score_ids": scored[1:],
        "logprobs": [float(logp[i - 1, scored[i]]) for i in range(1, len(scored))],
    }
    (OUT / "tiny_lm.json").write_text(json.dumps(out, ensure_ascii=False, indent=1))
    print(f"tiny_lm: greedy {new}")


def tiny():
    filler = [
        "the quick brown fox jumps over the lazy dog " * 3,
        "1999 2000 2001 2024 365 42 100 1000 10000 3.14 2.71",
        "sound speech music audio encoder distillation teacher student",
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(SAMPLES + filler, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    path = OUT / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tutti-tiny-tokenizer")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    add_tokenizer(w, tokens, merges)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref = reference(path)
    differ = sum(a != b for a, b in zip(ref["transformers"], ref["native"]))
    assert differ > 0, "the two rules must differ on the sample (numbers)"
    (OUT / "tiny.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1))
    print(f"tiny: {len(tokens)} tokens, {len(merges)} merges, {differ} samples differ by rule")
    tiny_lm(tokens, merges)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", type=Path)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    tiny()
    if args.smollm2:
        ref = reference(args.smollm2)
        differ = sum(a != b for a, b in zip(ref["transformers"], ref["native"]))
        (OUT / "smollm2.json").write_text(json.dumps(ref, ensure_ascii=False, indent=1))
        print(f"smollm2: {differ} of {len(SAMPLES)} samples differ between the two rules")


if __name__ == "__main__":
    main()
