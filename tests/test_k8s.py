"""The Kubernetes manifests under k8s/, rendered and held to what the code says.

Each kustomization (base, overlays/dev, overlays/prod) is rendered with ``kubectl kustomize``
(or ``kustomize build``) when one is installed, else with the small renderer below, which
covers exactly the kustomize features these manifests use (resources, namespace, patches by
kind and name, images, a configMapGenerator without hash suffix) and refuses any other. When
kubectl is there, a test checks that both renderings agree, so the fallback stays honest.

Built-in kinds are validated against the Kubernetes 1.30 OpenAPI schemas shipped inside the
kubernetes-validate package (strict: unknown fields fail). Custom resources (KEDA's
ScaledObject and TriggerAuthentication, the Prometheus Operator's PrometheusRule and
PodMonitor) have no schema there; they are checked structurally against the code instead:
one trigger per shard stream and the consumer group from ``shared.keys``, every setting
accepted by ``shared.settings``, every metric a query names exported by ``shared.metrics``.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.cli import build_parser
from shared import keys
from shared.settings import consumer_settings, producer_settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/prod", "overlays/prod-redis-cluster"]
K8S_VERSION = "1.30"
FANOUT_UID = 10001

Obj = dict[str, Any]

BUILTIN_API_VERSIONS = {
    "v1",
    "apps/v1",
    "policy/v1",
    "autoscaling/v2",
    "networking.k8s.io/v1",
}
CLUSTER_SCOPED = {"Namespace"}
POD_OWNERS = {"Deployment", "StatefulSet"}
# Lists merged item by item on `name` by a strategic-merge patch (others are replaced).
NAMED_LISTS = {"containers", "initContainers", "volumes", "env"}
# Labels a scrape adds to every series (PodMonitor, or the usual kubernetes-pods job).
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container", "endpoint", "service"}


# --- rendering -------------------------------------------------------------------------------


def _docs(path: Path) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _merge(base: Any, patch: Any, key: str = "") -> Any:
    """A strategic-merge patch, as far as these manifests use it: maps merge (null deletes),
    lists of containers/volumes/env merge by name, any other list is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for k, v in patch.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = _merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return merged
    if key in NAMED_LISTS and isinstance(base, list) and isinstance(patch, list):
        merged_list = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                merged_list[index[item["name"]]] = _merge(merged_list[index[item["name"]]], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _pod_specs(obj: Obj) -> Iterator[Obj]:
    if obj["kind"] in POD_OWNERS:
        yield obj["spec"]["template"]["spec"]


def _containers(obj: Obj) -> Iterator[Obj]:
    for spec in _pod_specs(obj):
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def _set_image(image: str, rule: Obj) -> str:
    name, _, tag = image.partition(":")
    if name != rule["name"]:
        return image
    tag = str(rule.get("newTag", tag))
    return f"{rule.get('newName', name)}:{tag}" if tag else rule.get("newName", name)


_SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "patches",
    "images",
    "configMapGenerator",
    "generatorOptions",
}


def render_fallback(directory: Path) -> list[Obj]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - _SUPPORTED
    assert not unsupported, f"{directory}: the fallback renderer does not support {unsupported}"
    objs: list[Obj] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        objs += render_fallback(path) if path.is_dir() else _docs(path)
    options = kustomization.get("generatorOptions", {})
    for gen in kustomization.get("configMapGenerator", []):
        assert options.get("disableNameSuffixHash"), "the fallback renderer writes no hash suffix"
        assert set(gen) <= {"name", "files", "options"}, gen
        labels = {**options.get("labels", {}), **gen.get("options", {}).get("labels", {})}
        metadata: Obj = {"name": gen["name"]}
        if labels:
            metadata["labels"] = labels
        data = {Path(f).name: (directory / f).read_text() for f in gen["files"]}
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    for patch_ref in kustomization.get("patches", []):
        assert set(patch_ref) == {"path"}, f"only `- path:` patches are supported: {patch_ref}"
        for patch in _docs(directory / patch_ref["path"]):
            [i] = [
                i
                for i, o in enumerate(objs)
                if (o["kind"], o["metadata"]["name"]) == (patch["kind"], patch["metadata"]["name"])
            ]
            objs[i] = _merge(objs[i], patch)
    if "namespace" in kustomization:
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    for rule in kustomization.get("images", []):
        for obj in objs:
            for container in _containers(obj):
                container["image"] = _set_image(container["image"], rule)
    return objs


