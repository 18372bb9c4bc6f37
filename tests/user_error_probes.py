"""Issue 17's probes: bad inputs and faults tried as a new user would, through the real CLIs.

    python tests/user_error_probes.py [--jobs 2] [--timeout 240] [-k NAME,NAME] [--keep DIR]

Run by hand (pytest does not collect it; a few minutes on 2 cores). Each probe runs its
commands (`python -m critique_jax.train | sample | check_hf | benchmarks.*`) in fresh
processes, on tiny models (the demo preset, one layer, two steps), with a timeout, and gets
one outcome:

  clear      exit 2 and one `error:` line on stderr that names what the probe expects, no
             traceback (and the files the probe guards are unchanged)
  success    exit 0 on a valid input, and the probe's check of the output holds
  traceback  a Python traceback on stderr
  raw        any other failure: an unexpected exit code, or an error line that does not
             name the problem
  silent     exit 0 on a wrong input, or a wrong output
  hang       no exit within the timeout

Prints one line per probe, then the count by outcome; exits 1 unless every probe got the
outcome it expects (clear for a bad input, success for a valid one). Probes that need
something this machine lacks (root for chattr/mount, torch, the real SmolLM2 directory at
$CRITIQUE_JAX_SMOLLM2 or ~/.cache/critique_jax/real_models/smollm2-135m/hf) are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from test_user_errors import snapshot  # this runner runs from tests/, beside it

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = Path(
    os.environ.get(
        "CRITIQUE_JAX_SMOLLM2",
        Path.home() / ".cache/critique_jax/real_models/smollm2-135m/hf",
    )
)
PY = sys.executable
TRAIN = [PY, "-m", "critique_jax.train"]
SAMPLE = [PY, "-m", "critique_jax.sample"]
CHECK_HF = [PY, "-m", "critique_jax.check_hf"]
# Tiny training everywhere: one layer, two steps, short rows.
TINY = ["model.overrides={num_layers: 1}", "train.steps=2", "train.batch_size=2"]
TINY += ["train.seq_len=128", "train.log_every=1"]
TINY_TTS = [
    "tts.modes=[parallel]",
    "tts.ks=[1]",
    "tts.sample={max_new_tokens: 4}",
    "tts.critique={max_new_tokens: 4}",
    "tts.refine={max_new_tokens: 4}",
]


# --------------------------------------------------------------------------- the workspace


@dataclass
class Work:
    """Files the probes share (built once) and a fresh directory per probe."""

    root: Path

    @property
    def tokenizer(self) -> Path:
        return self.root / "shared" / "demo_tokenizer"

    @property
    def data(self) -> Path:
        return self.root / "shared" / "critiques.jsonl"

    @property
    def hf(self) -> Path:
        """A 1-layer demo model with its demo tokenizer, exported as an HF directory."""
        return self.root / "shared" / "hf"

    @property
    def hf49k(self) -> Path:
        """A 1-layer model with SmolLM2's vocabulary and special ids (no tokenizer)."""
        return self.root / "shared" / "hf49k"

    def sft(self, run_dir: Path, *extra: str) -> list[str]:
        return [*TRAIN, "--config", str(REPO / "configs/critic_sft_demo.yaml"), *TINY] + [
            f"run_dir={run_dir}",
            f"model.tokenizer={self.tokenizer}",
            f"data.path={self.data}",
            *extra,
        ]

    def tts(self, run_dir: Path, *extra: str) -> list[str]:
        return [*TRAIN, "--config", str(REPO / "configs/eval_tts_demo.yaml"), *TINY_TTS] + [
            f"run_dir={run_dir}",
            "actor={preset: demo}",
            "actor.overrides={num_layers: 1}",
            "problems={kind: demo, size: 2, seed: 3}",
            *extra,
        ]

    def model_copy(self, d: Path, source: Path | None = None) -> Path:
        return Path(shutil.copytree(source or self.hf, d / "model"))


