"""Does a `small` student learn from Whisper base's raw targets at all? A diagnostic in PyTorch.

Trains tutti's encoder (tools/parity/tutti_reference.py, from $TUTTI_HOME/models/random-small)
with four FC-ReLU-FC heads on the cached Whisper base targets of 40 speech clips of the training
pool (8 clips of up to 4 s per step, AdamW as tutti's), and prints the per-layer loss beside the
loss of a constant prediction (the per-channel median; zero with --norm). Used to show that
the first default run's stall was the targets, not tutti's training step: without --norm the loss
settles at the constant's and stays there, in PyTorch as in tutti; with --norm (per-channel
standardised targets, `target_norm = "channel"`) it keeps falling below it.

    python tools/parity/distill_plateau.py [--norm] [--steps 60]
"""
import json, os, sys, time, wave, argparse
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tutti_reference as R
from safetensors.numpy import load_file
ap = argparse.ArgumentParser()
ap.add_argument("--norm", action="store_true"); ap.add_argument("--preln", action="store_true")
ap.add_argument("--lr", type=float, default=5e-4); ap.add_argument("--steps", type=int, default=150)
ap.add_argument("--warmup", type=int, default=30); ap.add_argument("--clips", type=int, default=40)
a = ap.parse_args()
torch.manual_seed(0); torch.set_num_threads(2)
T = os.environ.get("TUTTI_HOME", os.path.expanduser("~/.cache/tutti"))
cfg = json.load(open(f"{T}/models/random-small/config.json"))
if a.preln: cfg["layer_norm_first"] = True
rows = [json.loads(l) for l in open(f"{T}/pool/manifest.jsonl")]
sp = [r for r in rows if r["domain"] == "speech"][::60][: a.clips]
import glob
root = sorted(glob.glob(f"{T}/targets/whisper-base-*-L2_3_4_6"))[0]
data = []
for r in sp:
    w = wave.open(f"{T}/pool/{r['audio']}"); x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768
    fb = R.fbank(torch.from_numpy(x), cfg)
    d = load_file(f"{root}/{r['sha256'][:2]}/{r['sha256']}.safetensors")
    z = [torch.from_numpy(d[f"layer.{i}"].astype(np.float32)) for i in range(4)]
    data.append((fb, z))
allz = [torch.cat([dz[i] for _, dz in data]) for i in range(4)]
mu = [z.mean(0) for z in allz]; sd = [z.std(0) + 1e-2 for z in allz]
def tgt(z, i): return (z - mu[i]) / sd[i] if a.norm else z
def loss_fn(p, z):
    return ((p - z).abs().mean(-1) - F.logsigmoid(F.cosine_similarity(p, z, dim=-1))).mean()
const = [float(loss_fn(allz[i].median(0).values.expand_as(allz[i]) if not a.norm else torch.zeros_like(allz[i]) + 1e-3, tgt(allz[i], i))) for i in range(4)]
print("constant predictor", [round(c, 3) for c in const])
model = R.TuttiEncoder(cfg)
if not a.preln: model.load_state_dict(R.load_file(f"{T}/models/random-small/model.safetensors"))
heads = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(384, 384), torch.nn.ReLU(), torch.nn.Linear(384, 512)) for _ in range(4))
opt = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=a.lr, weight_decay=0.01, eps=1e-5)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / a.warmup))
layers = [3, 6, 9, 12]
rng = np.random.default_rng(0)
t0 = time.time()
for step in range(a.steps):
    idx = rng.choice(len(data), 8, replace=False)
    tot = 0; terms = []
    opt.zero_grad()
    for j in idx:
        fb, z = data[j]
        fb = fb[:400]  # 4 s
        _, ffns = model(fb[None])
        for k, l in enumerate(layers):
            p = heads[k](ffns[l - 1][0]); zz = tgt(z[k], k)
            n = min(len(p), len(zz))
            L = loss_fn(p[:n], zz[:n]) / 4 / len(idx)
            L.backward(retain_graph=k < 3)
            terms.append(float(L) * 4 * len(idx))
    gn = torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(heads.parameters()), 5.0)
    opt.step(); sched.step()
    if step % 10 == 0 or step == a.steps - 1:
        t = np.array(terms).reshape(len(idx), 4).mean(0)
        print(f"step {step} terms {np.round(t,3)} gn {gn:.3f} {time.time()-t0:.0f}s", flush=True)
