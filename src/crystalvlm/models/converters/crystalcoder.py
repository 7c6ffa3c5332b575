"""CrystalCoder (LLM360's remote-code LLM behind CrystalChat) as a native `StableLmForCausalLM`.

CrystalCoder is a GPT-2-style stack from Cerebras' BTLM line: per block `ln_1` (LayerNorm with
bias), a fused `attn.c_attn` (GPT-2 `Conv1D`, weight (in, 3*out)) and `attn.c_proj`, `ln_2`, and a
SwiGLU MLP `mlp.c_proj(mlp.c_fc(x) * silu(mlp.c_fc2(x)))`; rotary embeddings on the first
`rotary_dim` channels of each head (rotate-half form), sequential residuals, a final `ln_f`, and
three muP multipliers:

* the token embeddings are multiplied by `mup_embeddings_scale` before the first block;
* attention scores are divided by `head_dim` (not its square root) when `mup_scale_qk_dot_by_d`;
* the logits are multiplied by `mup_output_alpha * mup_width_scale`.

Each multiplier is a constant scale on a linear map, so it folds into weights: the embedding scale
into `embed_tokens` (and, for a LLaVA-style model, into the projector's last layer, since
CrystalChat-MLLM's image features enter the stack before that scale), the score scale into the
query projection (rotary rotation is linear, so scaling q before it is the same as after), the
logit scale into `lm_head`. What is left is StableLM exactly: LayerNorm with bias, partial rotary,
SwiGLU, sequential residual, bias on q/k/v. StableLM has no bias on the attention output or the
MLP, so a checkpoint whose biases there are not zero cannot fold; it is refused by name (it stays
a remote-code model) rather than converted approximately. `fold_crystalcoder` checks every
condition and says which one fails.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import StableLmConfig

MODEL_TYPE = "crystalcoder"
# Parameters StableLM has no place for: they must be zero for the fold to be exact.
BIASES_WITHOUT_A_PLACE = ("attn.c_proj.bias", "mlp.c_fc.bias", "mlp.c_fc2.bias", "mlp.c_proj.bias")


class CannotFoldError(ValueError):
    """The CrystalCoder checkpoint has a feature no native class expresses exactly."""


def _get(config: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if config.get(name) is not None:
            return config[name]
    return default


def stablelm_config(source: dict[str, Any]) -> StableLmConfig:
    """The native config equal to a CrystalCoder config (a plain dict of its config.json)."""
    position = source.get("position_embedding_type", "rotary")
    if position != "rotary":
        raise CannotFoldError(f"CrystalCoder position_embedding_type {position!r}: only 'rotary' maps onto StableLM")
    activation = source.get("activation_function", "swiglu")
    if activation != "swiglu":
        raise CannotFoldError(f"CrystalCoder activation_function {activation!r}: only 'swiglu' maps onto StableLM")
    hidden = int(_get(source, "n_embd", "hidden_size"))
    heads = int(_get(source, "n_head", "num_attention_heads"))
    head_dim = hidden // heads
    rotary_dim = _get(source, "rotary_dim")
    if rotary_dim is None:
        rotary_dim = int(head_dim * float(_get(source, "rotary_pct", default=1.0)))
    return StableLmConfig(
        architectures=["StableLmForCausalLM"],
        vocab_size=int(source["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(_get(source, "n_inner", "intermediate_size", default=4 * hidden)),
        num_hidden_layers=int(_get(source, "n_layer", "num_hidden_layers")),
        num_attention_heads=heads,
        num_key_value_heads=heads,
        hidden_act="silu",
        max_position_embeddings=int(_get(source, "n_positions", "max_position_embeddings", default=2048)),
        layer_norm_eps=float(_get(source, "layer_norm_epsilon", default=1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(_get(source, "rotary_emb_base", "rope_theta",
                                                                               default=10000.0)),
                         "partial_rotary_factor": rotary_dim / head_dim},
        use_qkv_bias=True,
        qk_layernorm=False,
        use_parallel_residual=False,
        tie_word_embeddings=False,  # the two muP scales differ, so folded input and output tables differ
        bos_token_id=source.get("bos_token_id"),
        eos_token_id=source.get("eos_token_id"),
        pad_token_id=source.get("pad_token_id"),
    )


def embedding_scale(source: dict[str, Any]) -> float:
    return float(source.get("mup_embeddings_scale", 1.0))


def logit_scale(source: dict[str, Any]) -> float:
    return float(source.get("mup_output_alpha", 1.0)) * float(source.get("mup_width_scale", 1.0))


def query_scale(source: dict[str, Any], layer: int) -> float:
    """Factor on q that turns StableLM's 1/sqrt(head_dim) score scale into CrystalCoder's."""
    head_dim = int(_get(source, "n_embd", "hidden_size")) // int(_get(source, "n_head", "num_attention_heads"))
    wanted = 1.0
    if source.get("scale_attn_weights", True):
        wanted /= head_dim ** (1.0 if source.get("mup_scale_qk_dot_by_d", False) else 0.5)
    if source.get("scale_attn_by_inverse_layer_idx", False):
        wanted /= layer + 1
    return wanted * math.sqrt(head_dim)


def fold_crystalcoder(source: dict[str, Any], weights: dict[str, torch.Tensor],
                      prefix: str = "transformer.") -> tuple[StableLmConfig, dict[str, torch.Tensor]]:
    """(StableLM config, StableLmForCausalLM state dict) computing the same logits as `weights`.

    `weights` holds the CrystalCoder tensors under `prefix` (`transformer.wte.weight`, ...) and
    `lm_head.weight`; other keys (a LLaVA projector) are ignored. Arithmetic in float64, results
    in each tensor's own dtype."""
    config = stablelm_config(source)
    layers = config.num_hidden_layers
    hidden = config.hidden_size

    def take(name: str) -> torch.Tensor:
        key = prefix + name
        if key not in weights:
            raise CannotFoldError(f"CrystalCoder weights lack {key!r}")
        return weights[key]

    for layer in range(layers):
        for name in BIASES_WITHOUT_A_PLACE:
            key = f"{prefix}h.{layer}.{name}"
            if key in weights and bool(weights[key].abs().max() > 0):
                raise CannotFoldError(
                    f"{key} is not zero; StableLM has no bias there, so this checkpoint does not fold exactly onto a "
                    f"native class (run it as remote code: trust_remote_code: true)")
    if f"{prefix}wpe.weight" in weights:
        raise CannotFoldError("CrystalCoder checkpoint has learned position embeddings (wpe); StableLM has rotary only")

    def scaled(tensor: torch.Tensor, factor: float) -> torch.Tensor:
        return (tensor.double() * factor).to(tensor.dtype)

    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": scaled(take("wte.weight"), embedding_scale(source))}
    lm_head = weights.get("lm_head.weight", take("wte.weight"))  # a tied head reads the unscaled table
    out["lm_head.weight"] = scaled(lm_head, logit_scale(source))
    for layer in range(layers):
        src, dst = f"h.{layer}.", f"model.layers.{layer}."
        for norm_src, norm_dst in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            out[dst + norm_dst + ".weight"] = take(src + norm_src + ".weight")
            out[dst + norm_dst + ".bias"] = take(src + norm_src + ".bias")
        # Conv1D weights are (in, out): a Linear's weight is the transpose.
        qkv_weight = take(src + "attn.c_attn.weight").t()  # (3H, H)
        qkv_bias = take(src + "attn.c_attn.bias")  # (3H,)
        q_factor = query_scale(source, layer)
        for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
            rows = slice(index * hidden, (index + 1) * hidden)
            factor = q_factor if name == "q_proj" else 1.0
            out[dst + f"self_attn.{name}.weight"] = scaled(qkv_weight[rows].contiguous(), factor)
            out[dst + f"self_attn.{name}.bias"] = scaled(qkv_bias[rows].contiguous(), factor)
        out[dst + "self_attn.o_proj.weight"] = take(src + "attn.c_proj.weight").t().contiguous()
        # c_proj(c_fc(x) * silu(c_fc2(x))) = down(up(x) * silu(gate(x)))
        out[dst + "mlp.up_proj.weight"] = take(src + "mlp.c_fc.weight").t().contiguous()
        out[dst + "mlp.gate_proj.weight"] = take(src + "mlp.c_fc2.weight").t().contiguous()
        out[dst + "mlp.down_proj.weight"] = take(src + "mlp.c_proj.weight").t().contiguous()
    out["model.norm.weight"] = take("ln_f.weight")
    out["model.norm.bias"] = take("ln_f.bias")
    return config, out


def is_crystalcoder(config: dict[str, Any]) -> bool:
    return config.get("model_type") == MODEL_TYPE


def native_crystalcoder(model) -> "torch.nn.Module":
    """A loaded remote-code CrystalCoder (`AutoModelForCausalLM(..., trust_remote_code=True)`) as
    the equal native StableLmForCausalLM."""
    from transformers import StableLmForCausalLM

    config, state = fold_crystalcoder(model.config.to_dict(), model.state_dict())
    native = StableLmForCausalLM(config)
    native.load_state_dict(state, strict=True)
    return native.to(next(model.parameters()).dtype)
