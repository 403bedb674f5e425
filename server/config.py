"""ModelConfig: everything the model code and engine need from a checkpoint's config.json and tokenizer.

Both LLaDA families say ``model_type: "llada"``, so the family is chosen from ``architectures``
(LLADA-SPEC.md §3-4) through ``ARCHITECTURES``, the one architecture table (``models/registry.py`` maps
each family to its model class). Every dimension is read from config.json; switches we do not implement raise
``UnsupportedConfigError`` naming the key.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from unmask.kernels.options import KernelOptions

ARCHITECTURES = {"LLaDAModelLM": "llada", "LLaDAMoEModelLM": "llada_moe", "LLaDAMoEModel": "llada_moe",
                 "LLaDA2MoeModelLM": "llada2", "DreamModel": "dream"}
"""HF ``architectures[0]`` -> model family ('llada' dense, 'llada_moe', 'llada2' block-causal MoE for LLaDA2.0 /
2.1, 'dream' Qwen2-style Dream-7B): every architecture we serve."""

# (key, required value) pairs for dense LLaDA: switches whose other values change the math.
_DENSE_SWITCHES = (
    ("alibi", False), ("attention_layer_norm", False), ("weight_tying", False), ("include_bias", False),
    ("include_qkv_bias", False), ("scale_logits", False), ("input_emb_norm", False), ("rope", True),
    ("block_type", "llama"), ("layer_norm_type", "rms"), ("activation_type", "silu"),
    ("bias_for_layer_norm", False), ("multi_query_attention", None),
)
_MOE_SWITCHES = (
    ("partial_rotary_factor", 1.0), ("rope_scaling", None), ("clip_qkv", None), ("attention_bias", False),
    ("tie_word_embeddings", False), ("moe_router_enable_expert_bias", False), ("hidden_act", "silu"),
    ("shared_expert_intermediate_size", None),
)


class UnsupportedConfigError(ValueError):
    """config.json asks for something this server does not implement; the message names the key."""


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or holds tensors that do not match its config."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str
    """'llada' (dense LLaDA-8B / 1.5) or 'llada_moe' (LLaDA-MoE-7B-A1B)."""
    architecture: str
    """``architectures[0]`` from config.json."""
    hidden_size: int
    """Model width (``d_model`` dense, ``hidden_size`` MoE)."""
    num_layers: int
    """Transformer blocks."""
    num_heads: int
    """Query heads."""
    num_kv_heads: int
    """Key/value heads (= num_heads for the published models)."""
    head_dim: int
    """hidden_size // num_heads."""
    intermediate_size: int
    """Dense MLP width (``mlp_hidden_size``); unused by the MoE family."""
    vocab_size: int
    """Rows of the embedding and LM head (``embedding_size`` dense, ``vocab_size`` MoE)."""
    rms_norm_eps: float
    """RMSNorm epsilon."""
    rope_theta: float
    """RoPE base."""
    rope_fp32: bool
    """Dense: rotate q/k in fp32 (``rope_full_precision``). MoE: cos/sin cast to activation dtype."""
    qk_norm: bool
    """Per-head RMSNorm on q and k before RoPE (LLaDA-MoE ``qk_layernorm``)."""
    num_experts: int
    """Routed experts per MoE layer (0 for dense)."""
    num_experts_per_tok: int
    """Top-k experts per token (0 for dense)."""
    expert_intermediate_size: int
    """Width of each expert's SwiGLU (0 for dense)."""
    max_position_embeddings: int
    """Longest canvas (prompt + generation) the checkpoint supports."""
    mask_token_id: int
    """The mask token: dense from config ``mask_token_id``, MoE from the tokenizer's ``<|mask|>``."""
    eos_token_id: int
    """End of text (also the padding the SFT data uses)."""
    eot_token_id: int | None
    """End of turn: ``<|eot_id|>`` (dense) or ``<|role_end|>`` (MoE); None if the tokenizer lacks it."""
    bos_token_id: int | None
    """Start of text, supplied by the chat template only."""
    attention_pattern: str = "bidirectional"
    """'bidirectional' (LLaDA, LLaDA-MoE, Dream) or 'block_causal' (LLaDA2: a token sees its own block and every
    earlier one, blocks aligned to absolute positions)."""
    rotary_dim: int = 0
    """Leading head dims RoPE rotates (``partial_rotary_factor`` · head_dim); 0 = all of them."""
    qkv_bias: bool = False
    """q/k/v projections carry a bias (Dream's Qwen2 attention)."""
    first_k_dense: int = 0
    """Leading layers with a dense SwiGLU of ``intermediate_size`` instead of experts (LLaDA2 ``first_k_dense_replace``)."""
    num_shared_experts: int = 0
    """Shared experts added to every MoE layer's output (one SwiGLU of num · expert_intermediate_size)."""
    routing: str = "softmax"
    """'softmax' (LLaDA-MoE: fp32 softmax, top-k, no renormalisation) or 'sigmoid_grouped' (LLaDA2: sigmoid
    scores + expert bias, group-limited top-k, renormalised, × routed_scaling_factor)."""
    n_group: int = 1
    """Expert groups for group-limited routing."""
    topk_group: int = 1
    """Groups a token may route into."""
    routed_scaling_factor: float = 1.0
    """Multiplier of the routed experts' weights."""
    logits_shift: bool = False
    """Position i's prediction comes from the hidden state at i − 1 (Dream; position 0 keeps its own)."""

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Ids that end a generation: EOS and, when present, EoT."""
        return (self.eos_token_id,) if self.eot_token_id is None else (self.eos_token_id, self.eot_token_id)

    @property
    def is_moe(self) -> bool:
        return self.family in ("llada_moe", "llada2")

    @property
    def block_causal(self) -> bool:
        return self.attention_pattern == "block_causal"

    def is_dense_layer(self, layer_idx: int) -> bool:
        """Layer ``layer_idx`` has a dense SwiGLU (every layer of a dense model, the first k of LLaDA2)."""
        return not self.is_moe or layer_idx < self.first_k_dense

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ModelConfig":
        """Read ``path/config.json`` (+ tokenizer files for special ids). Raises CheckpointError or
        UnsupportedConfigError with the file or key at fault."""
        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{cfg_file}: missing (a checkpoint directory needs config.json)")
        raw = json.loads(cfg_file.read_text())
        specials = special_token_ids(path)
        return from_dict(raw, specials)


def special_token_ids(path: Path) -> dict[str, int]:
    """Token string -> id for every added/special token of ``path/tokenizer.json`` ({} if absent)."""
    tok_file = path / "tokenizer.json"
    if not tok_file.is_file():
        return {}
    data = json.loads(tok_file.read_text())
    return {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}


def _require(raw: dict, key: str):
    if key not in raw or raw[key] is None:
        raise UnsupportedConfigError(f"config.json: required key {key!r} is missing")
    return raw[key]


def _check_switches(raw: dict, switches) -> None:
    for key, want in switches:
        got = raw.get(key, want)
        if got != want and not (want is None and got in (None, False)) and not (want is False and got is None):
            raise UnsupportedConfigError(f"config.json: {key}={got!r} is not supported (expected {want!r})")


def from_dict(raw: dict, specials: dict[str, int]) -> ModelConfig:
    """Build a ModelConfig from a parsed config.json and the tokenizer's special-token ids."""
    archs = raw.get("architectures") or []
    arch = archs[0] if archs else None
    family = ARCHITECTURES.get(arch)
    if family is None:
        raise UnsupportedConfigError(
            f"config.json: architectures={archs!r} is not supported (expected one of {tuple(ARCHITECTURES)})")
    if family in ("llada2", "dream"):
        from unmask.server import config_families  # the newer families' parsers (they import this module)
        return config_families.PARSERS[family](raw, specials, arch)
    return (_dense if family == "llada" else _moe)(raw, specials, arch)


