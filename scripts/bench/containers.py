"""What the images cost: sizes (against two anchors), build time cold and with the layer cache, cold
start to first answer, memory under a short load, and `docker history` checked for the CA bundle.

Builds the way the container tests do (tests/docker_kit.py: the restricted path on these machines,
around the tiny test model), so it needs a Docker engine (bash scripts/docker_setup.sh). The anchors,
built from the same base: a plain Python + torch CPU install (what the predictor is measured against),
and Python + torch CPU + TorchServe 0.12 + a JRE, the contents of the official pytorch/torchserve CPU
image, which cannot be pulled here.

    python scripts/bench_containers.py --output results/containers.json     (about 15 minutes)

Writes JSON and a PNG beside it, prints a table. Nothing here is a test: the figures depend on the
machine and the network, recorded beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from matplotlib.figure import Figure

from bench.common import REPO_ROOT, hardware, png_beside, save_png, write_json

sys.path.insert(0, str(REPO_ROOT))  # tests/ is not installed: its Docker kit is borrowed from the tree
from tests import docker_kit
from tests.helpers import make_tiny_model

ANCHORS = {
    "anchor-python-torch": "torch",
    "anchor-torchserve": '"torchserve==0.12.0" "torch-model-archiver==0.12.0"',
}
ANCHOR_DOCKERFILE = """
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG JRE=
ENV PIP_NO_CACHE_DIR=1 PIP_INDEX_URL=${PIP_INDEX_URL} TORCH_INDEX_URL=${TORCH_INDEX_URL}
RUN python3 -m venv /opt/venv
COPY docker/pip-install.sh /usr/local/bin/pip-install.sh
RUN --mount=type=secret,id=ca_bundle --mount=type=bind,source=docker/wheels,target=/wheels \
    sh /usr/local/bin/pip-install.sh torch
RUN --mount=type=secret,id=ca_bundle \
    if [ "$PACKAGES" != torch ]; then sh /usr/local/bin/pip-install.sh $PACKAGES; fi
