"""Where the batch-1 latency of an ONNX backend goes, and how far it is from what the hardware allows.

On ~100-word real eval texts, one at a time:
  - each stage of a pyfunc call: tokenization, the ONNX forward, calibration and the output frame (the rest
    of the inference core), and MLflow's pyfunc wrapper around it;
  - ONNX Runtime's per-operator profile of the forward;
  - the floor: the model's own matrix multiplies, same shapes, same token count, same quantization, timed
    alone; and the machine's peak GEMM throughput for those shapes at a large batch.

Writes JSON and a PNG; numbers depend on the machine, which is recorded beside them.

    python scripts/profile_latency.py --model outputs/dvc_run/model --output results/bench/profile.json
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime
import pandas as pd
from matplotlib.figure import Figure
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers import AutoConfig

from bench.common import (
    announce,
    argument_parser,
    hardware,
    mean_words,
    median_ms,
    png_beside,
    save_png,
    write_json,
)
from bench.speed import latency_texts
from restar.model.inference import InferenceCore
from restar.model.onnx_export import convert
from restar.model.onnx_scorer import ONNX_FILES, OnnxScorer, session_options
from restar.model.pyfunc import save_pyfunc


def session(path: Path, profile_prefix: str | None = None) -> onnxruntime.InferenceSession:
    """A session like the inference core's, optionally with ONNX Runtime's profiler on."""
    options = session_options()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def tokenize(scorer: OnnxScorer, text: str) -> dict:
    return scorer.tokenizer([text], truncation=True, max_length=scorer.max_length, return_tensors="np")


def stage_latencies(
    core: InferenceCore, pyfunc_dir: Path, texts: list[str], feeds: list[dict]
) -> dict[str, float]:
    """Median ms per text of each nested stage; each stage's share is what it adds to the one inside it."""
    scorer = core.scorer
    pyfunc = mlflow.pyfunc.load_model(str(pyfunc_dir))
    stages = {
        "tokenize": lambda i: tokenize(scorer, texts[i]),
        "forward": lambda i: scorer.session.run(["logits"], feeds[i]),
        "inference_core": lambda i: core.predict([texts[i]]),
        "pyfunc": lambda i: pyfunc.predict(pd.DataFrame({"text": [texts[i]]})),
    }
    for call in stages.values():  # warm up every path before timing any
        for i in range(min(10, len(texts))):
            call(i)
    return {name: per_text_median_ms(call, len(texts)) for name, call in stages.items()}


def per_text_median_ms(call: Callable[[int], object], n: int) -> float:
    """The median over texts of each text's best-of-3 median: one slow call doesn't move it."""
    return float(np.median([median_ms(lambda i=i: call(i), 3) for i in range(n)]))


def operator_profile(onnx_path: Path, feeds: list[dict], workdir: Path) -> dict[str, float]:
    """Average ms per forward spent in each ONNX operator type, from ONNX Runtime's own profiler."""
    profiled = session(onnx_path, str(workdir / "ort_profile"))
    for feed in feeds:
        profiled.run(["logits"], feed)
    events = json.loads(Path(profiled.end_profiling()).read_text())
    per_op: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    return {op: round(us / len(feeds) / 1000.0, 3) for op, us in per_op.most_common()}


def gemm_model(rows_in: int, cols_out: int, path: Path, int8: bool) -> Path:
    """One MatMul by a random (rows_in x cols_out) weight, dynamically quantized like the model's if int8."""
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((rows_in, cols_out), np.float32), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", rows_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", cols_out])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    if not int8:
        return path
    quantized = path.with_suffix(".int8.onnx")
    quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
    return quantized


def gemm_floor(
    model_dir: Path, forward: onnxruntime.InferenceSession, feeds: list[dict], int8: bool, workdir: Path
) -> dict[str, object]:
    """The encoder's matrix multiplies at the texts' mean token count, timed alone: no forward beats them.

    The machine's speed drifts by tens of percent over minutes (shared host), so each of 5 rounds times the
    real forward and the GEMMs back to back, and the ratio is taken per round.
    """
    config = AutoConfig.from_pretrained(model_dir)
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    shapes = {"qkv": (hidden, 3 * hidden), "attention_out": (hidden, hidden), "ffn_in": (hidden, inner)}
    shapes["ffn_out"] = (inner, hidden)
    tokens = round(float(np.mean([feed["input_ids"].shape[1] for feed in feeds])))
    rng = np.random.default_rng(0)
    gemms = {}
    for name, (rows_in, cols_out) in shapes.items():
        inputs = {rows: rng.standard_normal((rows, rows_in), np.float32) for rows in (tokens, 2048)}
        gemms[name] = (session(gemm_model(rows_in, cols_out, workdir / f"{name}.onnx", int8)), inputs)

    rounds = []
    for _ in range(5):
        forward_ms = float(
            np.mean([median_ms(lambda f=feed: forward.run(["logits"], f), 1) for feed in feeds])
        )
        per_layer, peak = {}, {}
        for name, (gemm, inputs) in gemms.items():
            per_layer[name] = median_ms(lambda g=gemm, x=inputs[tokens]: g.run(["y"], {"x": x}), 50)
            large_ms = median_ms(lambda g=gemm, x=inputs[2048]: g.run(["y"], {"x": x}), 5)
            peak[name] = 2048 * shapes[name][0] * shapes[name][1] / large_ms / 1e6
        rounds.append({"forward_ms": forward_ms, "per_layer": per_layer, "peak": peak})

    def median_of(key: str, name: str | None = None) -> float:
        return float(np.median([r[key] if name is None else r[key][name] for r in rounds]))

    macs_per_token = layers * sum(rows_in * cols_out for rows_in, cols_out in shapes.values())
    floors = [layers * sum(r["per_layer"].values()) for r in rounds]
    peak_gmacs = round(float(np.median([max(r["peak"].values()) for r in rounds])), 1)
    return {
        "tokens": tokens,
        "layers": layers,
        "forward_ms": round(median_of("forward_ms"), 3),
        "gemm_ms_per_layer": {name: round(median_of("per_layer", name), 4) for name in shapes},
        "gemm_floor_ms": round(float(np.median(floors)), 3),
        "forward_over_gemm_floor": round(
            float(np.median([r["forward_ms"] / f for r, f in zip(rounds, floors, strict=True)])), 3
        ),
        "gemm_gmacs_at_2048_rows": {name: round(median_of("peak", name), 1) for name in shapes},
        "peak_gmacs": peak_gmacs,
        "peak_floor_ms": round(macs_per_token * tokens / peak_gmacs / 1e6, 3),
        "encoder_macs_per_token": macs_per_token,
        "round_forward_ms": [round(r["forward_ms"], 2) for r in rounds],
        "round_gemm_floor_ms": [round(f, 2) for f in floors],
    }