def _dense(raw: dict, specials: dict[str, int], arch: str) -> ModelConfig:
    _check_switches(raw, _DENSE_SWITCHES)
    if raw.get("layer_norm_with_affine", True) is not True:
        raise UnsupportedConfigError("config.json: layer_norm_with_affine=false is not supported")
    d, h = int(_require(raw, "d_model")), int(_require(raw, "n_heads"))
    kv = raw.get("n_kv_heads") or h
    return ModelConfig(
        family="llada", architecture=arch, hidden_size=d, num_layers=int(_require(raw, "n_layers")),
        num_heads=h, num_kv_heads=int(kv), head_dim=d // h,
        intermediate_size=int(raw.get("mlp_hidden_size") or d * int(raw.get("mlp_ratio", 4))),
        vocab_size=int(raw.get("embedding_size") or _require(raw, "vocab_size")),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)), rope_theta=float(raw.get("rope_theta", 10000.0)),
        rope_fp32=bool(raw.get("rope_full_precision", True)), qk_norm=False,
        num_experts=0, num_experts_per_tok=0, expert_intermediate_size=0,
        max_position_embeddings=int(raw.get("max_sequence_length", 4096)),
        mask_token_id=int(_require(raw, "mask_token_id")), eos_token_id=int(_require(raw, "eos_token_id")),
        eot_token_id=specials.get("<|eot_id|>"),
        bos_token_id=raw.get("bos_token_id", specials.get("<|startoftext|>")),
    )


