"""packaging/kubernetes/*.yaml: valid for a named Kubernetes version (offline, strict), and
consistent with the units they carry: probes on the unit's metrics port, the grace period
longer than the longest drain, the watched paths mounted from the ConfigMaps."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from aeterna.loader import load_paths
from aeterna.model import UnitSpec

kubernetes_validate = pytest.importorskip("kubernetes_validate")

KUBERNETES = "1.33.0"  # the version the manifests are checked against
MANIFESTS = sorted((ROOT / "packaging" / "kubernetes").glob("*.yaml"))


def _docs() -> list[dict[str, Any]]:
    return [d for f in MANIFESTS for d in yaml.safe_load_all(f.read_text()) if d]


def _kind(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _units(tmp_path: Path) -> list[UnitSpec]:
    for key, text in _kind("ConfigMap", "web-units")["data"].items():
        (tmp_path / key).write_text(text)
    return load_paths([str(tmp_path)]).units


def test_every_manifest_validates_strictly_against_the_named_version() -> None:
    kinds = set()
    for doc in _docs():
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        kinds.add(doc["kind"])
    assert kinds == {"ConfigMap", "Deployment", "Service"}


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The check above can fail: a misspelt probe key is refused."""
    bad = copy.deepcopy(_kind("Deployment", "web"))
    probe = bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["httpGett"] = probe.pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)


def test_the_units_in_the_configmap_load(tmp_path: Path) -> None:
    names = [u.name for u in _units(tmp_path)]
    assert names == ["web"]


def test_the_deployment_matches_its_units(tmp_path: Path) -> None:
    (unit,) = _units(tmp_path)
    pod = _kind("Deployment", "web")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["metrics"] == int(unit.observability.metrics_port.rsplit(":", 1)[1])
    assert unit.observability.metrics_port.startswith("0.0.0.0:")  # the kubelet reaches it
    assert ports["http"] == int(unit.service.sockets[0].address.rsplit(":", 1)[1])
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["AETERNA_HEALTHZ"] == f"http://127.0.0.1:{ports['metrics']}/healthz"

    pause = 5 if c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"] else math.inf
    longest = max(unit.service.timeouts.stop, unit.orchestration.drain.timeout)
    assert pod["terminationGracePeriodSeconds"] > pause + longest

    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["/etc/aeterna/units"] == "units"
    assert volumes["units"]["configMap"]["name"] == "web-units"
    for path in unit.orchestration.watch:  # each watched path comes from a whole ConfigMap
        assert "configMap" in volumes[mounts[path]], path
        assert not any("subPath" in m for m in c["volumeMounts"] if m["mountPath"] == path)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {volumes[mounts[p]].get("emptyDir", {}).get("medium") for p in ("/run", "/tmp")} \
        == {"Memory"}


def test_the_service_selects_the_pods_and_names_the_metrics_port() -> None:
    svc = _kind("Service", "web")["spec"]
    labels = _kind("Deployment", "web")["spec"]["template"]["metadata"]["labels"]
    assert svc["selector"].items() <= labels.items()
    assert {p["name"]: p["targetPort"] for p in svc["ports"]} == {"http": "http",
                                                                   "metrics": "metrics"}
