"""A tiny CrystalCoder written as the released model is: remote code in its own folder.

`write_crystalcoder(folder)` writes config.json (with `auto_map`), configuration_crystalcoder.py,
modeling_crystalcoder.py and random weights, so `AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)` loads it as transformers loads LLM360/CrystalChat. The modelling code is
the reference: GPT-2 `Conv1D` blocks, LayerNorm, partial rotary (rotate-half), SwiGLU
(`c_proj(c_fc(x) * silu(c_fc2(x)))`) and the three muP multipliers, written out plainly rather
than folded, so a converter is checked against the unfolded arithmetic.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIGURATION = '''
from transformers import PretrainedConfig


class CrystalCoderConfig(PretrainedConfig):
    model_type = "crystalcoder"

    def __init__(self, vocab_size=64, n_positions=128, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                 activation_function="swiglu", layer_norm_epsilon=1e-5, position_embedding_type="rotary",
                 rotary_dim=4, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                 mup_width_scale=0.5, mup_embeddings_scale=3.0, mup_output_alpha=1.7, mup_scale_qk_dot_by_d=True,
                 **kwargs):
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.n_embd = n_embd
        self.n_layer = n_layer
        self.n_head = n_head
        self.n_inner = n_inner
        self.activation_function = activation_function
        self.layer_norm_epsilon = layer_norm_epsilon
        self.position_embedding_type = position_embedding_type
        self.rotary_dim = rotary_dim
        self.scale_attn_weights = scale_attn_weights
        self.scale_attn_by_inverse_layer_idx = scale_attn_by_inverse_layer_idx
        self.mup_width_scale = mup_width_scale
        self.mup_embeddings_scale = mup_embeddings_scale
        self.mup_output_alpha = mup_output_alpha
        self.mup_scale_qk_dot_by_d = mup_scale_qk_dot_by_d
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
'''

MODELING = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutput
from transformers.pytorch_utils import Conv1D

from .configuration_crystalcoder import CrystalCoderConfig


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class CrystalCoderAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.heads, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.c_attn = Conv1D(3 * config.n_embd, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)

    def rotary(self, x):  # x (B, heads, T, head_dim): rotate the first rotary_dim channels
        dim = self.config.rotary_dim
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        angles = torch.outer(torch.arange(x.shape[2], dtype=torch.float32), inv_freq)  # (T, dim/2)
        emb = torch.cat((angles, angles), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        rot, rest = x[..., :dim], x[..., dim:]
        return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)

    def forward(self, hidden, mask):
        B, T, C = hidden.shape
        q, k, v = self.c_attn(hidden).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        q, k = self.rotary(q), self.rotary(k)
        scores = q @ k.transpose(-1, -2)  # (B, heads, T, T)
        if self.config.scale_attn_weights:
            power = 1.0 if self.config.mup_scale_qk_dot_by_d else 0.5
            scores = scores / (self.head_dim ** power)
        if self.config.scale_attn_by_inverse_layer_idx:
            scores = scores / float(self.layer_idx + 1)
        scores = scores + mask
        out = torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v
        return self.c_proj(out.transpose(1, 2).reshape(B, T, C))


class CrystalCoderMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = Conv1D(config.n_inner, config.n_embd)
        self.c_fc2 = Conv1D(config.n_inner, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_inner)

    def forward(self, x):
        return self.c_proj(self.c_fc(x) * nn.functional.silu(self.c_fc2(x)))


class CrystalCoderBlock(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CrystalCoderAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = CrystalCoderMLP(config)

    def forward(self, hidden, mask):
        hidden = hidden + self.attn(self.ln_1(hidden), mask)
        return hidden + self.mlp(self.ln_2(hidden))


class CrystalCoderPreTrainedModel(PreTrainedModel):
    config_class = CrystalCoderConfig
    base_model_prefix = "transformer"

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, Conv1D)):
            module.weight.data.normal_(0.0, 0.2)
            if module.bias is not None:
                module.bias.data.normal_(0.0, 0.1)
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, 0.5)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.normal_(1.0, 0.1)
            module.bias.data.normal_(0.0, 0.1)


class CrystalCoderModel(CrystalCoderPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList([CrystalCoderBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        hidden = inputs_embeds * self.config.mup_embeddings_scale  # muP: embeddings (and spliced features) scaled
        T = hidden.shape[1]
        mask = torch.full((T, T), torch.finfo(hidden.dtype).min, dtype=hidden.dtype).triu(1)
        if attention_mask is not None:
            mask = mask + (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for block in self.h:
            hidden = block(hidden, mask)
        return BaseModelOutput(last_hidden_state=self.ln_f(hidden))


class CrystalCoderLMHeadModel(CrystalCoderPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.transformer = CrystalCoderModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.transformer.wte

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, **kwargs):
        hidden = self.transformer(input_ids=input_ids, inputs_embeds=inputs_embeds,
                                  attention_mask=attention_mask).last_hidden_state
        logits = self.lm_head(hidden) * (self.config.mup_output_alpha * self.config.mup_width_scale)
        return CausalLMOutput(logits=logits)
'''


def write_crystalcoder(folder: Path, seed: int = 0, **config_overrides) -> Path:
    """Write a tiny random remote-code CrystalCoder into `folder` and return it."""
    import sys

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration_crystalcoder.py").write_text(CONFIGURATION)
    (folder / "modeling_crystalcoder.py").write_text(MODELING)
    config = {
        "model_type": "crystalcoder", "architectures": ["CrystalCoderLMHeadModel"],
        "auto_map": {"AutoConfig": "configuration_crystalcoder.CrystalCoderConfig",
                     "AutoModel": "modeling_crystalcoder.CrystalCoderModel",
                     "AutoModelForCausalLM": "modeling_crystalcoder.CrystalCoderLMHeadModel"},
        "vocab_size": 64, "n_positions": 128, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 48,
        "activation_function": "swiglu", "position_embedding_type": "rotary", "rotary_dim": 4,
        "mup_width_scale": 0.5, "mup_embeddings_scale": 3.0, "mup_output_alpha": 1.7, "mup_scale_qk_dot_by_d": True,
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
    }
    config.update(config_overrides)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    remote_config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(remote_config, trust_remote_code=True)  # random weights
    zero_biases_without_a_place(model)
    model.save_pretrained(folder)
    sys.modules.pop("transformers_modules", None)
    return folder


def zero_biases_without_a_place(model) -> None:
    """CrystalCoder's attention-output and MLP biases as the released weights must have them to fold."""
    import torch

    with torch.no_grad():
        for block in model.transformer.h:
            for layer in (block.attn.c_proj, block.mlp.c_fc, block.mlp.c_fc2, block.mlp.c_proj):
                layer.bias.zero_()
