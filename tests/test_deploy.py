"""The deployment files, checked for what can be checked without a cluster or a container engine.

The Kubernetes manifests (deploy/k8s/) are validated against Kubernetes' own schemas (unknown
fields rejected), and must say what docs/deploy.md promises: one GPU per pod, readiness on
``/readyz``, liveness on ``/healthz``, a grace period that covers ``preStop`` and
``shutdown_timeout_s``, a Service on the container's port, an autoscaler on
``streamd_sessions_active``. Every setting they pass goes through ``streamd serve``'s own
parser. The image (deploy/Dockerfile) must start ``streamd serve``, stop it with the signal it
drains on, and copy every source folder the wheel is built from. Last, the container's command
line (the image's entry point, the Deployment's arguments, its environment) runs here as a real
server, with only the model, device and port swapped for this machine's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT
from dockerfile_parse import DockerfileParser
from test_packaging import SHIPPED

from streamd.config import ServeConfig, load_config
from streamd.serverproc import ServerProcess, free_port

K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
SESSIONS_METRIC = "streamd_sessions_active"
# The oldest and newest Kubernetes whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in manifests() if doc["kind"] == kind]
    return found


def container() -> dict[str, Any]:
    (only,) = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def settings(args: list[str]) -> ServeConfig:
    return load_config(ServeConfig, args)


def final_stage(dockerfile: Path) -> dict[str, list[str]]:
    """Each instruction of the last stage and its values, in order."""
    structure = DockerfileParser(str(dockerfile)).structure
    last_from = max(i for i, item in enumerate(structure) if item["instruction"] == "FROM")
    stage: dict[str, list[str]] = {}
    for item in structure[last_from:]:
        stage.setdefault(item["instruction"], []).append(item["value"])
    return stage


# ---------------------------------------------------------------------- Kubernetes
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_manifests_are_valid_kubernetes_resources(version: str):
    kinds = []
    for doc in manifests():
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["Deployment", "HorizontalPodAutoscaler", "Service"]


def test_kustomization_applies_every_manifest():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_a_pod_is_one_gpu_probed_on_readyz_and_healthz_and_drained_within_its_grace_period():
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    serving = container()
    config = settings(serving["args"])
    assert serving["resources"]["limits"]["nvidia.com/gpu"] == 1 and config.device == "cuda"
    (port,) = serving["ports"]
    assert port["containerPort"] == config.port
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")):
        assert serving[probe]["httpGet"] == {"path": path, "port": port["name"]}, probe
    # preStop runs first, then SIGTERM starts the drain: the grace period must outlast both.
    sleep, seconds = serving["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(seconds) + config.shutdown_timeout_s
    # Off loopback streamd starts only with tokens (or told to run without): docs/security.md.
    tokens = {variable["name"] for variable in serving.get("env", [])} & {"STREAMD_AUTH_TOKENS"}
    assert config.host == "0.0.0.0" and (tokens or config.auth_tokens_file or config.allow_unauthenticated)
    assert config.max_sessions_per_ip == 0, "behind a Service every client may share one address"


def test_the_service_and_the_autoscaler_point_at_the_deployment():
    deployment, service, autoscaler = (manifest(kind) for kind in ("Deployment", "Service", "HorizontalPodAutoscaler"))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == container()["ports"][0]["name"]
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = autoscaler["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == SESSIONS_METRIC
    assert 0 < int(metric["pods"]["target"]["averageValue"]) < settings(container()["args"]).max_sessions


# ---------------------------------------------------------------------- the image
def test_the_image_runs_streamd_serve_and_stops_it_with_sigterm():
    stage = final_stage(DOCKERFILE)
    assert json.loads(stage["ENTRYPOINT"][0]) == ["streamd", "serve"]
    (command,) = entry_points(group="console_scripts", name="streamd")
    assert command.value == "streamd.cli:main"
    config = settings(json.loads(stage["CMD"][0]))
    assert stage["STOPSIGNAL"] == ["SIGTERM"] and stage["EXPOSE"] == [str(config.port)]
    assert stage["USER"][0] not in ("root", "0")


def test_the_image_is_built_from_every_source_folder_of_the_wheel_and_the_tested_torch():
    needed = {*SHIPPED, "pyproject.toml", "README.md"}  # SHIPPED: the source folders of the wheel
    copied = {source for item in DockerfileParser(str(DOCKERFILE)).structure if item["instruction"] == "COPY"
              and not item["value"].startswith("--from") for source in item["value"].split()[:-1]}
    assert needed <= copied
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:] and needed <= {line[1:] for line in ignore if line.startswith("!")}
    # The torch build and index the test environment is made with (setup_env.sh).
    setup = (ROOT / "setup_env.sh").read_text()
    dockerfile = DOCKERFILE.read_text()
    version = re.search(r'TORCH_VERSION="\$\{STREAMD_TORCH_VERSION:-([^}]+)\}"', setup)[1]
    cpu_index = re.search(r'TORCH_INDEX="\$\{STREAMD_TORCH_INDEX:-([^}]+)\}"', setup)[1]
    assert f"ARG TORCH_VERSION={version}\n" in dockerfile and f"--index-url {cpu_index}" in dockerfile


def test_the_containers_command_line_serves_and_drains_on_its_stop_signal(tone_model_path: Path, tmp_path: Path):
    entrypoint = json.loads(final_stage(DOCKERFILE)["ENTRYPOINT"][0])
    serving = container()
    port = free_port()
    here = {"model": str(tone_model_path), "device": "cpu", "port": str(port)}  # this machine's
    args = [f"{key}={here[key]}" if (key := arg.partition("=")[0]) in here else arg for arg in serving["args"]]
    secrets = {variable["name"]: "test-token" for variable in serving["env"] if "secretKeyRef" in variable["valueFrom"]}
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([str(Path(sys.executable).parent / entrypoint[0]), *entrypoint[1:], *args],
                                   stdout=log, stderr=subprocess.STDOUT, env=os.environ | secrets)
    server = ServerProcess(process, port, log_path)
    try:
        deadline = time.monotonic() + 300
        while (status := probe(server, serving["readinessProbe"])) != 200:
            assert process.poll() is None, f"exited with {process.returncode}:\n{server.log_tail()}"
            assert time.monotonic() < deadline, f"not ready (last answer {status}):\n{server.log_tail()}"
            time.sleep(0.3)
        assert probe(server, serving["livenessProbe"]) == 200
        process.send_signal(getattr(signal, final_stage(DOCKERFILE)["STOPSIGNAL"][0]))
        assert process.wait(60) == 0, server.log_tail()
    finally:
        server.stop()


def probe(server: ServerProcess, spec: dict[str, Any]) -> int | str:
    """What a Kubernetes HTTP probe would get: the status, or why there was none."""
    try:
        return server.get(spec["httpGet"]["path"])[0]
    except (OSError, ValueError) as exc:
        return repr(exc)
