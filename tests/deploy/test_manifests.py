"""The committed Ray Serve config and Kubernetes manifests, checked without a cluster: they parse, name the
image the Dockerfile builds, its port, the /health probes, and the import path and flags the code defines."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from unmask.server.cli import build_parser
from unmask.server.deploy.options import APP_NAME, IMPORT_PATH, deployment_options, serve_namespace
from unmask.server.deploy.proxy import CALLBACK_ENV, CALLBACK_PATH

yaml = pytest.importorskip("yaml", reason="PyYAML (installed with the dev and ray extras) parses the manifests")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
EXPOSED = int(re.search(r"^EXPOSE\s+(\d+)", DOCKERFILE, re.M).group(1))
IMAGE_TAG = re.search(r"docker build -t (\S+) \.", DOCKERFILE).group(1)


def load(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / path).read_text()) if d]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def test_import_path_names_the_builder():
    module, _, attr = IMPORT_PATH.partition(":")
    rel = module.replace("unmask.server.", "server/").replace(".", "/") + ".py"
    tree = ast.parse((ROOT / rel).read_text())
    assert attr in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def check_serve_config(cfg: dict) -> dict:
    """The application entry of a Serve config: unmask's import path, flags the CLI accepts."""
    assert cfg["http_options"]["port"] == EXPOSED
    (app,) = cfg["applications"]
    assert app["name"] == APP_NAME and app["route_prefix"] == "/" and app["import_path"] == IMPORT_PATH
    ns = serve_namespace(app["args"])  # every key is an `unmask serve` flag with a valid value
    opts = deployment_options(ns)
    assert opts["max_ongoing_requests"] >= ns.max_num_seqs
    return app["args"]


def test_ray_serve_config():
    (cfg,) = load("ray/serve_config.yaml")
    args = check_serve_config(cfg)
    assert args["replicas"] >= 1
    assert CALLBACK_ENV in (DEPLOY / "ray/serve_config.yaml").read_text()


def test_rayservice_manifest():
    svc = by_kind(load("kubernetes/rayservice.yaml"))["RayService"]
    assert svc["apiVersion"] == "ray.io/v1"
    args = check_serve_config(yaml.safe_load(svc["spec"]["serveConfigV2"]))
    cluster = svc["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    (gpu,) = cluster["workerGroupSpecs"]
    groups = [head, gpu]
    for group in groups:
        (c,) = group["template"]["spec"]["containers"]
        assert c["image"] == f"{IMAGE_TAG}-ray:latest"
        assert {"name": CALLBACK_ENV, "value": CALLBACK_PATH} in c["env"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["serve"] == EXPOSED and str(ports["metrics"]) == group["rayStartParams"]["metrics-export-port"]
        assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": EXPOSED}
        assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthz", "port": EXPOSED}
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] >= args["num_gpus_per_replica"] > 0
    assert gpu["maxReplicas"] * worker["resources"]["limits"]["nvidia.com/gpu"] >= args["max_replicas"]
    assert gpu["template"]["spec"]["terminationGracePeriodSeconds"] > args["drain_timeout"] + 5
    assert head["rayStartParams"]["num-cpus"] == "0"


def test_ray_image_extends_the_dockerfile_image():
    text = (DEPLOY / "kubernetes/Dockerfile.ray").read_text()
    assert re.search(rf"^ARG BASE_IMAGE={re.escape(IMAGE_TAG)}$", text, re.M) and "FROM ${BASE_IMAGE}" in text
    assert '[ray]' in text and f"docker build -t {IMAGE_TAG}-ray" in text


def test_podmonitor_scrapes_the_ray_metrics_port():
    mon = by_kind(load("kubernetes/podmonitor.yaml"))["PodMonitor"]
    assert [e["port"] for e in mon["spec"]["podMetricsEndpoints"]] == ["metrics"]


def test_plain_deployment_service_and_hpa():
    docs = by_kind(load("kubernetes/deployment.yaml"))
    dep, svc, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["image"] == f"{IMAGE_TAG}:latest"
    env = {e["name"]: e["value"] for e in c["env"]}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == EXPOSED == int(env["UNMASK_PORT"]) and env["UNMASK_HOST"] == "0.0.0.0"
    args = build_parser().parse_args(["serve", *c["args"]])  # appended to the image's `unmask serve`
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert pod["spec"]["terminationGracePeriodSeconds"] > args.drain_timeout
    assert c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"] > args.drain_timeout
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"] and svc["spec"]["ports"][0]["port"] == EXPOSED
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    target = hpa["spec"]["metrics"][0]["pods"]
    assert target["metric"]["name"] == "vllm_num_requests_running"
    assert 0 < float(target["target"]["averageValue"]) <= args.max_num_seqs


def test_ci_installs_the_ray_extra_with_the_readme_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text()
    install = 'pip install -c constraints.txt -e ".[dev,ray]" && python -m pytest -q'
    assert install in readme
    assert 'pip install -q -c constraints.txt -e ".[dev,ray]" && python -m pytest -q -p no:cacheprovider' in ci
    sections = re.findall(r"^## (.+)$", readme, re.M)
    assert sections.index("Scale-out with Ray Serve") > sections.index("Serving")  # documented with the serving docs