RUN if [ -n "$JRE" ]; then apt-get update && mkdir -p /usr/share/man/man1 \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless && rm -rf /var/lib/apt/lists/*; fi
"""


def size_mb(image: str) -> float:
    return round(int(docker_kit.docker("image", "inspect", "-f", "{{.Size}}", image).stdout) / 1e6, 1)


def build_anchors(env: dict[str, str], work: Path) -> dict[str, float]:
    """Each anchor built from a one-service compose file (BuildKit, like the real images)."""
    sizes = {}
    for name, packages in ANCHORS.items():
        # `$$`: compose would interpolate the Dockerfile's own variables otherwise
        dockerfile = ANCHOR_DOCKERFILE.replace("$PACKAGES", packages).replace("$", "$$")
        compose = {
            "services": {
                name: {
                    "image": f"restar-bench/{name}:latest",
                    "build": {
                        "context": str(REPO_ROOT),
                        "dockerfile_inline": dockerfile,
                        "args": {
                            "BASE_IMAGE": env.get("RESTAR_PYTHON_IMAGE", "python:3.11-slim-bookworm"),
                            "TORCH_INDEX_URL": env.get(
                                "RESTAR_TORCH_INDEX_URL", "https://download.pytorch.org/whl/cpu"
                            ),
                            "JRE": "1" if "torchserve" in name else "",
                        },
                        "secrets": ["ca_bundle"],
                    },
                }
            },
            "secrets": {"ca_bundle": {"file": env.get("RESTAR_CA_BUNDLE", "/dev/null")}},
        }
        path = work / f"{name}.compose.json"
        path.write_text(json.dumps(compose))
        done = subprocess.run(
            ["docker", "compose", "-p", "restar-bench", "-f", str(path), "build", name],
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        sizes[name] = size_mb(f"restar-bench/{name}:latest")
    return sizes


def memory_mb(container: str) -> float:
    usage = docker_kit.docker("stats", "--no-stream", "--format", "{{.MemUsage}}", container).stdout
    value, unit = usage.split("/")[0].strip()[:-3], usage.split("/")[0].strip()[-3:]
    return round(float(value) * {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}[unit], 1)


def torchserve_figures(image: str, load_s: float, clients: int) -> dict[str, object]:
    """Cold start to the first answer, then RSS while `clients` threads post back to back."""
    started = time.monotonic()
    with docker_kit.container(image, run_args=("-p", "127.0.0.1::8080")) as name:
        url = f"http://127.0.0.1:{docker_kit.published_port(name, 8080)}"
        key, healthy_s = docker_kit.wait_until_healthy(name, url)
        headers = {"Authorization": f"Bearer {key}"}
        first = requests.post(
            f"{url}/predictions/restar", json={"text": "First!"}, headers=headers, timeout=60
        )
        first_answer_s = time.monotonic() - started
        assert first.status_code == 200, first.text
        idle_mb = memory_mb(name)
        stop, answered, samples = threading.Event(), [], []

        def client() -> None:
            while not stop.is_set():
                answer = requests.post(
                    f"{url}/predictions/restar",
                    json={"text": "Sturdy, but the lid cracked."},
                    headers=headers,
                    timeout=60,
                )
                answered.append(answer.status_code)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()
        until = time.monotonic() + load_s
        while time.monotonic() < until:
            samples.append(memory_mb(name))
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    return {
        "healthy_s": round(healthy_s, 1),
        "cold_start_to_first_answer_s": round(first_answer_s, 1),
        "rss_idle_mib": idle_mb,
        "rss_under_load_peak_mib": max(samples),
        "load": {
            "clients": clients,
            "seconds": load_s,
            "requests": len(answered),
            "failed": sum(s != 200 for s in answered),
        },
    }


def predictor_figures(image: str, work: Path, rows: int) -> dict[str, object]:
    """The baked predictor with no network: cold start to a 1-row answer, then peak RSS scoring `rows`."""
    data = work / "data"
    data.mkdir()
    data.chmod(0o777)
    (data / "one.csv").write_text("text\nGreat little box.\n")
    texts = ["Arrived late, works fine.", "Terrible, broke in a day.", "Love it!"] * (rows // 3 + 1)
    (data / "many.csv").write_text("text\n" + "\n".join(texts[:rows]) + "\n")
    args = ("--network", "none", "--read-only", "--tmpfs", "/tmp", "-v", f"{data}:/data")
    started = time.monotonic()
    done = docker_kit.docker("run", "--rm", "--label", docker_kit.TEST_LABEL, *args, image,
                             "--input", "/data/one.csv", "--output", "/data/one.out.csv")  # fmt: skip
    first_answer_s = time.monotonic() - started
    with docker_kit.container(
        image, "--input", "/data/many.csv", "--output", "/data/many.out.parquet", run_args=args
    ) as name:
        samples = []
        while docker_kit.inspect(name)["State"]["Running"]:
            try:
                samples.append(memory_mb(name))
            except (AssertionError, ValueError, KeyError):
                break
        state = docker_kit.inspect(name)["State"]
    assert done.returncode == 0 and state["ExitCode"] == 0, done.stderr[-2000:]
    return {
        "cold_start_to_first_answer_s": round(first_answer_s, 1),
        "rss_peak_mib": max(samples, default=None),
        "rows_scored": rows,
    }


def secrets_in_layers(images: list[str], ca_bundle: Path | None) -> dict[str, object]:
    """For each image: history lines naming the CA bundle, and files whose bytes are the bundle's."""
    found: dict[str, object] = {}
    digest = hashlib.sha256(ca_bundle.read_bytes()).hexdigest() if ca_bundle else None
    for image in images:
        history = docker_kit.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
        named = [
            line[:160]
            for line in history.splitlines()
            if "ca_bundle" in line and "--mount=type=secret" not in line
        ]
        same_bytes = []
        if digest:
            size = ca_bundle.stat().st_size
            command = f"find / -xdev -type f -size {size}c -exec sha256sum {{}} + 2>/dev/null || true"
            listing = docker_kit.docker(
                "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", command
            ).stdout
            same_bytes = [line.split()[1] for line in listing.splitlines() if line.startswith(digest)]
        found[image] = {"history_lines_naming_it": named, "files_with_its_bytes": same_bytes}
    return found


def plot(result: dict) -> Figure:
    sizes = result["image_size_mb"]
    figure = Figure(figsize=(8, 4), layout="constrained")
    axes = figure.subplots()
    names = list(sizes)
    colors = ["#999999" if name.startswith("anchor") else "#3b6ea8" for name in names]
    axes.barh(names, [sizes[name] for name in names], color=colors)
    for index, name in enumerate(names):
        axes.text(sizes[name], index, f" {sizes[name]:,.0f}", va="center", fontsize=8)
    axes.set_xlabel("image size (MB, uncompressed)")
    axes.set_title("Re*Star images (blue) against anchors built from the same base (grey)")
    axes.invert_yaxis()
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "results" / "containers.json")
    parser.add_argument("--load-s", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rows", type=int, default=3000)
    args = parser.parse_args()
    assert docker_kit.unavailable_reason() is None, docker_kit.unavailable_reason()

    images = {"predictor": "ml-app:v1", "predictor-baked": "ml-app:v1-baked"}
    images |= {"torchserve": "restar-torchserve:latest", "mlflow": "restar-mlflow:3.17.2"}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        model_dir = make_tiny_model(work / "model")
        docker_kit.build_env()  # the local base images first, so that the cold build times only the images
        for image in images.values():
            docker_kit.docker("image", "rm", "-f", image, check=False)
        docker_kit.docker("image", "prune", "-f")
        docker_kit.docker("builder", "prune", "-af")
        (work / "registry").mkdir()
        with docker_kit.built_images(model_dir, work / "registry") as built:
            cold_s = built.build_s
            cached_s = docker_kit.compose_build(list(images), built.env)
            sizes = {service: size_mb(image) for service, image in images.items()}
            bases = {
                tag: size_mb(tag)
                for _name, tag in docker_kit.LOCAL_BASES.values()
                if docker_kit.image_exists(tag)
            }
            anchors = build_anchors(built.env, work)
            ca = built.env.get("RESTAR_CA_BUNDLE")
            result = {
                "hardware": hardware(),
                "docker": docker_kit.docker("version", "--format", "{{.Server.Version}}").stdout.strip(),
                "path": "restricted" if "RESTAR_PYTHON_IMAGE" in built.env else "upstream",
                "build_s": {
                    "cold": round(cold_s, 1),
                    "layer_cache": round(cached_s, 1),
                    "images": list(images),
                },
                "image_size_mb": sizes | anchors,
                "base_image_size_mb": bases,
                "predictor_vs_anchor_python_torch": round(
                    sizes["predictor"] / anchors["anchor-python-torch"], 3
                ),
                "torchserve_vs_anchor_torchserve": round(
                    sizes["torchserve"] / anchors["anchor-torchserve"], 3
                ),
                "torchserve": torchserve_figures(images["torchserve"], args.load_s, args.clients),
                "predictor": predictor_figures(images["predictor-baked"], work, args.rows),
                "ca_bundle_in_layers": secrets_in_layers(list(images.values()), Path(ca) if ca else None),
            }
    write_json(result, args.output)
    save_png(plot(result), png_beside(args.output))
    for name, size in result["image_size_mb"].items():
        print(f"{name:24s} {size:8.1f} MB")
    print(json.dumps({key: result[key] for key in ("build_s", "torchserve", "predictor")}, indent=2))


if __name__ == "__main__":
    main()
