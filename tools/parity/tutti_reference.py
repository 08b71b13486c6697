"""The tutti encoder written in PyTorch, for parity fixtures and side-by-side timing.

It loads a tutti model directory (config.json + model.safetensors written by `tutti init` or by
this module) by the same tensor names, so both implementations run the same weights. The front
end is torchaudio's Kaldi fbank with USAD's settings (see make_frontend_fixtures.py).
"""

import json
import math
import pathlib

import torch
import torch.nn.functional as F
import torchaudio
from safetensors.torch import load_file, save_file
from torch import nn


def fbank(waveform: torch.Tensor, cfg: dict) -> torch.Tensor:
    """USAD front end: waveform mean removal, Kaldi fbank, fixed normalisation -> [T, bins]."""
    fb_cfg = cfg["fbank"]
    w = waveform.float()[None]
    if fb_cfg["subtract_waveform_mean"]:
        w = w - w.mean()
    feats = torchaudio.compliance.kaldi.fbank(
        w,
        htk_compat=True,
        sample_frequency=fb_cfg["sample_rate_hz"],
        use_energy=False,
        window_type=fb_cfg["window_type"],
        num_mel_bins=fb_cfg["num_mel_bins"],
        dither=0.0,
        frame_length=fb_cfg["frame_length_ms"],
        frame_shift=fb_cfg["frame_shift_ms"],
        preemphasis_coefficient=fb_cfg["preemphasis_coefficient"],
        remove_dc_offset=fb_cfg["remove_dc_offset"],
        low_freq=fb_cfg["low_freq_hz"],
        high_freq=fb_cfg["high_freq_hz"],
    )
    return (feats - fb_cfg["norm_mean"]) / fb_cfg["norm_scale"]


class Subsampler(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        channels = cfg["conv_channels"]
        self.conv = nn.ModuleList(
            nn.Conv2d(1 if i == 0 else channels, channels, 3, stride=(s, 2), padding=1)
            for i, s in enumerate(cfg["conv_time_strides"])
        )
        bins = cfg["fbank"]["num_mel_bins"]
        for _ in cfg["conv_time_strides"]:
            bins = (bins + 2 - 3) // 2 + 1
        self.layer_norm = nn.LayerNorm(channels * bins, eps=cfg["layer_norm_eps"])
        self.proj = nn.Linear(channels * bins, cfg["hidden_size"])

    def forward(self, x):  # [B, T, F]
        x = x[:, None]
        for conv in self.conv:
            x = F.gelu(conv(x))
        b, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(b, t, c * f)
        return self.proj(self.layer_norm(x))


class PosConvLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        k = cfg["num_conv_pos_embeddings"]
        d = cfg["hidden_size"]
        self.conv = nn.Conv1d(d, d, k, padding=k // 2, groups=cfg["num_conv_pos_embedding_groups"])
        self.eps = cfg["layer_norm_eps"]

    def forward(self, x):  # [B, T, D]
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(F.layer_norm(y, y.shape[-1:], eps=self.eps))


class PosConv(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.layers = nn.ModuleList(PosConvLayer(cfg) for _ in range(cfg["conv_pos_layers"]))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Attention(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["hidden_size"]
        self.heads = cfg["num_attention_heads"]
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        self.output_dense = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"])

    def forward(self, x):
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class Layer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        eps = cfg["layer_norm_eps"]
        self.attention = Attention(cfg)
        self.layer_norm = nn.LayerNorm(cfg["hidden_size"], eps=eps)
        self.feed_forward = FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg["hidden_size"], eps=eps)
        self.pre_ln = cfg["layer_norm_first"]

    def forward(self, x):
        if self.pre_ln:
            x = x + self.attention(self.layer_norm(x))
            ffn = self.feed_forward(self.final_layer_norm(x))
            return x + ffn, ffn
        x = self.layer_norm(x + self.attention(x))
        ffn = self.feed_forward(x)
        return self.final_layer_norm(x + ffn), ffn


class TuttiEncoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.subsampler = Subsampler(cfg)
        self.pos_conv = PosConv(cfg)
        self.layer_norm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg["num_hidden_layers"]))

    def forward(self, features):
        """One unpadded item or an equal-length batch: features [B, T, F] -> (hidden states, ffn)."""
        x = self.subsampler(features)
        x = x + self.pos_conv(x)
        if not self.cfg["layer_norm_first"]:
            x = self.layer_norm(x)
        hidden, ffns = [x], []
        for layer in self.layers:
            x, ffn = layer(x)
            hidden.append(x)
            ffns.append(ffn)
        if self.cfg["layer_norm_first"]:
            hidden[-1] = self.layer_norm(hidden[-1])
        return hidden, ffns


def load(model_dir: pathlib.Path) -> TuttiEncoder:
    cfg = json.loads((model_dir / "config.json").read_text())
    model = TuttiEncoder(cfg)
    model.load_state_dict(load_file(model_dir / "model.safetensors"), strict=True)
    return model.eval()


def save(model: TuttiEncoder, model_dir: pathlib.Path) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(model.cfg, indent=2) + "\n")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, model_dir / "model.safetensors", metadata={"format": "pt"})


def flops(cfg: dict, fbank_frames: int) -> float:
    """Same count as TuttiConfig::forward_flops in Rust."""
    macs, t, bins, c_in = 0.0, fbank_frames, cfg["fbank"]["num_mel_bins"], 1
    for s in cfg["conv_time_strides"]:
        t = (t + 2 - 3) // s + 1
        bins = (bins + 2 - 3) // 2 + 1
        macs += t * bins * cfg["conv_channels"] * c_in * 9
        c_in = cfg["conv_channels"]
    d = cfg["hidden_size"]
    macs += t * cfg["conv_channels"] * bins * d
    macs += cfg["conv_pos_layers"] * t * d * (d / cfg["num_conv_pos_embedding_groups"]) * cfg["num_conv_pos_embeddings"]
    macs += cfg["num_hidden_layers"] * (4 * t * d * d + 2 * t * t * d + 2 * t * d * cfg["intermediate_size"])
    return 2 * macs
