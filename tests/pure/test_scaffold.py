"""``aeterna init``: every profile renders and validates; the files the project ships
are these renderings; never an overwrite unless asked; a second run is "unchanged"."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

from aeterna import __version__
from aeterna.cli import main
from aeterna.loader import load_paths
from aeterna.loader.yaml_units import load_yaml_unit
from aeterna.scaffold import (
    PROFILES,
    builtin_templates,
    context_for,
    find_profile,
    render_profile,
)

ROOTS = [builtin_templates()]

# What the project ships, by profile: {rendered path: shipped file}.
SHIPPED: dict[str, dict[str, str]] = {
    "web": {"hello.yaml": "units/hello.yaml"},
    "agent": {"agent.yaml": "units/agent.yaml"},
    "worker": {"ticker.yaml": "units/ticker.yaml"},
    "socket": {"greeter.service": "units/greeter.service",
               "greeter.socket": "units/greeter.socket"},
    "container": {"Containerfile": "packaging/container/Containerfile"},
    "kubernetes": {"deployment.yaml": "packaging/kubernetes/deployment.yaml",
                   "service.yaml": "packaging/kubernetes/service.yaml",
                   "configmaps.yaml": "packaging/kubernetes/configmaps.yaml"},
}


def rendered(profile: str, **opts: Any) -> dict[str, str]:
    p = find_profile(profile, ROOTS)
    ctx = context_for(p, opts.get("name"), opts.get("port"), opts.get("app"),
                      opts.get("sets", []), ".")
    return {f.path: f.text for f in render_profile(p, ctx, ROOTS)}


def test_the_templates_are_the_profiles() -> None:
    assert sorted(p.name for p in Path(ROOTS[0]).iterdir()) == sorted(PROFILES)


@pytest.mark.parametrize("profile", sorted(SHIPPED))
def test_shipped_files_are_the_default_rendering(profile: str) -> None:
    files = rendered(profile)
    for rel, shipped in SHIPPED[profile].items():
        assert files[rel] == (ROOT / shipped).read_text(), (
            f"{shipped} differs from `aeterna init {profile}`; regenerate it with: "
            f"aeterna init {profile} {Path(shipped).parent} --force")


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_renders_and_its_units_validate(profile: str, tmp_path: Path,
                                                      capsys: Any) -> None:
    assert main(["init", profile, str(tmp_path), "--name", "shop", "--port", "8123"]) == 0
    out = capsys.readouterr().out
    assert "wrote: " in out and "\nnext: " in out and "valid: " in out
    for line in out.splitlines():
        if line.startswith("valid: "):
            assert line.endswith(": shop")
    for f in tmp_path.rglob("*.yaml"):
        docs = list(yaml.safe_load_all(f.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), f


def test_container_profile() -> None:
    files = rendered("container", name="shop", port="8123")
    cf = files["Containerfile"]
    assert 'ENTRYPOINT ["aeterna", "start", "-c", "/etc/aeterna/units"]' in cf
    assert "\nSTOPSIGNAL SIGTERM\n" in cf
    assert "HEALTHCHECK" in cf and "AETERNA_HEALTHZ=http://127.0.0.1:9090/healthz" in cf
    # By default the shipped image: Aeterna from dist/, the units from a volume.
    assert "\nCOPY dist/ /tmp/aeterna-dist/\n" in cf and "\nCOPY units/" not in cf
    unit = load_yaml_unit(files["units/shop.yaml"], "units/shop.yaml")
    assert unit.service.sockets[0].address == "0.0.0.0:8123"  # reachable from outside
    assert unit.observability.metrics_port == "0.0.0.0:9090"  # what HEALTHCHECK asks


def test_container_profile_without_dist_and_with_its_units_inside() -> None:
    """For a scaffold user with no dist/: pip installs this very version of Aeterna;
    the units and the app are copied in. The layers before differ in nothing from the
    shipped file's (one layer cache serves both)."""
    files = rendered("container", name="shop", port="8123",
                     sets=["aeterna=pip", "units=copy", "metrics_port=9100"])
    cf = files["Containerfile"]
    assert "COPY dist/" not in cf and f"aeterna=={__version__}" in cf
    assert "${PIP_INDEX_URL:+--index-url \"$PIP_INDEX_URL\"}" in cf
    assert "COPY app/ /srv/app/\nCOPY units/ /etc/aeterna/units/\nEXPOSE 8123 9100\n" in cf
    assert "AETERNA_HEALTHZ=http://127.0.0.1:9100/healthz" in cf
    shipped = (ROOT / "packaging/container/Containerfile").read_text()
    layers = shipped[shipped.index("ARG BASE="):shipped.index("# Aeterna itself")]
    assert layers in cf
    unit = load_yaml_unit(files["units/shop.yaml"], "units/shop.yaml")
    assert unit.observability.metrics_port == "0.0.0.0:9100"


