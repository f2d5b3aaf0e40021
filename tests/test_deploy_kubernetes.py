"""deploy/ (kustomize base + overlays demo, production): rendered and validated offline.

- `kubectl kustomize` renders each overlay (kustomize v2 syntax: Debian's kubectl 1.20 and
  newer ones both render it);
- `kubernetes-validate --strict` checks every built-in object against the Kubernetes schemas
  (the cert-manager kinds are checked by the rules below: no CRD schema ships offline);
- rules on the rendered objects: no privileged pod, every container non-root with a read-only
  root filesystem, all capabilities dropped and seccomp RuntimeDefault, a default-deny
  NetworkPolicy in every namespace, only gateway pods admitted to the archive and the stores,
  no Secret with a literal value, pinned images, gateway replicas with a PDB and an HPA.
Each check fails on a planted mistake.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
OVERLAYS = ["demo", "production"]
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}
PINNED = re.compile(r"^[a-z0-9./_-]+(:[0-9A-Za-z_.-]*\d[0-9A-Za-z_.-]*)?(@sha256:[0-9a-f]{64})?$")


def _generator() -> Any:
    path = REPO / "idp" / "keycloak" / "generate.py"
    spec = importlib.util.spec_from_file_location("zt_kc_gen_k8s", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_text(overlay: str) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (make bootstrap installs Debian's kubernetes-client)"
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def rendered(overlay: str) -> list[dict[str, Any]]:
    if overlay not in _RENDERED:
        _RENDERED[overlay] = [d for d in yaml.safe_load_all(render_text(overlay)) if d]
    return copy.deepcopy(_RENDERED[overlay])


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VALIDATE), "--strict", "--quiet", str(path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


# ------------------------------------------------------------------ schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(render_text(overlay), encoding="utf-8")
    done = _validate(path)
    assert done.returncode == 0, done.stdout + done.stderr
    unknown = {ln for ln in done.stdout.splitlines() if "Couldn't find schema" in ln}
    assert all("cert-manager.io" in ln for ln in unknown), unknown


def test_strict_validation_fails_on_a_planted_mistake(tmp_path: Path) -> None:
    objs = rendered("demo")
    gateway = _find(objs, "Deployment", "gateway")
    gateway["spec"]["replicas"] = "two"
    dimse = _find(objs, "Deployment", "dimse")  # one error per object: a second object
    dimse["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    path = tmp_path / "planted.yaml"
    path.write_text(yaml.safe_dump_all(objs), encoding="utf-8")
    done = _validate(path)
    assert done.returncode != 0
    assert "securityContex" in done.stdout and "replicas" in done.stdout, done.stdout


# ------------------------------------------------------------------ rules


def _find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def _pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objs:
        if o["kind"] not in WORKLOADS:
            continue
        spec = o["spec"]
        if o["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        yield (
            f"{o['kind']}/{o['metadata']['name']}",
            spec["template"]["spec"] if "template" in (spec) else spec,
        )


def violations(objs: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for who, pod in _pod_specs(objs):
        psc = pod.get("securityContext") or {}
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            out.append(f"{who}: shares a host namespace")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            out.append(f"{who}: pod seccomp is not RuntimeDefault")
        if pod.get("automountServiceAccountToken") is not False:
            out.append(f"{who}: mounts a service-account token")
        for c in pod.get("initContainers", []) + pod["containers"]:
            csc = c.get("securityContext") or {}
            name = f"{who}/{c['name']}"
            user = csc.get("runAsUser", psc.get("runAsUser"))
            if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True and user != 0):
                out.append(f"{name} may run as root")
            if csc.get("privileged"):
                out.append(f"{name} is privileged")
            if csc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{name} allows privilege escalation")
            if csc.get("readOnlyRootFilesystem") is not True:
                out.append(f"{name}: root filesystem not read-only")
            if (csc.get("capabilities") or {}).get("drop") != ["ALL"] or (
                csc.get("capabilities") or {}
            ).get("add"):
                out.append(f"{name}: capabilities not all dropped")
            seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp != "RuntimeDefault":
                out.append(f"{name}: seccomp not RuntimeDefault")
            image = c["image"]
            if (
                not PINNED.match(image)
                or ":" not in image.rsplit("/", 1)[-1]
                or image.endswith(":latest")
            ):
                out.append(f"{name}: image {image!r} is not pinned")
    for o in objs:
        if o["kind"] == "Secret" and (o.get("data") or o.get("stringData")):
            out.append(f"Secret/{o['metadata']['name']} carries a literal value")
    namespaces = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
    namespaces |= {o["metadata"].get("namespace") for o in objs if o["kind"] in WORKLOADS}
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    for ns in sorted(n for n in namespaces if n):
        deny = [
            p for p in policies
            if p["metadata"].get("namespace") == ns and p["spec"].get("podSelector") == {}
            and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")
        ]  # fmt: skip
        if not deny:
            out.append(f"namespace {ns} has no default-deny NetworkPolicy")
    for p in policies:  # who may reach the archive and the stores: gateway pods only
        selector = (p["spec"].get("podSelector") or {}).get("matchLabels", {})
        if selector.get("zt/role") in ("archive", "stores"):
            for rule in p["spec"].get("ingress", []):
                for peer in rule.get("from", []):
                    role = (peer.get("podSelector") or {}).get("matchLabels", {}).get("zt/role")
                    if role != "gateway":
                        out.append(f"NetworkPolicy/{p['metadata']['name']} admits {peer}")
    gateway = next((o for o in objs if o["kind"] == "Deployment" and
                    o["metadata"]["name"] == "gateway"), None)  # fmt: skip
    if gateway is None or gateway["spec"].get("replicas", 1) < 2:
        out.append("the gateway runs fewer than 2 replicas")
    if not any(o["kind"] == "PodDisruptionBudget" for o in objs):
        out.append("no PodDisruptionBudget for the gateway")
    hpa = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    if not hpa or hpa[0]["spec"]["minReplicas"] < 2:
        out.append("no autoscaler keeping >= 2 gateways")
    return out


@pytest.mark.control("NW-3")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_follow_the_rules(overlay: str) -> None:
    assert violations(rendered(overlay)) == []


def _pod(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _find(objs, kind, name)["spec"]["template"]["spec"]
    return spec


def _root(objs: list[dict[str, Any]]) -> None:
    pod = _pod(objs, "Deployment", "orthanc")
    pod["securityContext"]["runAsUser"] = 0
    pod["containers"][0]["securityContext"]["runAsNonRoot"] = False


def _no_default_deny(objs: list[dict[str, Any]]) -> None:
    objs[:] = [o for o in objs if not (o["kind"] == "NetworkPolicy" and
               o["metadata"]["name"] == "default-deny" and
               o["metadata"]["namespace"] == "zt-archive")]  # fmt: skip


def _bad_image(objs: list[dict[str, Any]]) -> None:
    _pod(objs, "StatefulSet", "archive-db")["containers"][0]["image"] = "postgres:latest"


def _literal_secret(objs: list[dict[str, Any]]) -> None:
    objs.append({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": "archive-db", "namespace": "zt-archive"},
                 "stringData": {"password": "changeme"}})  # fmt: skip


def _privileged(objs: list[dict[str, Any]]) -> None:
    _pod(objs, "Deployment", "dimse")["containers"][0]["securityContext"]["privileged"] = True


def _archive_open(objs: list[dict[str, Any]]) -> None:
    p = _find(objs, "NetworkPolicy", "archive-from-gateway")
    p["spec"]["ingress"][0]["from"].append({"namespaceSelector": {}})


def _writable_root(objs: list[dict[str, Any]]) -> None:
    c = _pod(objs, "Deployment", "keycloak")["containers"][0]
    c["securityContext"]["readOnlyRootFilesystem"] = False


def _one_gateway(objs: list[dict[str, Any]]) -> None:
    _find(objs, "Deployment", "gateway")["spec"]["replicas"] = 1


PLANTS: dict[str, tuple[Callable[[list[dict[str, Any]]], None], str]] = {
    "pod-running-as-root": (_root, "Deployment/orthanc/orthanc may run as root"),
    "missing-network-policy": (_no_default_deny, "namespace zt-archive has no default-deny"),
    "bad-image-reference": (_bad_image, "image 'postgres:latest' is not pinned"),
    "secret-with-literal": (_literal_secret, "Secret/archive-db carries a literal value"),
    "privileged-container": (_privileged, "Deployment/dimse/dimse is privileged"),
    "archive-open-to-all": (_archive_open, "archive-from-gateway admits"),
    "writable-root-filesystem": (_writable_root, "root filesystem not read-only"),
    "single-gateway": (_one_gateway, "fewer than 2 replicas"),
}


@pytest.mark.control("NW-3")
@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_rules_fail_on_a_planted_mistake(plant: str) -> None:
    mutate, symptom = PLANTS[plant]
    objs = rendered("production")
    mutate(objs)
    found = violations(objs)
    assert any(symptom in v for v in found), found


# ------------------------------------------------------------------ cert-manager and Keycloak


def test_certificates_and_issuers() -> None:
    for overlay in OVERLAYS:
        objs = rendered(overlay)
        issuers = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "ClusterIssuer"}
        if overlay == "production":
            acme = issuers["zt-issuer"]["acme"]
            assert acme["server"].startswith("https://") and acme["solvers"]
        else:
            assert (
                "ca" in issuers["zt-issuer"] and "selfSigned" in issuers["zt-selfsigned-bootstrap"]
            )
        for cert in (o for o in objs if o["kind"] == "Certificate"):
            spec = cert["spec"]
            assert spec["secretName"] and spec["issuerRef"]["name"] in issuers, cert
            assert spec.get("isCA") or spec["dnsNames"], cert
        tls = {t["secretName"] for o in objs if o["kind"] == "Ingress" for t in o["spec"]["tls"]}
        certs = {o["spec"]["secretName"] for o in objs if o["kind"] == "Certificate"}
        assert tls <= certs


def test_keycloak_imports_the_generated_realm_with_required_secrets() -> None:
    gen = _generator()
    base_copy = (DEPLOY / "base" / "realm-dicomweb.json").read_text(encoding="utf-8")
    assert base_copy == (REPO / "idp" / "keycloak" / "realm-dicomweb.json").read_text(
        encoding="utf-8"
    ), "copy idp/keycloak/realm-dicomweb.json to deploy/base/"
    objs = rendered("production")
    kc = _pod(objs, "Deployment", "keycloak")["containers"][0]
    assert kc["image"].endswith(":" + gen.KEYCLOAK_VERSION)
    assert "--import-realm" in kc["args"]
    env = {e["name"]: e for e in kc["env"]}
    for name in set(re.findall(r"\$\{([A-Z0-9_]+)\}", base_copy)):
        source = env[name]["valueFrom"]
        ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
        assert ref and ref.get("optional") is not True, name
    for name in ("policy.yaml", "ingest-rules.yaml"):
        assert (DEPLOY / "base" / name).read_text() == (REPO / "config" / name).read_text()