def throughput_ceiling(floor: dict[str, object], tokens_per_review: float) -> float:
    """Reviews/s if every token's matrix multiplies ran at the peak GEMM rate and nothing else took time."""
    return round(floor["peak_gmacs"] * 1e9 / (floor["encoder_macs_per_token"] * tokens_per_review), 1)


def plot(report: dict) -> Figure:
    stages = report["stages_ms"]
    parts = {
        "tokenize": stages["tokenize"],
        "forward": stages["forward"],
        "calibrate + output frame": stages["inference_core"] - stages["tokenize"] - stages["forward"],
        "MLflow pyfunc wrapper": stages["pyfunc"] - stages["inference_core"],
    }
    figure = Figure(figsize=(9, 4.5))
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    start = 0.0
    for name, ms in parts.items():
        left.barh(0, ms, left=start, label=f"{name} {ms:.1f} ms")
        start += ms
    floor = report["floor"]
    left.axvline(
        floor["gemm_floor_ms"], color="black", ls="--", label=f"GEMM floor {floor['gemm_floor_ms']:.1f} ms"
    )
    left.axvline(
        floor["peak_floor_ms"], color="grey", ls=":", label=f"peak-GEMM floor {floor['peak_floor_ms']:.1f} ms"
    )
    left.set_yticks([])
    left.set_xlabel("ms, batch 1 (median)")
    left.set_title(f"pyfunc call, {report['backend']}, {report['mean_tokens']:.0f} tokens")
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ops = dict(list(report["forward_ms_by_operator"].items())[:8])
    right.barh(list(ops)[::-1], list(ops.values())[::-1])
    right.set_xlabel("ms per forward")
    right.set_title("ONNX Runtime profile of the forward")
    figure.tight_layout()
    return figure


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--model", type=Path, required=True, help="a trained Re*Star transformer model directory"
    )
    parser.add_argument("--data", type=Path, default=Path("data/frozen/eval.parquet"))
    parser.add_argument("--backend", choices=sorted(ONNX_FILES), default="onnx-int8")
    parser.add_argument("--texts", type=int, default=100)
    parser.add_argument("--output", type=Path, default=Path("outputs/bench/profile.json"))
    args = parser.parse_args()

    texts = latency_texts(pd.read_parquet(args.data), args.texts, (80, 120))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = workdir / "model"
        shutil.copytree(args.model, model_dir)
        convert(model_dir, args.backend)
        save_pyfunc(model_dir, workdir / "pyfunc")
        core = InferenceCore.from_dir(model_dir)
        scorer = core.scorer
        feeds = [scorer.feed(tokenize(scorer, text)) for text in texts]
        stages = stage_latencies(core, workdir / "pyfunc", texts, feeds)
        tokens = float(np.mean([feed["input_ids"].shape[1] for feed in feeds]))
        eval_texts = pd.read_parquet(args.data)["text"].tolist()
        eval_tokens = scorer.tokenizer(eval_texts, truncation=True, max_length=scorer.max_length)["input_ids"]
        eval_mean_tokens = float(np.mean([len(ids) for ids in eval_tokens]))
        floor = gemm_floor(model_dir, scorer.session, feeds, args.backend == "onnx-int8", workdir)
        report = {
            "backend": args.backend,
            "texts": len(texts),
            "mean_words": mean_words(texts),
            "mean_tokens": round(tokens, 1),
            "stages_ms": {name: round(ms, 3) for name, ms in stages.items()},
            "forward_ms_by_operator": operator_profile(model_dir / ONNX_FILES[args.backend], feeds, workdir),
            "floor": floor,
            "eval_mean_tokens": round(eval_mean_tokens, 1),
            "throughput_ceiling_reviews_per_s": throughput_ceiling(floor, eval_mean_tokens),
            "hardware": hardware(onnxruntime_version=onnxruntime.__version__),
        }
    announce([write_json(report, args.output), save_png(plot(report), png_beside(args.output))])
    summary = ("mean_tokens", "stages_ms", "floor", "eval_mean_tokens", "throughput_ceiling_reviews_per_s")
    print(json.dumps({key: report[key] for key in summary}, indent=2))
    print("forward by operator (ms):", report["forward_ms_by_operator"])


if __name__ == "__main__":
    main()