def _kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@functools.cache
def _rendered_by_tool(name: str) -> tuple[Obj, ...]:
    command = _kustomize_command()
    assert command is not None
    out = subprocess.run(
        [*command, str(K8S / name)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


@functools.cache
def _rendered(name: str) -> tuple[Obj, ...]:
    if _kustomize_command():
        return _rendered_by_tool(name)
    return tuple(render_fallback(K8S / name))


def render(name: str) -> list[Obj]:
    return copy.deepcopy(list(_rendered(name)))


def _by_key(objs: list[Obj]) -> dict[tuple[str, str], Obj]:
    keyed = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    assert len(keyed) == len(objs), "two objects share a kind and name"
    return keyed


def _one(objs: list[Obj], kind: str, name: str) -> Obj:
    [obj] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def _of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


# --- what a container sees -------------------------------------------------------------------


def _secret_values(secret: Obj) -> dict[str, str]:
    values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    values.update(secret.get("stringData", {}))
    return values


def _example_secret() -> Obj:
    [secret] = _docs(K8S / "base" / "secret.example.yaml")
    return secret


def container_env(objs: list[Obj], container: Obj) -> dict[str, str]:
    """The environment a container starts with: envFrom in order, then env. A Secret the
    overlay does not ship (created by hand in prod) is taken from secret.example.yaml."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_one(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            name = source["secretRef"]["name"]
            shipped = [s for s in _of_kind(objs, "Secret") if s["metadata"]["name"] == name]
            secret = shipped[0] if shipped else _example_secret()
            assert secret["metadata"]["name"] == name
            env.update(_secret_values(secret))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def _fanout_container(objs: list[Obj], deployment: str) -> tuple[Obj, Obj]:
    obj = _one(objs, "Deployment", deployment)
    [container] = obj["spec"]["template"]["spec"]["containers"]
    return obj, container


def _port_number(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return int(number)


_UNITS = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2.0**10, "Mi": 2.0**20}
_UNITS["Gi"] = 2.0**30


def quantity(text: str | int) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(text))
    assert match and match[2] in _UNITS, f"not a quantity: {text!r}"
    return float(match[1]) * _UNITS[match[2]]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_labels(obj: Obj) -> dict[str, str]:
    labels: dict[str, str] = obj["spec"]["template"]["metadata"]["labels"]
    return labels


# --- the renderings --------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_fallback_renderer_agrees_with_kustomize(name: str) -> None:
    if _kustomize_command() is None:
        pytest.skip("neither kubectl nor kustomize is installed; the fallback renders alone")
    assert _by_key(render_fallback(K8S / name)) == _by_key(list(_rendered_by_tool(name)))


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_builtin_kinds_match_the_kubernetes_schemas(name: str) -> None:
    objs = render(name)
    builtin = [o for o in objs if o["apiVersion"] in BUILTIN_API_VERSIONS]
    custom = {o["apiVersion"].split("/")[0] for o in objs if o not in builtin}
    assert custom <= {"keda.sh", "monitoring.coreos.com"}, f"unexpected API groups: {custom}"
    assert {o["kind"] for o in builtin} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }
    problems = []
    for obj in builtin:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.path)
            problems.append(f"{obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_is_locked_down_and_sized(name: str) -> None:
    for obj in render(name):
        for spec in _pod_specs(obj):
            where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
            assert spec.get("automountServiceAccountToken") is False, where
            pod_sc = spec.get("securityContext", {})
            tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                sc = c.get("securityContext", {})
                assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
                assert sc.get("runAsUser", pod_sc.get("runAsUser", 0)) != 0, where
                assert sc.get("readOnlyRootFilesystem") is True, where
                assert sc.get("allowPrivilegeEscalation") is False, where
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
                seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
                assert seccomp.get("type") == "RuntimeDefault", where
                for resource in ("cpu", "memory"):
                    request = c["resources"]["requests"][resource]
                    limit = c["resources"]["limits"][resource]
                    assert quantity(request) <= quantity(limit), f"{where}: {resource}"
                tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                assert tmp and tmp[0]["name"] in tmp_volumes, f"{where}: no emptyDir on /tmp"
                if c["image"].split(":")[0].rsplit("/", 1)[-1] == "fanout":
                    assert sc["runAsUser"] == FANOUT_UID, where


def test_the_image_runs_fanout_as_the_uid_the_manifests_expect() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert len(stages) >= 2, "multi-stage build"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    assert re.search(rf"^USER {FANOUT_UID}(:{FANOUT_UID})?$", dockerfile, re.M)
    assert 'ENTRYPOINT ["fanout"]' in dockerfile
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert not re.search(r"apt-get|gcc|build-essential", final_stage), "no build tools"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"!pyproject.toml", "!README.md", "!services", "!shared"} <= set(ignored)


# --- the services ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_settings_parse_and_probes_hit_the_served_ports(name: str) -> None:
    objs = render(name)
    parser = build_parser()

    producer, container = _fanout_container(objs, "fanout-producer")
    env = container_env(objs, container)
    # Raises SettingsError naming a bad variable; every page with a token has its tenant.
    assert producer_settings(env).unbound_pages() == []
    args = parser.parse_args(container["args"])
    assert args.command == "producer" and args.host == "0.0.0.0"
    assert _port_number(container, "http") == args.port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert _port_number(container, container[probe]["httpGet"]["port"]) == args.port
    service = _one(objs, "Service", "fanout-producer")
    assert _matches(service["spec"]["selector"], _pod_labels(producer))
    [port] = service["spec"]["ports"]
    assert (port["name"], port["port"]) == ("http", 80)
    assert _port_number(container, port["targetPort"]) == args.port

    consumer, container = _fanout_container(objs, "fanout-consumer")
    env = container_env(objs, container)
    settings = consumer_settings(env)
    assert parser.parse_args(container["args"]).command == "consumer"
    assert _port_number(container, "metrics") == settings.metrics_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        port_ref = container[probe]["httpGet"]["port"]
        assert _port_number(container, port_ref) == settings.metrics_port
    grace = consumer["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.drain_s, "the grace period must outlast the SIGTERM drain"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_in_cluster_urls_name_services_of_the_rendering(name: str) -> None:
    objs = render(name)
    services = {s["metadata"]["name"]: s for s in _of_kind(objs, "Service")}
    for deployment in ("fanout-producer", "fanout-consumer"):
        env = container_env(objs, _fanout_container(objs, deployment)[1])
        for key in ("FANOUT_REDIS_URL", "FANOUT_GRAPH_URL"):
            match = re.match(r"^[a-z]+://(?:[^@/]*@)?([^:/]+)(?::(\d+))?", env.get(key, ""))
            if not match or "." in match[1] or "REPLACE_ME" in match[1]:
                continue  # unset, an external host, or the example Secret's placeholder
            service = services.get(match[1])
            assert service, f"{name}: {key} names Service {match[1]}, which is not rendered"
            ports = {p["port"] for p in service["spec"]["ports"]}
            assert int(match[2] or 80) in ports, f"{name}: {key}"


# --- autoscaling -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_keda_has_one_trigger_per_shard_stream(name: str) -> None:
    objs = render(name)
    consumer, container = _fanout_container(objs, "fanout-consumer")
    env = container_env(objs, container)
    shards = consumer_settings(env).shards
    [scaled] = _of_kind(objs, "ScaledObject")
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", "fanout-consumer")
    assert target["envSourceContainerName"] == container["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]

    triggers = spec["triggers"]
    assert (
        len(triggers)
        == shards
        == int(_one(objs, "ConfigMap", "fanout-config")["data"]["FANOUT_SHARDS"])
    )
    auths = {a["metadata"]["name"]: a for a in _of_kind(objs, "TriggerAuthentication")}
    read_from_env: set[str] = set()
    # Against a cluster, the scaler that follows MOVED redirects; else the single-node one.
    cluster = env.get("FANOUT_REDIS_CLUSTER") == "true"
    for shard, trigger in enumerate(triggers):
        meta = trigger["metadata"]
        assert trigger["type"] == ("redis-cluster-streams" if cluster else "redis-streams")
        assert meta["stream"] == keys.work_stream(shard)
        assert meta["consumerGroup"] == keys.GROUP
        assert meta["lagCount"].isdigit() and int(meta["lagCount"]) > 0
        assert meta["activationLagCount"].isdigit()
        # lag-based scaling only: pendingEntriesCount would switch the scaler to XPENDING
        assert not {"pendingEntriesCount", "streamLength"} & set(meta)
        if cluster:
            assert "addresses" in meta or "addressesFromEnv" in meta
        else:
            assert "address" in meta or "addressFromEnv" in meta
        read_from_env |= {v for k, v in meta.items() if k.endswith("FromEnv")}
        auth = auths[trigger["authenticationRef"]["name"]]
        for ref in auth["spec"].get("env", []):
            assert ref.get("containerName", container["name"]) == container["name"]
            read_from_env.add(ref["name"])
    missing = read_from_env - set(env)
    assert not missing, f"{name}: KEDA reads {missing} from the consumer, which lacks them"
    assert env.get("KEDA_REDIS_TLS") in {"enable", "disable"}


def test_the_manifests_ship_the_code_default_shard_count() -> None:
    default = consumer_settings({"FANOUT_PAGE_TOKENS": "1=x"}).shards
    config = _one(render("base"), "ConfigMap", "fanout-config")
    assert int(config["data"]["FANOUT_SHARDS"]) == default


def test_the_manifests_ship_the_code_default_rates() -> None:
    # Meta's brake (40/s a page) and its audio/video limit (10/s), as the code's defaults.
    default = consumer_settings({"FANOUT_PAGE_TOKENS": "1=x"})
    data = _one(render("base"), "ConfigMap", "fanout-config")["data"]
    assert int(data["FANOUT_RATE_LIMIT"]) == default.rate_limit == 40
    assert int(data["FANOUT_MEDIA_RATE_LIMIT"]) == default.media_rate_limit == 10


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_each_deployment_has_one_autoscaler_and_budgets_select_pods(name: str) -> None:
    objs = render(name)
    hpa_targets = [
        h["spec"]["scaleTargetRef"]["name"] for h in _of_kind(objs, "HorizontalPodAutoscaler")
    ]
    keda_targets = [s["spec"]["scaleTargetRef"]["name"] for s in _of_kind(objs, "ScaledObject")]
    assert hpa_targets == ["fanout-producer"] and keda_targets == ["fanout-consumer"]
    hpa = _one(objs, "HorizontalPodAutoscaler", "fanout-producer")["spec"]
    [metric] = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["minReplicas"] <= hpa["maxReplicas"]
    deployments = _of_kind(objs, "Deployment")
    for pdb in _of_kind(objs, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert [d for d in deployments if _matches(selector, _pod_labels(d))], pdb["metadata"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_network_policies_open_only_what_the_services_use(name: str) -> None:
    objs = render(name)
    policies = _of_kind(objs, "NetworkPolicy")

    def ports(deployment: str, direction: str) -> set[int]:
        labels = _pod_labels(_one(objs, "Deployment", deployment))
        found: set[int] = set()
        for policy in policies:
            if _matches(policy["spec"]["podSelector"]["matchLabels"], labels):
                for rule in policy["spec"].get(direction, []):
                    found |= {int(p["port"]) for p in rule.get("ports", [])}
        return found

    for deployment in ("fanout-producer", "fanout-consumer"):
        selected = [
            p
            for p in policies
            if _matches(
                p["spec"]["podSelector"]["matchLabels"],
                _pod_labels(_one(objs, "Deployment", deployment)),
            )
        ]
        assert any({"Ingress", "Egress"} <= set(p["spec"]["policyTypes"]) for p in selected)
    assert ports("fanout-producer", "ingress") == {8000}
    assert ports("fanout-consumer", "ingress") == {9100}
    assert ports("fanout-producer", "egress") >= {6379, 53}
    assert 443 not in ports("fanout-producer", "egress")
    assert ports("fanout-consumer", "egress") >= {6379, 53, 443}


# --- secrets ---------------------------------------------------------------------------------


def test_the_secret_example_holds_only_placeholders_and_is_never_applied() -> None:
    secret = _example_secret()
    assert (secret["kind"], secret["metadata"]["name"]) == ("Secret", "fanout-secrets")
    values = _secret_values(secret)
    assert {"FANOUT_API_TOKENS", "FANOUT_PAGE_TOKENS"} <= set(values)
    for key, value in values.items():
        assert "REPLACE_ME" in value, key
        rest = re.sub(r"REPLACE_ME\w*", "", value)
        assert not re.search(r"[A-Za-z0-9+/_-]{12,}", rest), f"{key} looks like a real secret"
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in base["resources"]
    # prod's Secret is created by hand: applying the overlay must never overwrite it
    assert _of_kind(render("overlays/prod"), "Secret") == []


def test_dev_tokens_only_ever_reach_fakegraph() -> None:
    objs = render("overlays/dev")
    [secret] = _of_kind(objs, "Secret")
    assert "dev" in _secret_values(secret)["FANOUT_PAGE_TOKENS"]
    env = container_env(objs, _fanout_container(objs, "fanout-consumer")[1])
    assert consumer_settings(env).graph_url.startswith("http://fakegraph:")


def test_no_meta_token_is_committed() -> None:
    for path in [*K8S.rglob("*"), ROOT / "Dockerfile"]:
        if path.is_file():
            assert not re.search(r"EAA[A-Za-z0-9]{20,}", path.read_text()), path


# --- monitoring ------------------------------------------------------------------------------


def _exported_metrics() -> dict[str, set[str]]:
    """Sample name -> label names, for every fanout_ metric shared.metrics registers."""
    import prometheus_client

    from shared import metrics

    labelnames = {
        getattr(m, "_name", ""): set(getattr(m, "_labelnames", ()))
        for m in vars(metrics).values()
        if isinstance(m, prometheus_client.metrics.MetricWrapperBase)
    }
    labelnames |= {
        m.name: set(m.labelnames) for m in vars(metrics).values() if hasattr(m, "labelnames")
    }
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }
    exported: dict[str, set[str]] = {}
    families = [*metrics.CONSUMER.collect(), *metrics.PRODUCER.collect()]
    for family in families:
        if family.name.startswith("fanout_"):
            for suffix in suffixes.get(family.type, ("",)):
                exported[family.name + suffix] = labelnames.get(family.name, set())
    return exported


def _dashboard() -> Obj:
    dashboard: Obj = json.loads((K8S / "monitoring" / "fanout-dashboard.json").read_text())
    return dashboard


def _dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"expr", "definition"} and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_exprs(item)


def _rules() -> list[Obj]:
    [rule] = _docs(K8S / "monitoring" / "prometheusrule.yaml")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _all_exprs() -> list[str]:
    return [*_dashboard_exprs(_dashboard()), *(r["expr"] for r in _rules())]


def test_dashboard_and_alerts_query_only_exported_metrics() -> None:
    exported = _exported_metrics()
    queried = {name for expr in _all_exprs() for name in re.findall(r"\bfanout_[a-z_]+", expr)}
    assert queried, "no fanout_ metric found in the dashboard or the rules"
    missing = sorted(queried - set(exported))
    assert not missing, f"queried but not exported by shared/metrics.py: {missing}"


def test_queries_use_only_labels_the_metrics_have() -> None:
    exported = _exported_metrics()
    for expr in _all_exprs():
        names = set(re.findall(r"\bfanout_[a-z_]+", expr))
        known = set(TARGET_LABELS) | {"le"}
        for name in names & set(exported):
            known |= set(exported[name])
        if names - set(exported):
            continue  # reported by the test above
        selectors = re.findall(r"\b(fanout_[a-z_]+)\s*\{([^}]*)\}", expr)
        used = {m for _, body in selectors for m in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body)}
        if names:
            for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
                used |= {label.strip() for label in clause.split(",") if label.strip()}
            assert used <= known, f"{expr!r}: labels {sorted(used - known)} are not exported"


def test_queries_are_balanced_and_scrape_labels_exist() -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    for expr in _all_exprs():
        stack: list[str] = []
        for char in re.sub(r'"[^"]*"', '""', expr):
            if char in "([{":
                stack.append(char)
            elif char in pairs:
                assert stack and stack.pop() == pairs[char], expr
        assert not stack, expr
    # labels like app_kubernetes_io_component come from pod labels the PodMonitors keep
    used = {m for e in _all_exprs() for m in re.findall(r"\bapp_kubernetes_io_[a-z_]+", e)}
    for monitor in _docs(K8S / "monitoring" / "podmonitor.yaml"):
        # Prometheus turns every character outside [a-zA-Z0-9_] of a label name into "_"
        kept = {re.sub(r"\W", "_", label) for label in monitor["spec"]["podTargetLabels"]}
        assert used <= kept, monitor["metadata"]["name"]


@pytest.mark.parametrize("name", ["overlays/dev", "overlays/prod", "overlays/prod-redis-cluster"])
def test_overlays_ship_the_monitoring(name: str) -> None:
    objs = render(name)
    dashboard = _one(objs, "ConfigMap", "fanout-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["fanout-dashboard.json"])["uid"] == "fanout"
    [rule] = _of_kind(objs, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "FanoutStreamLagGrowing",
        "FanoutDeadLetters",
        "FanoutProviderErrorRatioHigh",
        "FanoutNoConsumer",
        "FanoutChunksLost",
    } <= alerts
    for r in (r for g in rule["spec"]["groups"] for r in g["rules"]):
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        assert re.fullmatch(r"\d+[smh]", r.get("for", "0s")), r["alert"]
    deployments = _of_kind(objs, "Deployment")
    for monitor in _of_kind(objs, "PodMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        [target] = [d for d in deployments if _matches(selector, _pod_labels(d))]
        [container] = target["spec"]["template"]["spec"]["containers"]
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            _port_number(container, endpoint["port"])  # the named port exists
            assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_statefulsets_are_governed_by_headless_services(name: str) -> None:
    objs = render(name)
    for sts in _of_kind(objs, "StatefulSet"):
        service = _one(objs, "Service", sts["spec"]["serviceName"])
        assert service["spec"].get("clusterIP") == "None", sts["metadata"]["name"]
        assert _matches(service["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])


def test_the_cluster_overlay_differs_from_prod_only_where_it_should() -> None:
    prod, cluster = render("overlays/prod"), render("overlays/prod-redis-cluster")
    assert _kinds_and_names(prod) == _kinds_and_names(cluster)
    _, container = _fanout_container(cluster, "fanout-consumer")
    env = container_env(cluster, container)
    assert env["FANOUT_REDIS_CLUSTER"] == "true" and env["KEDA_REDIS_ADDRESSES"]
    [scaled] = _of_kind(cluster, "ScaledObject")
    [base] = _of_kind(prod, "ScaledObject")
    assert {t["type"] for t in scaled["spec"]["triggers"]} == {"redis-cluster-streams"}
    for mine, theirs in zip(scaled["spec"]["triggers"], base["spec"]["triggers"], strict=True):
        for key in ("stream", "consumerGroup", "lagCount", "activationLagCount"):
            assert mine["metadata"][key] == theirs["metadata"][key]
    assert {k: v for k, v in scaled["spec"].items() if k != "triggers"} == {
        k: v for k, v in base["spec"].items() if k != "triggers"
    }


def _kinds_and_names(objs: list[Obj]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objs}