def _moe(raw: dict, specials: dict[str, int], arch: str) -> ModelConfig:
    _check_switches(raw, _MOE_SWITCHES)
    freq = raw.get("moe_layer_freq", 1)
    if (isinstance(freq, list) and any(f != 1 for f in freq)) or (not isinstance(freq, list) and freq != 1):
        raise UnsupportedConfigError(f"config.json: moe_layer_freq={freq!r} is not supported (every layer MoE)")
    score = raw.get("moe_router_score_function", "softmax")
    if score not in (None, "softmax"):
        raise UnsupportedConfigError(f"config.json: moe_router_score_function={score!r} is not supported")
    mask = raw.get("mask_token_id", specials.get("<|mask|>"))
    if mask is None:
        raise UnsupportedConfigError("config.json has no mask_token_id and tokenizer.json has no <|mask|> token")
    d, h = int(_require(raw, "hidden_size")), int(_require(raw, "num_attention_heads"))
    return ModelConfig(
        family="llada_moe", architecture=arch, hidden_size=d, num_layers=int(_require(raw, "num_hidden_layers")),
        num_heads=h, num_kv_heads=int(raw.get("num_key_value_heads") or h),
        head_dim=int(raw.get("head_dim") or d // h), intermediate_size=int(raw.get("dense_intermediate_size") or 0),
        vocab_size=int(_require(raw, "vocab_size")), rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        rope_theta=float(raw.get("rope_theta", 10000.0)), rope_fp32=False,
        qk_norm=bool(raw.get("qk_layernorm", True)), num_experts=int(_require(raw, "num_experts")),
        num_experts_per_tok=int(_require(raw, "num_experts_per_tok")),
        expert_intermediate_size=int(_require(raw, "expert_intermediate_size")),
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
        mask_token_id=int(mask), eos_token_id=int(_require(raw, "eos_token_id")),
        eot_token_id=specials.get("<|role_end|>"), bos_token_id=raw.get("bos_token_id"),
    )


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    """Most sequences stepped in one engine iteration (and admitted at once)."""
    max_num_batched_tokens: int = 16384
    """Token budget of one iteration: a refresh step costs the canvas (twice with CFG), a block step the
    block (dual) or block + suffix (prefix). A single sequence over budget still runs, alone."""
    max_model_len: int | None = None
    """Longest canvas (prompt + max_tokens) accepted; None = the checkpoint's max_position_embeddings."""

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be ≥ 1")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    model: str | None = None
    """Checkpoint directory or built-in name; None = the embedded default model."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N'."""
    dtype: str = "auto"
    """'auto' (bfloat16 on CUDA, float32 on CPU), 'bfloat16', 'float16', 'float32', 'float64'."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when ``model`` is a Hugging Face id; None = main."""
    download_dir: str | None = None
    """Hugging Face cache folder for hub ids; None = HF_HUB_CACHE / HF_HOME / ~/.cache/huggingface/hub."""
    tokenizer: str | None = None
    """Where the tokenizer comes from (built-in name, folder or hub id); None = the model's folder."""
    quantization: str | None = None
    """Quantize weights at load time: None, 'fp8' (E4M3, per output channel), 'int8' (per channel,
    weight-only) or 'int4' (weight-only, group 128, symmetric). A compressed-tensors checkpoint is detected
    from its ``quantization_config`` and needs none."""
    quantize_lm_head: bool = False
    """Also quantize the LM head (embeddings and norms always keep the model dtype)."""
    kv_cache_memory: int | None = None
    """Bytes for the prefix/dual cache; None = 0.4 of free device memory (CUDA) or 1 GiB (CPU)."""
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    """Batching limits."""
    seed: int = 0
    """Seeds the per-request seeds drawn for requests that give none."""
    cuda_graphs: bool = True
    """On CUDA, run dual-cache block steps through captured CUDA graphs (one per batch-size bucket)."""
    tensor_parallel_size: int = 1
    """Ranks the model is split over, one process each on this node (``server/models/parallel.py``)."""
    enable_expert_parallel: bool = False
    """With tensor parallelism, MoE layers hold whole experts per rank instead of every expert's units split."""
    tp_step_timeout: float = 300.0
    """Seconds a tensor-parallel step may take before its ranks are declared hung and the engine fails."""
    kernels: KernelOptions = dataclasses.field(default_factory=KernelOptions)
    """Triton kernel choices (attention key loop, GEMM, split-KV merge); environment variables override them
    (``unmask.kernels.options``)."""
    generation_config: str = "auto"
    """Generation defaults: 'auto' (the checkpoint's generation_config.json), 'vllm'/'none' (ignore it) or a
    folder holding one (server/engine/generation_config.py)."""
    override_generation_config: tuple[tuple[str, Any], ...] = ()
    """(generation_config.json key, value) pairs applied over the checkpoint's defaults."""
    retain_host_memory: bool = True
    """On a CPU device with glibc, keep freed activation memory in the process heap between steps instead of
    returning it to the OS (``server/engine/host_memory.py``); MALLOC_* / GLIBC_TUNABLES settings win."""