def build_shared(work: Work) -> None:
    """The demo tokenizer, a small critique data file and two exported tiny models."""
    from critique_jax.checkpoints.hf import save_hf
    from critique_jax.data.demo_tokenizer import build_demo_tokenizer
    from critique_jax.data.demo_world import generate_problems
    from critique_jax.models import preset
    from critique_jax.pipelines.loading import init_sharded_params

    problems = generate_problems(64, 0)
    texts = [t for p in problems for t in (p.question, p.solution)]
    tok = build_demo_tokenizer(texts, str(work.tokenizer), vocab_size=512)
    work.data.write_text(
        "".join(
            json.dumps({"question": p.question, "solution": p.solution, "critique": "Correct."})
            + "\n"
            for p in problems[:8]
        )
    )
    cfg = preset("demo", num_layers=1)
    save_hf(cfg, init_sharded_params(cfg, 0, None), work.hf, tok)
    big = preset("tiny", num_layers=1, vocab_size=49152, bos_token_id=1, eos_token_id=2)
    save_hf(big, init_sharded_params(big, 0, None), work.hf49k)


def changed_files(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files that existed before and were changed or removed (new files are allowed)."""
    return [k for k, digest in before.items() if after.get(k) != digest]


def earlier_run(d: Path) -> Path:
    """A run_dir holding an earlier run's files, which a refused run must leave alone."""
    run = d / "run"
    run.mkdir()
    (run / "results.json").write_text("{}\n")
    return run


# --------------------------------------------------------------------------- probes

Setup = Callable[[Work, Path], tuple[list[list[str]], Path | None]]
Check = Callable[[Path, str, str], str | None]  # (dir, stdout, stderr) -> what is wrong


@dataclass
class Probe:
    name: str
    item: str  # where the issue lists it: "1".."6" (Where it stands) or "D2".."D6" (Deliver)
    setup: Setup  # -> (commands, directory whose files must not change, or None)
    needle: str = ""  # the error line must contain it; "" = a valid input: success expected
    check: Check | None = None
    early_failures: bool = False  # commands before the last may fail (a refusal, then a fix)
    requires: Callable[[], str | None] = lambda: None  # why it cannot run here, or None
    cleanup: Callable[[Path], None] = lambda d: None


def refuse(name: str, item: str, needle: str, **kw) -> Callable[[Setup], Probe]:
    def wrap(setup: Setup) -> Probe:
        return Probe(name, item, setup, needle, **kw)

    return wrap


def accept(name: str, item: str, **kw) -> Callable[[Setup], Probe]:
    def wrap(setup: Setup) -> Probe:
        return Probe(name, item, setup, **kw)

    return wrap


def needs_root_tools() -> str | None:
    return None if os.geteuid() == 0 and shutil.which("chattr") else "needs root and chattr"


def needs_torch() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "needs torch"
    return None


def needs_smollm2() -> str | None:
    return None if (SMOLLM2 / "config.json").is_file() else f"needs {SMOLLM2}"


def chattr(flag: str, path: Path) -> None:
    subprocess.run(["chattr", flag, str(path)], capture_output=True)


PROBES: list[Probe] = []


def probe(p: Probe) -> Probe:
    PROBES.append(p)
    return p


# ---- Where it stands, 1: a hang


@probe
@refuse("unwritable_checkpoints", "1", "checkpoints", requires=needs_root_tools)
def _(w, d):
    run = d / "run"
    (run / "checkpoints").mkdir(parents=True)
    chattr("+i", run / "checkpoints")
    return [w.sft(run, "train.checkpoint_every=1")], None


_.cleanup = lambda d: chattr("-i", d / "run" / "checkpoints")


# ---- 2: 1-layer models export unloadable HF directories


@probe
@accept(
    "one_layer_sft_then_sample",
    "2",
    check=lambda d, out, err: None if "===" in out else "no sample printed",
)
def _(w, d):
    return [w.sft(d / "run"), [*SAMPLE, "--model", str(d / "run/hf"), "--prompt", "hi"]], None


@probe
@accept(
    "one_layer_check_hf",
    "D5",
    requires=needs_torch,
    check=lambda d, out, err: None if '"ok": true' in out else f"out of tolerance: {out[-200:]}",
)
def _(w, d):
    return [[*CHECK_HF, str(w.hf), "--prompt", "What is 2 + 3?"]], None


@probe
@accept("one_layer_transformers_import", "D5", requires=needs_torch)
def _(w, d):
    """A 1-layer checkpoint written by transformers imports (and samples)."""
    code = (
        "import sys, torch, transformers as t\n"
        "c = t.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,"
        " num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)\n"
        "m = t.LlamaForCausalLM(c)\n"
        "m.save_pretrained(sys.argv[1])\n"
        "t.AutoTokenizer.from_pretrained(sys.argv[2]).save_pretrained(sys.argv[1])\n"
    )
    out = d / "hf1"
    return [
        [PY, "-c", code, str(out), str(w.tokenizer)],
        [*SAMPLE, "--model", str(out), "--prompt", "hi", "--max-new-tokens", "4"],
    ], None


# ---- 3: resume with changed settings


@probe
@refuse("eval_tts_rerun_other_sampling", "3", "other settings")
def _(w, d):
    run = d / "run"
    return [w.tts(run), w.tts(run, "tts.sample={max_new_tokens: 5, temperature: 0.5}")], run


@probe
@refuse("sft_rerun_other_data_same_rows", "3", "contents")
def _(w, d):
    run, other = d / "run", d / "other.jsonl"
    rows = w.data.read_text().splitlines()
    other.write_text("\n".join(r.replace("Correct.", "Wrong.") for r in rows) + "\n")
    return [w.sft(run), w.sft(run, f"data.path={other}")], run


@probe
@refuse("rejected_resume_keeps_config_yaml", "3", "other settings")
def _(w, d):
    run = d / "run"
    return [w.sft(run), w.sft(run, "optim.learning_rate=0.5")], run


@probe
@accept("rerun_after_a_refused_first_run", "3", early_failures=True)
def _(w, d):
    """A first run refused for a missing data file, then rerun with the right one: the
    refusal left no settings behind that would refuse the fixed run."""
    run = d / "run"
    return [w.sft(run, f"data.path={d / 'missing.jsonl'}"), w.sft(run)], None


# ---- 4: range checks, before any model init


def _bad_value(name: str, override: str, needle: str) -> Probe:
    return probe(
        Probe(name, "4", lambda w, d: ([w.sft(earlier_run(d), override)], d / "run"), needle)
    )


_bad_value("steps_negative", "train.steps=-5", "train.steps=-5")
_bad_value("learning_rate_negative", "optim.learning_rate=-1e-3", "optim.learning_rate")
_bad_value("warmup_negative", "optim.warmup_steps=-2", "optim.warmup_steps=-2")
_bad_value("checkpoint_every_negative", "train.checkpoint_every=-1", "train.checkpoint_every")
_bad_value("seed_negative", "seed=-1", "seed=-1")
_bad_value("seq_len_past_context", "train.seq_len=4096", "train.seq_len=4096")
_bad_value("run_dir_no_value", "run_dir=", "run_dir has no value")
_bad_value("run_dir_empty_string", "run_dir=''", "run_dir is empty")
_bad_value("batch_not_divisible", "train.microbatches=3", "microbatches")
_bad_value("mesh_too_large", "mesh.shape=[64,1,1]", "mesh")
_bad_value("zero_layers", "model.overrides={num_layers: 0}", "num_layers")
_bad_value("unknown_key", "train.stepz=3", "train.stepz")


@probe
@refuse("empty_config_file", "4", "is empty")
def _(w, d):
    (d / "empty.yaml").write_text("")
    return [[*TRAIN, "--config", str(d / "empty.yaml")]], d


@probe
@refuse("duplicate_yaml_key", "4", "duplicate key 'train'")
def _(w, d):
    text = (REPO / "configs/critic_sft_demo.yaml").read_text()
    (d / "dup.yaml").write_text(text + "train: {steps: 3}\n")
    return [[*TRAIN, "--config", str(d / "dup.yaml"), f"run_dir={d / 'run'}"]], d


# ---- 5: corrupt or missing inputs


def _damaged(name: str, item: str, needle: str, damage: Callable[[Path], None]) -> Probe:
    def setup(w: Work, d: Path):
        model = w.model_copy(d)
        damage(model)
        return [[*SAMPLE, "--model", str(model), "--prompt", "hi"]], model

    return probe(Probe(name, item, setup, needle))


def _truncate(m: Path) -> None:
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])