def test_container_next_command(tmp_path: Path, capsys: Any) -> None:
    """The next command builds the image from what the scaffold wrote: with dist, a
    wheel of this version goes into dist/ first; with volume, the units are mounted."""
    assert main(["init", "container", str(tmp_path / "a")]) == 0
    nxt = capsys.readouterr().out.split("\nnext: ", 1)[1]
    assert nxt.startswith(f"pip wheel --no-deps -w {tmp_path}/a/dist aeterna=={__version__} "
                          f"&& podman build -t web -f {tmp_path}/a/Containerfile {tmp_path}/a")
    assert f"-v {tmp_path}/a/units:/etc/aeterna/units:ro" in nxt
    assert main(["init", "container", str(tmp_path / "b"), "--set", "aeterna=pip",
                 "--set", "units=copy"]) == 0
    nxt = capsys.readouterr().out.split("\nnext: ", 1)[1]
    assert nxt == (f"podman build -t web -f {tmp_path}/b/Containerfile {tmp_path}/b "
                   "&& podman run --rm -p 8080:8080 web\n")


def test_a_limited_variable_refuses_other_values(capsys: Any) -> None:
    assert main(["init", "container", "-", "--set", "aeterna=apt"]) == 2
    assert "--set aeterna: expected dist or pip, found 'apt'" in capsys.readouterr().err


def test_kubernetes_profile() -> None:
    files = rendered("kubernetes", name="shop", port="8123", sets=["image=reg/shop:1"])
    dep = yaml.safe_load(files["deployment.yaml"])
    svc = yaml.safe_load(files["service.yaml"])
    cm, config = yaml.safe_load_all(files["configmaps.yaml"])
    assert (dep["kind"], svc["kind"], cm["kind"]) == ("Deployment", "Service", "ConfigMap")
    # The ConfigMaps' names and the config directory follow --name unless given.
    assert (cm["metadata"]["name"], config["metadata"]["name"]) == ("shop-units", "shop-config")
    assert config["data"] == {"shop.conf": "greeting = hello\n"}
    volumes = {v["name"]: v["configMap"]["name"] for v in dep["spec"]["template"]["spec"]
               ["volumes"] if "configMap" in v}
    assert volumes == {"units": "shop-units", "config": "shop-config"}
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "reg/shop:1"
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8123,
                                                                  "metrics": 9090}
    assert {p["name"] for p in svc["spec"]["ports"]} == {"http", "metrics"}
    assert c["volumeMounts"][0]["mountPath"] == "/etc/aeterna/units"
    # The ConfigMap carries the very unit file that units/ gets, and it validates.
    assert cm["data"]["shop.yaml"] == files["units/shop.yaml"]
    unit = load_yaml_unit(cm["data"]["shop.yaml"], "shop.yaml")
    assert unit.name == "shop" and unit.orchestration.watch[-1] == "/etc/shop"
    given = rendered("kubernetes", sets=["units_configmap=mine", "config_dir=/etc/x"])
    assert "  name: mine\n" in given["configmaps.yaml"] and "/etc/x" in given["deployment.yaml"]


def test_host_profile() -> None:
    files = rendered("host", name="shop")
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(files["aeterna.service"])
    s = ini["Service"]
    assert s["Type"] == "notify" and s["KillMode"] == "mixed"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["ExecStart"].endswith("start -c /etc/aeterna/units")
    assert ini["Install"]["WantedBy"] == "multi-user.target"
    assert load_yaml_unit(files["units/shop.yaml"], "shop.yaml").name == "shop"


def test_app_option_is_one_argv(tmp_path: Path) -> None:
    files = rendered("worker", name="w", app="sh -c 'echo \"a b\" %s; sleep 1'")
    unit = load_yaml_unit(files["w.yaml"], "w.yaml")
    assert unit.service.command == ("sh", "-c", 'echo "a b" %s; sleep 1')
    svc = rendered("socket", name="s", app="python3 -c 'print(1)'")["s.service"]
    (tmp_path / "s.service").write_text(svc)
    (tmp_path / "s.socket").write_text(rendered("socket", name="s")["s.socket"])
    assert load_paths([str(tmp_path)]).by_name()["s"].service.command == (
        "python3", "-c", "print(1)")


