"""``unmask`` command line: ``serve`` (OpenAI-style HTTP server) and ``generate`` (one offline completion)."""
from __future__ import annotations

import argparse
import json
import sys


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=None,
                   help="generation length (default: the generation config's, else 64)")
    p.add_argument("--block-length", type=int, default=None, help="block size (default min(32, max tokens); the canvas rounds up to a multiple)")
    p.add_argument("--steps", type=int, default=None, help="total denoising steps (default = max tokens)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--remasking", default=None, choices=["low_confidence", "random"])
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--threshold", type=float, default=None, help="Fast-dLLM confidence threshold")
    p.add_argument("--cache", default=None, choices=["none", "prefix", "dual"])
    p.add_argument("--preset", default=None, choices=["exact", "fast"])
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None, help="at temperature > 0: nucleus mass kept per position")
    p.add_argument("--top-k", type=int, default=None, help="at temperature > 0: best tokens kept per position")
    p.add_argument("--min-p", type=float, default=None, help="at temperature > 0: drop tokens below min_p × the best")
    p.add_argument("--ignore-eos", action="store_true", default=None,
                   help="exactly --max-tokens tokens: EOS, EoT and stop ids are never generated")


def json_object(text: str) -> dict:
    """A command-line JSON object (argparse type)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint directory, Hugging Face id (org/name: the local cache first, else downloaded) "
                        "or built-in name (default: the embedded tiny-llada-instruct)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto | bfloat16 | float16 | float32 | float64")
    hub = p.add_argument_group("Hugging Face ids and quantization")
    hub.add_argument("--revision", default=None, help="hub branch, tag or commit of a Hugging Face id (default main)")
    hub.add_argument("--download-dir", default=None,
                     help="Hugging Face cache folder (default HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub)")
    hub.add_argument("--tokenizer", default=None, help="tokenizer folder, hub id or built-in name (default: the model's)")
    hub.add_argument("--quantization", default=None, choices=["fp8", "int8", "int4"],
                     help="quantize the weights of every linear layer and MoE expert at load time: fp8 (E4M3, per "
                          "channel), int8 (per channel) or int4 (group 128); weight-only. compressed-tensors "
                          "checkpoints are detected and need none")
    hub.add_argument("--quantize-lm-head", action="store_true", help="with --quantization, quantize the LM head too")
    par = p.add_argument_group("parallelism")
    par.add_argument("-tp", "--tensor-parallel-size", type=int, default=1,
                     help="split the model over N processes of this node (one GPU each on CUDA, gloo on CPU): "
                          "attention heads, MLP units, vocabulary and experts (default 1)")
    par.add_argument("--enable-expert-parallel", action="store_true",
                     help="MoE: whole experts per rank instead of every expert split (with --tensor-parallel-size)")
    par.add_argument("--tp-step-timeout", type=float, default=300.0,
                     help="seconds a tensor-parallel step may take before the ranks count as hung (default 300)")
    p.add_argument("--generation-config", default="auto",
                   help="generation defaults: auto (the checkpoint's generation_config.json), vllm or none (ignore "
                        "it), or a folder holding one (default auto)")
    p.add_argument("--override-generation-config", type=json_object, default=None,
                   help="JSON object applied over the generation defaults, e.g. '{\"max_new_tokens\": 128}'")


def model_source_kwargs(args: argparse.Namespace) -> dict:
    """The hub, quantization and parallelism flags as EngineConfig / LLM keyword arguments."""
    return dict(revision=args.revision, download_dir=args.download_dir, tokenizer=args.tokenizer,
                quantization=args.quantization, quantize_lm_head=args.quantize_lm_head,
                tensor_parallel_size=args.tensor_parallel_size, enable_expert_parallel=args.enable_expert_parallel,
                tp_step_timeout=args.tp_step_timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unmask", description="Inference server for masked diffusion LMs")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate one completion offline and print it")
    _add_model_args(gen)
    gen.add_argument("--prompt", required=True, help="prompt text")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt as one user turn of the chat template")
    gen.add_argument("--suffix", default=None,
                     help="infilling: text after the generated middle (canvas = prompt + masks + suffix)")
    _add_sampling_args(gen)
    _add_structured_args(gen)
    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    _add_model_args(serve)
    from unmask.server.serve_args import add_serve_args
    add_serve_args(serve)
    chat = sub.add_parser("chat", help="interactive chat with a running server (streams the answer)")
    from unmask.clients.chat import add_chat_args
    add_chat_args(chat)
    return parser


def _add_structured_args(p: argparse.ArgumentParser) -> None:
    """One structured-output constraint (DiffusionParams.structured_outputs; server/engine/constraint.py)."""
    group = p.add_argument_group("structured output (at most one)").add_mutually_exclusive_group()
    group.add_argument("--json-schema", type=json_object, default=None, help="the answer is JSON valid under this schema")
    group.add_argument("--regex", default=None, help="the whole answer matches this regular expression")
    group.add_argument("--choice", nargs="+", default=None, help="the answer is exactly one of these strings")
    group.add_argument("--grammar", default=None, help="the answer follows this Lark (or GBNF) grammar")


def structured_outputs(args: argparse.Namespace) -> dict | None:
    """The structured-output flags as a ``structured_outputs`` dict, or None."""
    given = {k: getattr(args, a) for k, a in (("json", "json_schema"), ("regex", "regex"), ("choice", "choice"),
                                              ("grammar", "grammar")) if getattr(args, a) is not None}
    return given or None


def _generate(args: argparse.Namespace) -> int:
    from unmask import LLM

    llm = LLM(args.model, device=args.device, dtype=args.dtype, generation_config=args.generation_config,
              override_generation_config=args.override_generation_config, **model_source_kwargs(args))
    params = llm.default_params(max_tokens=args.max_tokens, block_length=args.block_length, steps=args.steps,
                                temperature=args.temperature, remasking=args.remasking, cfg_scale=args.cfg_scale,
                                threshold=args.threshold, cache=args.cache, preset=args.preset, seed=args.seed,
                                top_p=args.top_p, top_k=args.top_k, min_p=args.min_p, ignore_eos=args.ignore_eos,
                                structured_outputs=structured_outputs(args))
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    with llm:
        out = llm.generate(prompt, params, suffix=args.suffix)[0]
    print(out.text)
    print(f"[finish_reason={out.finish_reason} tokens={len(out.token_ids)} nfe={out.nfe}]", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "chat":
            from unmask.clients.chat import run_chat
            return run_chat(args)
        from unmask.server.serve_args import run_server
        return run_server(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"unmask: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