def _garbage_header(m: Path) -> None:
    (m / "model.safetensors").write_bytes(struct.pack("<Q", 20) + b"not json at all!!!!!")


def _foreign_weights(m: Path) -> None:
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 256}))


def _config_key_missing(m: Path) -> None:
    cfg = json.loads((m / "config.json").read_text())
    del cfg["hidden_size"]
    (m / "config.json").write_text(json.dumps(cfg))


def _config_wrong_type(m: Path) -> None:
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": "four"}))


def _nan_weights(m: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(m / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = np.full_like(tensors[name], np.nan)
    save_file(tensors, str(m / "model.safetensors"), metadata={"format": "pt"})


_damaged("safetensors_truncated", "5", "model.safetensors", _truncate)
_damaged(
    "safetensors_random_bytes",
    "5",
    "model.safetensors",
    lambda m: (m / "model.safetensors").write_bytes(os.urandom(4096)),
)
_damaged(
    "safetensors_empty",
    "5",
    "model.safetensors",
    lambda m: (m / "model.safetensors").write_text(""),
)
_damaged("safetensors_garbage_header", "D5", "model.safetensors", _garbage_header)
_damaged("safetensors_foreign_shapes", "D5", "config.json", _foreign_weights)
_damaged(
    "config_json_not_json",
    "5",
    "config.json",
    lambda m: (m / "config.json").write_text("{not json"),
)
_damaged("config_json_missing_key", "5", "hidden_size", _config_key_missing)
_damaged("config_json_wrong_type", "D5", "config.json", _config_wrong_type)
_damaged(
    "config_json_foreign_model_type",
    "D5",
    "model_type",
    lambda m: (m / "config.json").write_text(
        json.dumps({**json.loads((m / "config.json").read_text()), "model_type": "gpt2"})
    ),
)
_damaged("nan_weights_sample", "6", "non-finite", _nan_weights)


@probe
@refuse("nan_weights_check_hf", "D5", "non-finite", requires=needs_torch)
def _(w, d):
    model = w.model_copy(d)
    _nan_weights(model)
    return [[*CHECK_HF, str(model)]], model


@probe
@refuse("missing_relative_dir", "5", "does not exist")
def _(w, d):
    return [[*SAMPLE, "--model", "runs/no_such_run/hf", "--prompt", "hi"]], None


@probe
@refuse("missing_hub_like_id", "D5", "no_such_org/no_such_model")
def _(w, d):
    return [[*SAMPLE, "--model", "no_such_org/no_such_model", "--prompt", "hi"]], None


@probe
@refuse("tokenizer_dir_missing", "5", "does not exist")
def _(w, d):
    return [w.sft(earlier_run(d), f"model.tokenizer={d / 'no_tokenizer'}")], d / "run"


def _data(name: str, item: str, needle: str, content: bytes) -> Probe:
    def setup(w: Work, d: Path):
        data = d / "data.jsonl"
        data.write_bytes(content)
        return [w.sft(earlier_run(d), f"data.path={data}")], d

    return probe(Probe(name, item, setup, needle))


_ROW = {"question": "What is 2 + 3?", "solution": "2 + 3 = 5.", "critique": "Correct."}
_data(
    "data_not_utf8", "5", "line 2: not UTF-8", (json.dumps(_ROW) + "\nCaf\xe9\n").encode("latin-1")
)
_data("data_question_int", "5", "line 1", (json.dumps({**_ROW, "question": 123}) + "\n").encode())
_data("data_empty_file", "5", "empty", b"")
_data("data_not_json", "D6", "line 1", b"{question: oops\n")


@probe
@refuse("problem_record_question_int", "5", "line 1: 'question' must be a non-empty string")
def _(w, d):
    data = d / "problems.jsonl"
    data.write_text(json.dumps({"id": "p0", "question": 123, "answer": "4"}) + "\n")
    return [w.tts(earlier_run(d), f"problems={{kind: jsonl, path: {data}}}", "critic=null")], d


@probe
@refuse("data_missing_file", "D6", "no_such.jsonl")
def _(w, d):
    return [w.sft(earlier_run(d), f"data.path={d / 'no_such.jsonl'}")], d / "run"


def _gsm8k(d: Path, rows: list[dict]) -> Path:
    path = d / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


_GSM = {"question": "Ben has 9 and buys 9. How many?", "answer": "9 + 9 = 18\n#### 18"}
_LONG = {"question": "Count the apples. " * 400, "answer": "1 + 1 = 2\n#### 2"}


def _tts_on(w: Work, d: Path, data: Path, *extra: str) -> list[str]:
    return w.tts(
        d / "run",
        f"problems={{kind: gsm8k, path: {data}}}",
        "critic=null",
        f"actor.tokenizer={w.tokenizer}",
        *extra,
    )


@probe
@refuse("gsm8k_gold_not_numeric", "6", "'eighteen'")
def _(w, d):
    data = _gsm8k(d, [{**_GSM, "answer": "9 + 9 = 18\n#### eighteen"}])
    return [_tts_on(w, d, data)], d


@probe
@refuse("over_long_question_error", "5", "problems.overlong=skip")
def _(w, d):
    data = _gsm8k(d, [_GSM, _LONG])
    return [_tts_on(w, d, data)], None


def _skipped_one(section: str) -> Check:
    def check(d: Path, out: str, err: str) -> str | None:
        results = json.loads((d / "run/results.json").read_text())
        if results.get("overlong_skipped") != {section: 1}:
            return f"results.json has overlong_skipped={results.get('overlong_skipped')}"
        return None if "skipping 1 of 2 questions" in err else "no count logged"

    return check


@probe
@accept("over_long_question_skip", "D6", check=_skipped_one("problems"))
def _(w, d):
    data = _gsm8k(d, [_GSM, _LONG])
    return [_tts_on(w, d, data, "problems.overlong=skip")], None


@probe
@accept("over_long_test_question_skip_self_talk", "D6", check=_skipped_one("test_problems"))
def _(w, d):
    """The same helper in another stage: self_talk's held-out questions."""
    data = _gsm8k(d, [_GSM, _LONG])
    return [
        [*TRAIN, "--config", str(REPO / "configs/self_talk_demo.yaml"), *TINY[1:]]
        + [
            f"run_dir={d / 'run'}",
            f"model={{preset: demo, tokenizer: {w.tokenizer}, overrides: {{num_layers: 1}}}}",
            "train_problems.size=8",
            f"test_problems={{kind: gsm8k, path: {data}, overlong: skip}}",
            "generate.max_new_tokens=4",
        ]
    ], None


@probe
@refuse("overlong_bad_choice", "D6", "problems.overlong='drop'")
def _(w, d):
    return [w.tts(earlier_run(d), "problems.overlong=drop")], d / "run"


def _warned(d: Path, out: str, err: str) -> str | None:
    return None if "passes the model's context" in err else "no warning on stderr"


@probe
@accept("prompt_plus_new_tokens_past_context", "6", check=_warned)
def _(w, d):
    return [[*SAMPLE, "--model", str(w.hf), "--prompt", "hi", "--max-new-tokens", "1100"]], None


def _tmpfs(d: Path, size: str) -> str | None:
    mount = d / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    return None if done.returncode == 0 else "mount not permitted"


@probe
@refuse(
    "disk_full_during_training",
    "5",
    "No space left",
    requires=needs_root_tools,
    cleanup=lambda d: subprocess.run(["umount", str(d / "disk")], capture_output=True),
)
def _(w, d):
    if _tmpfs(d, "1m") is not None:
        raise RuntimeError("mount -t tmpfs not permitted")
    return [w.sft(d / "disk/run", "train.checkpoint_every=1")], None


# ---- 6: a foreign tokenizer whose vocabulary fits


@probe
@refuse("foreign_tokenizer_fits_vocab", "6", "is not the one model")
def _(w, d):
    model = w.model_copy(d, w.hf49k)
    return [w.sft(earlier_run(d), f"model={{path: {model}, tokenizer: {w.tokenizer}}}")], d


@probe
@refuse("foreign_tokenizer_in_hf_dir", "6", "is not the one model")
def _(w, d):
    model = w.model_copy(d, w.hf49k)
    for f in w.tokenizer.iterdir():
        shutil.copy(f, model / f.name)
    return [[*SAMPLE, "--model", str(model), "--prompt", "hi"]], model


@probe
@accept("own_tokenizer_of_smollm2_shape", "6", requires=needs_smollm2)
def _(w, d):
    """SmolLM2's own tokenizer beside a model of its vocabulary and special ids: accepted."""
    model = w.model_copy(d, w.hf49k)
    for f in SMOLLM2.glob("*"):
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, model / f.name)
    return [[*SAMPLE, "--model", str(model), "--prompt", "hi", "--max-new-tokens", "2"]], None


@probe
@accept("real_smollm2_samples", "6", requires=needs_smollm2)
def _(w, d):
    return [[*SAMPLE, "--model", str(SMOLLM2), "--prompt", "2+2=", "--max-new-tokens", "2"]], None


# ---- Deliver 1: every CLI, benchmarks included


@probe
@refuse("sample_bad_flag_value", "D1", "top_p")
def _(w, d):
    return [[*SAMPLE, "--model", str(w.hf), "--prompt", "hi", "--top-p", "2"]], None


@probe
@refuse("sample_mesh_past_devices", "D1", "devices")
def _(w, d):
    return [[*SAMPLE, "--model", str(w.hf), "--prompt", "hi", "--mesh", "4,1,1"]], None


@probe
@refuse("check_hf_missing_dir", "D1", "does not exist", requires=needs_torch)
def _(w, d):
    return [[*CHECK_HF, str(d / "no_model")]], None


def _benchmark(name: str, module: str, needle: str, *extra: str) -> Probe:
    def setup(w: Work, d: Path):
        args = ["--model", str(d / "no_model"), *extra]
        if module == "rollouts":
            args += ["--data", str(_gsm8k(d, [_GSM]))]
        return [[PY, "-m", f"critique_jax.benchmarks.{module}", *args]], None

    return probe(Probe(name, "D1", setup, needle))


_benchmark("benchmark_sampling_missing_model", "sampling", "does not exist")
_benchmark("benchmark_rollouts_missing_model", "rollouts", "does not exist")
_benchmark("benchmark_training_missing_model", "training", "neither an HF checkpoint")


HOLD_LOCK = (
    "import sys, time\n"
    "from critique_jax.runio import run_dir_lock\n"
    "with run_dir_lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


def _stop_holder(d: Path) -> None:
    pid = d / "holder.pid"
    if pid.is_file():
        os.kill(int(pid.read_text()), 15)


@probe
@refuse("busy_run_dir", "D1", "is in use by")
def _(w, d):
    run = earlier_run(d)
    holder = subprocess.Popen(
        [PY, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    holder.stdout.readline()  # the lock is held
    d.joinpath("holder.pid").write_text(str(holder.pid))
    return [w.sft(run)], run


_.cleanup = _stop_holder


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    probe: Probe
    kind: str  # clear | success | traceback | raw | silent | hang | skipped
    detail: str = ""
    seconds: float = 0.0
    expected: bool = field(init=False)

    def __post_init__(self) -> None:
        want = "clear" if self.probe.needle else "success"
        self.expected = self.kind in (want, "skipped")


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith(("error:", "config error:"))]


def classify(p: Probe, d: Path, rc: int, out: str, err: str, changed: bool) -> Outcome:
    """One outcome from the last command's exit code and output; `changed`: files the
    probe guards were changed or removed."""
    lines = error_lines(err)
    last = (lines or err.strip().splitlines() or [""])[-1][:300]
    if "Traceback (most recent call last)" in err:
        return Outcome(p, "traceback", last)
    if rc == 0:
        if p.needle:
            return Outcome(p, "silent", "exit 0 on a bad input")
        problem = p.check(d, out, err) if p.check else None
        return Outcome(p, "silent" if problem else "success", problem or "")
    if rc == 2 and len(lines) == 1 and (not p.needle or p.needle in lines[0]):
        if changed:
            return Outcome(p, "silent", "refused, but changed files already written")
        return Outcome(p, "clear" if p.needle else "raw", lines[0][:300])
    return Outcome(p, "raw", f"exit {rc}: {last}")


def run_probe(p: Probe, work: Work, timeout: float) -> Outcome:
    why = p.requires()
    if why:
        return Outcome(p, "skipped", why)
    d = work.root / "probes" / p.name
    d.mkdir(parents=True)
    start = time.perf_counter()
    try:
        commands, guard = p.setup(work, d)
        env = {k: v for k, v in os.environ.items() if k != "CRITIQUE_JAX_DEBUG"}
        env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
        before = None
        for i, cmd in enumerate(commands):
            last = i == len(commands) - 1
            if last and guard is not None:
                before = snapshot(guard)
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=timeout, cwd=d, env=env
                )
            except subprocess.TimeoutExpired:
                return Outcome(p, "hang", f"no exit after {timeout:.0f} s: {' '.join(cmd[2:5])}")
            (work.root / "logs" / f"{p.name}.{i}.stderr").write_text(proc.stderr)
            if not last and proc.returncode != 0 and not p.early_failures:
                return classify(p, d, proc.returncode, proc.stdout, proc.stderr, False)
        changed = before is not None and bool(changed_files(before, snapshot(guard)))
        outcome = classify(p, d, proc.returncode, proc.stdout, proc.stderr, changed)
    finally:
        p.cleanup(d)
    outcome.seconds = time.perf_counter() - start
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("-k", default="", help="only probes whose name contains one of these")
    parser.add_argument("--keep", help="work in this directory and keep it")
    args = parser.parse_args(argv)
    root = Path(args.keep or tempfile.mkdtemp(prefix="probes-"))
    for sub in ("shared", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    work = Work(root)
    build_shared(work)
    chosen = [p for p in PROBES if any(k in p.name for k in args.k.split(","))]
    with ThreadPoolExecutor(args.jobs) as pool:
        outcomes = list(pool.map(lambda p: run_probe(p, work, args.timeout), chosen))
    for o in outcomes:
        mark = "  " if o.expected else "!!"
        print(f"{mark} {o.kind:9} {o.probe.item:3} {o.probe.name:38} {o.seconds:5.1f}s {o.detail}")
    counts = Counter(o.kind for o in outcomes)
    print("outcomes:", ", ".join(f"{k} {counts[k]}" for k in sorted(counts)))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if all(o.expected for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