@pytest.mark.parametrize(("args", "words"), [
    (["init", "nosuch"], "expected a profile, one of agent, container, host"),
    (["init", "web", "--port", "99999"], "--port: expected 1 to 65535"),
    (["init", "web", "--port", "http"], "--port: expected a port number"),
    (["init", "web", "--name", "a/b"], "--name: expected letters"),
    (["init", "web", "--app", "'unbalanced"], "--app: expected a command with balanced"),
    (["init", "web", "--set", "nokey"], "--set: expected KEY=VALUE"),
])
def test_bad_options_say_what_was_expected(args: list[str], words: str, tmp_path: Path,
                                           capsys: Any) -> None:
    assert main([*args[:2], str(tmp_path), *args[2:]]) == 2
    assert words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- writing
def test_second_run_is_unchanged(tmp_path: Path, capsys: Any) -> None:
    args = ["init", "socket", str(tmp_path), "--name", "s", "--port", "8200"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.count("wrote: ") == 2
    assert main(args) == 0
    second = capsys.readouterr().out
    assert second.count("unchanged: ") == 2 and "wrote" not in second


def test_refuses_to_overwrite_and_writes_nothing(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "s.service").write_text("mine\n")
    args = ["init", "socket", str(tmp_path), "--name", "s"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"conflict: {tmp_path}/s.service exists and differs" in err
    assert "--force" in err and "--skip-existing" in err
    assert (tmp_path / "s.service").read_text() == "mine\n"
    assert not (tmp_path / "s.socket").exists()  # all or nothing

    assert main([*args, "--dry-run"]) == 1  # the same refusal, listed
    assert main([*args, "--skip-existing", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would skip (exists): {tmp_path}/s.service" in out
    assert f"would write: {tmp_path}/s.socket" in out
    assert not (tmp_path / "s.socket").exists()

    assert main([*args, "--skip-existing"]) == 2  # s.service is not a valid unit: said so
    out, err = capsys.readouterr()
    assert f"skipped (exists): {tmp_path}/s.service" in out
    assert (tmp_path / "s.service").read_text() == "mine\n" and (tmp_path / "s.socket").exists()
    assert "s.service" in err  # the validation error names the file

    assert main([*args, "--force"]) == 0
    out = capsys.readouterr().out
    assert f"overwrote: {tmp_path}/s.service" in out and f"unchanged: {tmp_path}/s.socket" in out
    assert (tmp_path / "s.service").read_text().startswith("# s: a service")


def test_dry_run_writes_nothing(tmp_path: Path, capsys: Any) -> None:
    assert main(["init", "kubernetes", str(tmp_path / "k"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would write: ") == 4 and "next:" not in out
    assert not (tmp_path / "k").exists()


def test_dash_writes_one_file_to_stdout(tmp_path: Path, capsys: Any) -> None:
    assert main(["init", "web", "-", "--name", "shop"]) == 0
    out, err = capsys.readouterr()
    assert load_yaml_unit(out, "-").name == "shop" and err == ""
    assert main(["init", "socket", "-", "--name", "s"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("# s: a service") and "also in this profile: s.socket" in err
    assert main(["init", "socket", "-", "--name", "s", "--file", "s.socket"]) == 0
    assert "[Socket]" in capsys.readouterr().out
    assert main(["init", "socket", "-", "--file", "nope"]) == 2


def test_template_dir_comes_first(tmp_path: Path, capsys: Any) -> None:
    mine = tmp_path / "mine" / "web"
    mine.mkdir(parents=True)
    (mine / "profile.yaml").write_text("defaults: {name: x}\nvalidate: [__name__.yaml]\n")
    (mine / "__name__.yaml").write_text(
        "# mine\n{% include 'worker/__name__.yaml' %}")  # a built-in file, included
    out_dir = tmp_path / "out"
    assert main(["init", "web", str(out_dir), "--template-dir", str(tmp_path / "mine"),
                 "--app", "sleep 1", "--set", "summary=s"]) == 0
    text = (out_dir / "x.yaml").read_text()
    assert text.startswith("# mine\n# x: a background worker")
    (mine / "__name__.yaml").write_text("a: 1\nb: {{ nope }}\n")
    assert main(["init", "web", str(tmp_path / "o2"), "--template-dir",
                 str(tmp_path / "mine")]) == 2
    assert f"{mine}/__name__.yaml:2: template error: undefined name 'nope'" in \
        capsys.readouterr().err
