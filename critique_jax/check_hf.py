"""Check a converted checkpoint: the same prompt through critique_jax and transformers (PyTorch).

    python -m critique_jax.check_hf HF_DIR [--prompt TEXT] [--dtype float32]

Prints one JSON line last: {"max_abs_logit_diff", "kl", "top1_agreement", "n_tokens", "ok"}
and exits 1 when the difference is beyond tolerance. Tolerances: float32 max |dlogit| <= 1e-3
(real checkpoints have logits of magnitude ~30, so this is ~1e-5 relative) and KL <= 1e-6;
bfloat16 compute is compared by KL <= 5e-2 and top-1 agreement >= 0.9 only, since bf16
rounding alone moves logits by ~0.1.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from critique_jax.errors import DEBUG_ENV, UserError, debug_requested, exit_cli, run_cli

TOLERANCES = {
    "float32": dict(max_abs_logit_diff=1e-3, kl=1e-6, top1_agreement=1.0),
    "bfloat16": dict(max_abs_logit_diff=float("inf"), kl=5e-2, top1_agreement=0.9),
}


TORCH_MISSING = (
    "check_hf compares against transformers' PyTorch model and torch is not installed: "
    "pip install torch==2.13.0 (the CPU build; or pip install -e '.[test]')"
)


def compare(hf_dir: str, prompt: str, dtype: str = "float32") -> dict:
    import jax.numpy as jnp

    try:
        import torch
    except ImportError as e:
        raise ModuleNotFoundError(TORCH_MISSING) from e
    from transformers import AutoModelForCausalLM

    from critique_jax.checkpoints.hf import load_hf
    from critique_jax.data.tokenizers import load_tokenizer
    from critique_jax.models import Transformer

    cfg, params = load_hf(hf_dir, dtype=dtype, param_dtype=dtype)
    tokenizer = load_tokenizer(hf_dir, cfg)
    ids = tokenizer(prompt, return_tensors="np")["input_ids"].astype(np.int32)
    positions = np.arange(ids.shape[1], dtype=np.int32)[None]
    ours = np.asarray(
        Transformer(cfg).apply({"params": params}, jnp.asarray(ids), jnp.asarray(positions)),
        np.float64,
    )[0]

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch_dtype).eval()
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits[0]
    ref = ref.float().numpy().astype(np.float64)[:, : ours.shape[-1]]

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(ours)
    kl = float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))
    return dict(
        max_abs_logit_diff=float(np.abs(ours - ref).max()),
        kl=kl,
        top1_agreement=float(np.mean(ours.argmax(-1) == ref.argmax(-1))),
        n_tokens=int(ids.shape[1]),
    )


def within_tolerance(result: dict, dtype: str) -> bool:
    tol = TOLERANCES[dtype]
    return (
        result["max_abs_logit_diff"] <= tol["max_abs_logit_diff"]
        and result["kl"] <= tol["kl"]
        and result["top1_agreement"] >= tol["top1_agreement"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("hf_dir")
    parser.add_argument(
        "--prompt",
        default="Question: Natalia sold clips to 48 of her friends "
        "in April, and then she sold half as many clips in May. How many clips "
        "did Natalia sell altogether in April and May? Let's think step by step.",
    )
    parser.add_argument("--dtype", default="float32", choices=sorted(TOLERANCES))
    parser.add_argument(
        "--debug", action="store_true", help=f"tracebacks for user errors too (or {DEBUG_ENV}=1)"
    )
    args = parser.parse_args(argv)
    return run_cli(lambda: _check(args), debug_requested(args.debug))


def _check(args: argparse.Namespace) -> int:
    try:
        result = compare(args.hf_dir, args.prompt, args.dtype)
    except ModuleNotFoundError as e:
        if str(e) != TORCH_MISSING:
            raise
        raise UserError(str(e)) from e
    result["ok"] = within_tolerance(result, args.dtype)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    exit_cli(main())
