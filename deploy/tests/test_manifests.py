"""The Helm chart and the kustomize manifests, checked the way a cluster would see them.

The chart is linted and rendered with Helm's own Go code (the PyPI package
helm-python-sdk), the overlays are built with `kubectl kustomize`, and every object is
validated against the Kubernetes 1.32 OpenAPI schemas with unknown fields rejected
(kubernetes-validate, strict). Then the properties operators rely on are asserted: RBAC
scoped to the one ConfigMap, no subPath on the map, the restricted securityContext, probes
on the admin port, the sidecar ordering, no checksum annotation tied to the map.

Run: target/venv/bin/python -m unittest discover -s deploy/tests -v
(scripts/test.sh creates target/venv with deploy/tests/requirements.txt, and runs `cargo build`
first, for `routemap check`)
"""

import pathlib
import subprocess
import tempfile
import unittest

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "stickyroute"
OVERLAY = ROOT / "deploy" / "kustomize" / "overlays" / "example"
BASE = ROOT / "deploy" / "kustomize" / "base"
TLS_OVERLAY = ROOT / "deploy" / "kustomize" / "overlays" / "tls"
KUBERNETES_VERSION = "1.32.0"
ROUTEMAP_CLI = ROOT / "target" / "debug" / "routemap"

EXAMPLE_VALUES = CHART / "examples" / "example-app-values.yaml"
# Every values file of the chart's ci/ directory, the example app's values file users are
# pointed to, and the defaults (no example app: the proxy alone).
MODES = (
    {"default": {}}
    | {
        path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text())
        for path in sorted((CHART / "ci").glob("*-values.yaml"))
    }
    | {"example-app": yaml.safe_load(EXAMPLE_VALUES.read_text())}
)
# The example app on, everything else at its default.
EXAMPLE = MODES["example-app"]
STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}
SELECTOR_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
}


# The fields of the Prometheus Operator's monitoring.coreos.com/v1 ServiceMonitor and
# PodMonitor specs, their endpoints and relabelings (the CRDs are not in kubernetes-validate).
MONITOR_SPEC_FIELDS = {
    "attachMetadata", "bodySizeLimit", "jobLabel", "keepDroppedTargets", "labelLimit",
    "labelNameLengthLimit", "labelValueLengthLimit", "namespaceSelector", "podTargetLabels",
    "sampleLimit", "scrapeClass", "scrapeProtocols", "selector", "targetLabels", "targetLimit",
}
MONITOR_ENDPOINT_FIELDS = {
    "authorization", "basicAuth", "bearerTokenSecret", "enableHttp2", "filterRunning",
    "followRedirects", "honorLabels", "honorTimestamps", "interval", "metricRelabelings",
    "params", "path", "port", "proxyUrl", "relabelings", "scheme", "scrapeTimeout",
    "targetPort", "tlsConfig",
}
RELABEL_FIELDS = {"action", "modulus", "regex", "replacement", "separator", "sourceLabels", "targetLabel"}
PROMETHEUS_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"


def render(values, namespace="shop", release="shop"):
    """The chart's objects (a list of dicts) and its NOTES.txt."""
    rendered = helm.Chart.load(str(CHART)).render(
        values, name=release, namespace=namespace
    )
    objects, notes = [], ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects, notes


def kustomize(directory):
    built = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        check=True,
        capture_output=True,
        text=True,
    )
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def of_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind, name=None):
    found = [o for o in of_kind(objects, kind) if name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workloads(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def containers(pod):
    return pod.get("initContainers", []) + pod["containers"]


def container(pod, name):
    found = [c for c in containers(pod) if c["name"] == name]
    assert len(found) == 1, f"no container {name}"
    return found[0]


def port_number(c, port):
    """A probe's port, by name or number, as the container port number."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p["name"] == port)


def arg(c, flag):
    values = [a.split("=", 1)[1] for a in c.get("args", []) if a.startswith(flag + "=")]
    return values[0] if values else None


def check_map(testcase, text, origin):
    """The map passes `routemap check` (the real CLI)."""
    testcase.assertTrue(
        ROUTEMAP_CLI.exists(), f"{ROUTEMAP_CLI} missing: run `cargo build` first"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "routemap"
        path.write_text(text)
        checked = subprocess.run(
            [str(ROUTEMAP_CLI), "check", str(path)], capture_output=True, text=True
        )
    testcase.assertEqual(checked.returncode, 0, f"{origin}: {checked.stderr}")


class Manifests(unittest.TestCase):
    """Checks shared by the chart and the kustomize output."""

    def assert_valid_kubernetes(self, objects, where):
        self.assertTrue(objects, f"{where}: nothing rendered")
        for obj in objects:
            with self.subTest(where=where, kind=obj["kind"], name=obj["metadata"]["name"]):
                if obj["apiVersion"] == "monitoring.coreos.com/v1":
                    self.assert_valid_monitor(obj, where)
                    continue
                try:
                    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
                except kubernetes_validate.ValidationError as error:
                    self.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']}: {error}")

    def assert_valid_monitor(self, obj, where):
        """A ServiceMonitor or PodMonitor, whose CRD kubernetes-validate does not have:
        its metadata and selector checked with the Kubernetes schemas (as a ConfigMap's
        metadata and a NetworkPolicy's podSelector), every other field against the fields
        the Prometheus Operator's monitoring.coreos.com/v1 API defines."""
        name = f"{where}: {obj['kind']}/{obj['metadata']['name']}"
        self.assertEqual(set(obj), {"apiVersion", "kind", "metadata", "spec"}, name)
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]},
            KUBERNETES_VERSION, strict=True,
        )
        spec = obj["spec"]
        kubernetes_validate.validate(
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "selector"}, "spec": {"podSelector": spec["selector"]}},
            KUBERNETES_VERSION, strict=True,
        )
        endpoints_field = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}[obj["kind"]]
        self.assertLessEqual(set(spec), MONITOR_SPEC_FIELDS | {endpoints_field}, name)
        self.assertLessEqual(set(spec.get("namespaceSelector", {})), {"any", "matchNames"}, name)
        self.assertTrue(spec[endpoints_field], name)
        for endpoint in spec[endpoints_field]:
            self.assertLessEqual(set(endpoint), MONITOR_ENDPOINT_FIELDS, name)
            self.assertIsInstance(endpoint["port"], str, name)
            self.assertIn(endpoint.get("scheme", "http"), ("http", "https"), name)
            self.assertTrue(endpoint.get("path", "/").startswith("/"), name)
            for field in ("interval", "scrapeTimeout"):
                if field in endpoint:
                    self.assertRegex(endpoint[field], PROMETHEUS_DURATION, f"{name} {field}")
            for field in ("relabelings", "metricRelabelings"):
                for relabeling in endpoint.get(field, []):
                    self.assertLessEqual(set(relabeling), RELABEL_FIELDS, f"{name} {field}")

    def assert_restricted(self, objects, where):
        for workload in workloads(objects):
            pod = workload["spec"]["template"]["spec"]
            security = pod["securityContext"]
            self.assertTrue(security["runAsNonRoot"], where)
            self.assertEqual(security["seccompProfile"]["type"], "RuntimeDefault", where)
            for c in containers(pod):
                s = c["securityContext"]
                self.assertIs(s["allowPrivilegeEscalation"], False, f"{where} {c['name']}")
                self.assertIs(s["readOnlyRootFilesystem"], True, f"{where} {c['name']}")
                self.assertEqual(s["capabilities"]["drop"], ["ALL"], f"{where} {c['name']}")
                self.assertNotIn("add", s["capabilities"], f"{where} {c['name']}")
                for p in c.get("ports", []):
                    self.assertGreater(p["containerPort"], 1024, f"{where} {c['name']}")
                self.assertIn("requests", c["resources"], f"{where} {c['name']}")
                self.assertIn("limits", c["resources"], f"{where} {c['name']}")

    def assert_no_subpath_and_no_checksum(self, objects, where):
        for workload in workloads(objects):
            pod = workload["spec"]["template"]["spec"]
            for c in containers(pod):
                for mount in c.get("volumeMounts", []):
                    self.assertNotIn("subPath", mount, f"{where}: {c['name']} {mount}")
                    self.assertNotIn("subPathExpr", mount, f"{where}: {c['name']} {mount}")
            annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
            annotations |= workload["metadata"].get("annotations", {})
            for key in annotations:
                self.assertNotIn("checksum", key, f"{where}: a map edit would restart pods")

    def assert_probes_on_admin_ports(self, objects, where):
        for workload in workloads(objects):
            pod = workload["spec"]["template"]["spec"]
            for c in containers(pod):
                if not c["name"].startswith("stickyroute-"):
                    continue
                admin = int(arg(c, "--admin-listen").rsplit(":", 1)[1])
                traffic = int(arg(c, "--listen").rsplit(":", 1)[1])
                self.assertNotEqual(admin, traffic)
                for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                    probe = c[kind]["httpGet"]
                    self.assertEqual(probe["path"], path, f"{where} {c['name']} {kind}")
                    self.assertEqual(port_number(c, probe["port"]), admin, f"{where} {kind}")

    def assert_native_sidecar(self, pod, where):
        agent = container(pod, "stickyroute-agent")
        self.assertIn(agent, pod["initContainers"], where)
        self.assertEqual(agent["restartPolicy"], "Always", where)
        # The app starts only once the agent has its map.
        self.assertEqual(agent["startupProbe"]["httpGet"]["path"], "/readyz", where)
        self.assertEqual(
            [c["name"] for c in pod["containers"]], ["app"], f"{where}: the app only"
        )

    def assert_agent_identity(self, pod, where):
        agent = container(pod, "stickyroute-agent")
        # The downward API's variables (the kustomize component also sets APP_PORT).
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in agent["env"] if "valueFrom" in e}
        self.assertEqual(
            env,
            {
                "POD_IP": "status.podIP",
                "POD_NAME": "metadata.name",
                "POD_NAMESPACE": "metadata.namespace",
            },
            where,
        )


def admin_hosts(proxy):
    """Every name given to the proxy with --admin-host."""
    values = [a.split("=", 1)[1] for a in proxy["args"] if a.startswith("--admin-host=")]
    return ",".join(values).split(",")


class HelmChart(Manifests):
    def test_lint_passes_in_every_mode(self):
        for mode, values in MODES.items():
            with self.subTest(mode=mode):
                report = helm.lint(str(CHART), values, strict=True, namespace="shop")
                self.assertEqual(report["errors"], [], report)
                # Severity 1 is informational ("icon is recommended"); warnings fail.
                self.assertEqual(
                    [m for m in report["messages"] if m["severity"] > 1], [], report
                )

    def test_every_rendered_object_is_valid_kubernetes(self):
        for mode, values in MODES.items():
            objects, _ = render(values)
            self.assert_valid_kubernetes(objects, f"helm {mode}")

    def test_pods_are_locked_down_and_probed_on_the_admin_port(self):
        for mode, values in MODES.items():
            objects, _ = render(values)
            self.assert_restricted(objects, f"helm {mode}")
            self.assert_probes_on_admin_ports(objects, f"helm {mode}")
            self.assert_no_subpath_and_no_checksum(objects, f"helm {mode}")

    def test_api_mode_may_read_the_one_route_map_configmap_and_nothing_else(self):
        for mode in ("default", "api-native", "api-plain", "existing-configmap"):
            objects, _ = render(MODES[mode])
            role = one(objects, "Role", "shop-stickyroute-routemap-reader")
            map_name = "shop-routes" if mode == "existing-configmap" else "shop-stickyroute-routemap"
            proxy = container(
                one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy"
            )
            # EndpointSlices too: the proxies' own (the list of replicas) and, when the proxy
            # follows them, the members' (the example app's Service): listed by label, in
            # this namespace.
            self.assertEqual(arg(proxy, "--proxy-service"), "shop/shop-stickyroute-admin")
            slices = [
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                }
            ]
            self.assertEqual(
                role["rules"],
                [
                    {
                        "apiGroups": [""],
                        "resources": ["configmaps"],
                        "resourceNames": [map_name],
                        "verbs": ["get", "list", "watch"],
                    },
                    # The shared balancer-manager changes, in their own ConfigMap.
                    {
                        "apiGroups": [""],
                        "resources": ["configmaps"],
                        "resourceNames": ["shop-stickyroute-overrides"],
                        "verbs": ["get", "list", "watch", "update", "patch"],
                    },
                ]
                + slices,
                mode,
            )
            binding = one(objects, "RoleBinding", "shop-stickyroute-routemap-reader")
            self.assertEqual(binding["roleRef"]["name"], role["metadata"]["name"])
            account = one(objects, "ServiceAccount", "shop-stickyroute")["metadata"]["name"]
            self.assertEqual(
                binding["subjects"],
                [{"kind": "ServiceAccount", "name": account, "namespace": "shop"}],
            )
            # The app pods' own account reads the route map and nothing else: the app's
            # containers get its token too.
            agent_role = one(objects, "Role", "shop-stickyroute-agent")
            self.assertEqual(
                agent_role["rules"],
                [
                    {
                        "apiGroups": [""],
                        "resources": ["configmaps"],
                        "resourceNames": [map_name],
                        "verbs": ["get", "list", "watch"],
                    }
                ],
            )
            agent_binding = one(objects, "RoleBinding", "shop-stickyroute-agent")
            self.assertEqual(agent_binding["roleRef"]["name"], "shop-stickyroute-agent")
            self.assertEqual(
                agent_binding["subjects"],
                [{"kind": "ServiceAccount", "name": "shop-stickyroute-agent", "namespace": "shop"}],
            )
            self.assertEqual(of_kind(objects, "ClusterRole"), [])
            for workload in workloads(objects):
                pod = workload["spec"]["template"]["spec"]
                expected = account if workload["kind"] == "Deployment" else "shop-stickyroute-agent"
                self.assertEqual(pod["serviceAccountName"], expected, mode)
                for c in containers(pod):
                    if c["name"].startswith("stickyroute-"):
                        self.assertEqual(
                            arg(c, "--routemap-configmap"), f"shop/{map_name}", mode
                        )

    def test_file_mode_has_no_account_no_token_and_mounts_the_map_as_a_directory(self):
        for mode in ("file-native", "file-plain"):
            objects, _ = render(MODES[mode])
            for kind in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole"):
                self.assertEqual(of_kind(objects, kind), [], f"{mode}: {kind}")
            for workload in workloads(objects):
                pod = workload["spec"]["template"]["spec"]
                self.assertIs(pod["automountServiceAccountToken"], False, mode)
                self.assertNotIn("serviceAccountName", pod, mode)
                volume = next(v for v in pod["volumes"] if v["name"] == "routemap")
                self.assertEqual(volume["configMap"]["name"], "shop-stickyroute-routemap")
                for c in containers(pod):
                    if not c["name"].startswith("stickyroute-"):
                        continue
                    mount = next(m for m in c["volumeMounts"] if m["name"] == "routemap")
                    self.assertEqual(mount["mountPath"], "/etc/stickyroute/routemap")
                    self.assertTrue(mount["readOnly"])
                    self.assertEqual(
                        arg(c, "--routemap"), "/etc/stickyroute/routemap/routemap", mode
                    )

    def test_the_agent_is_a_native_sidecar_by_default_and_a_plain_container_as_an_option(self):
        # example-app leaves agent.nativeSidecar at its default.
        for mode in ("example-app", "api-native", "file-native"):
            objects, _ = render(MODES[mode])
            pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
            self.assert_native_sidecar(pod, mode)
            self.assert_agent_identity(pod, mode)
        for mode in ("api-plain", "file-plain"):
            objects, _ = render(MODES[mode])
            pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
            self.assertNotIn("initContainers", pod, mode)
            self.assertEqual(
                sorted(c["name"] for c in pod["containers"]), ["app", "stickyroute-agent"]
            )
            self.assertNotIn("restartPolicy", container(pod, "stickyroute-agent"))
            self.assert_agent_identity(pod, mode)

    def test_pod_name_keys_reach_the_pods_through_the_headless_service(self):
        objects, _ = render(EXAMPLE)
        statefulset = one(objects, "StatefulSet", "web")
        headless = one(objects, "Service", "web")
        self.assertEqual(headless["spec"]["clusterIP"], "None")
        self.assertEqual(statefulset["spec"]["serviceName"], "web")
        proxy = container(
            one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy"
        )
        self.assertEqual(
            arg(proxy, "--member-domain-suffix"), ".web.shop.svc.cluster.local"
        )
        agent = container(statefulset["spec"]["template"]["spec"], "stickyroute-agent")
        self.assertEqual(int(arg(proxy, "--member-port")), int(arg(agent, "--listen").rsplit(":", 1)[1]))
        self.assertEqual(int(arg(proxy, "--agent-admin-port")), int(arg(agent, "--admin-listen").rsplit(":", 1)[1]))
        # The example's map names exactly the StatefulSet's pods, and is valid.
        configmap = one(objects, "ConfigMap", "shop-stickyroute-routemap")
        text = configmap["data"]["routemap"]
        check_map(self, text, "examples/example-app-values.yaml routeMap.content")
        keys = [line.split()[0] for line in text.splitlines() if line.split() and not line.startswith("#")]
        self.assertEqual(keys, [f"web-{i}" for i in range(statefulset["spec"]["replicas"])])

    def test_a_pod_drains_before_its_app_stops_and_stays_reachable_meanwhile(self):
        objects, _ = render(EXAMPLE | {"agent": {"drainTimeoutSeconds": 90, "gracePeriodSeconds": 15}})
        headless = one(objects, "Service", "web")
        self.assertIs(headless["spec"]["publishNotReadyAddresses"], True)
        pod = one(objects, "StatefulSet", "web")["spec"]["template"]["spec"]
        self.assertEqual(pod["terminationGracePeriodSeconds"], 90 + 15 + 10)
        agent = container(pod, "stickyroute-agent")
        self.assertEqual(arg(agent, "--drain-idle"), "30s")
        self.assertEqual(arg(agent, "--drain-timeout"), "90s")
        self.assertEqual(arg(agent, "--grace-period"), "15s")
        pre_stop = container(pod, "app")["lifecycle"]["preStop"]["httpGet"]
        self.assertEqual(pre_stop["path"], "/prestop")
        self.assertEqual(
            pre_stop["port"], int(arg(agent, "--admin-listen").rsplit(":", 1)[1])
        )
        proxy = container(
            one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy"
        )
        self.assertEqual(arg(proxy, "--member-service"), "shop/web")
        objects, _ = render(EXAMPLE | {"routeMap": {"source": "file"}})
        proxy = container(
            one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy"
        )
        self.assertIsNone(arg(proxy, "--member-service"), "file mode resolves names by DNS")
        objects, _ = render({"proxy": {"nofailover": True, "failoverAfter": "2m"}})
        proxy = container(
            one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy"
        )
        self.assertEqual(arg(proxy, "--failover-after"), "2m")

    def test_replicas_share_balancer_manager_changes_through_a_configmap_helm_leaves_alone(self):
        objects, _ = render({})
        overrides = one(objects, "ConfigMap", "shop-stickyroute-overrides")
        # No data: helm upgrade never puts back what it rendered over the proxies' writes.
        self.assertNotIn("data", overrides)
        self.assertEqual(overrides["metadata"]["annotations"]["helm.sh/resource-policy"], "keep")
        proxy = container(one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy")
        self.assertEqual(arg(proxy, "--overrides-configmap"), "shop/shop-stickyroute-overrides")
        for values in ({"proxy": {"sharedOverrides": False}}, MODES["file-native"]):
            with self.subTest(values=values):
                objects, _ = render(values)
                self.assertEqual(
                    [o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-overrides")],
                    [],
                )
                proxy = container(one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy")
                self.assertIsNone(arg(proxy, "--overrides-configmap"))
                for role in of_kind(objects, "Role"):
                    self.assertNotIn(
                        "shop-stickyroute-overrides",
                        [n for r in role["rules"] for n in r.get("resourceNames", [])],
                    )

    def test_the_proxy_runs_two_replicas_with_a_disruption_budget_and_labels(self):
        objects, _ = render({})
        deployment = one(objects, "Deployment")
        self.assertGreaterEqual(deployment["spec"]["replicas"], 2)
        budget = one(objects, "PodDisruptionBudget")
        self.assertEqual(budget["spec"]["maxUnavailable"], 1)
        self.assertEqual(
            budget["spec"]["selector"]["matchLabels"],
            deployment["spec"]["selector"]["matchLabels"],
        )
        service = one(objects, "Service", "shop-stickyroute")
        self.assertEqual(service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"])
        for obj in objects:
            labels = obj["metadata"].get("labels", {})
            self.assertLessEqual(STANDARD_LABELS, set(labels), f"{obj['kind']}/{obj['metadata']['name']}")
        for workload in workloads(objects):
            self.assertEqual(set(workload["spec"]["selector"]["matchLabels"]), SELECTOR_LABELS)

    def test_the_balancer_manager_answers_to_its_service_names(self):
        objects, _ = render({"proxy": {"adminHosts": ["admin.shop.example"], "maxConnections": 5000}})
        proxy = container(
            one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy"
        )
        names = admin_hosts(proxy)
        service = one(objects, "Service", "shop-stickyroute-admin")["metadata"]["name"]
        for name in (
            service,
            f"{service}.shop",
            f"{service}.shop.svc",
            f"{service}.shop.svc.cluster.local",
            "admin.shop.example",
        ):
            self.assertIn(name, names)
        self.assertEqual(arg(proxy, "--max-connections"), "5000")

    def test_a_map_kept_outside_the_release_is_not_rendered(self):
        objects, notes = render(MODES["existing-configmap"])
        # Only the (empty) one the proxies share their balancer-manager changes through.
        self.assertEqual(
            [o["metadata"]["name"] for o in of_kind(objects, "ConfigMap")], ["shop-stickyroute-overrides"]
        )
        self.assertEqual(of_kind(objects, "StatefulSet"), [])
        proxy = container(one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy")
        self.assertEqual(arg(proxy, "--routemap-key"), "routes.txt")
        self.assertEqual(arg(proxy, "--admin-allow"), "10.8.2.0/24")
        self.assertEqual(arg(proxy, "--member-domain-suffix"), ".shop.shop.svc.cluster.local")
        self.assertIn("kubectl -n shop create configmap shop-routes", notes)
        self.assertIn("serviceAccountName: shop-stickyroute-agent", notes)

    def test_notes_explain_how_to_edit_the_map_and_compare_hashes(self):
        for mode, values in MODES.items():
            _, notes = render(values)
            self.assertIn("stickyroute_map_info", notes, mode)
            self.assertIn("/balancer-manager", notes, mode)
        self.assertIn("placeholder", notes, "the default image cannot be pulled")
        _, notes = render({"image": {"repository": "registry.example.com/stickyroute"}})
        self.assertNotIn("placeholder", notes)
        _, notes = render(MODES["file-native"])
        self.assertIn("about a minute", notes)
        _, notes = render(MODES["api-native"])
        self.assertIn("about a second", notes)

    def test_the_schema_rejects_values_that_cannot_work(self):
        for bad in (
            {"routeMap": {"source": "files"}},
            {"proxy": {"replicaz": 2}},
            {"proxy": {"port": 80}},
            {"proxy": {"lbmethod": "roundrobin"}},
            {"proxy": {"trustedProxies": ["not an address"]}},
            {"exampleApp": {"name": "Web_App"}},
            {"proxy": {"maxConnections": 0}},
            {"proxy": {"adminHosts": ["evil example"]}},
            # Kubernetes refuses externalTrafficPolicy on a ClusterIP Service.
            {"proxy": {"service": {"externalTrafficPolicy": "Local"}}},
            {"proxy": {"service": {"type": "ClusterIP", "externalTrafficPolicy": "Cluster"}}},
            {"proxy": {"tls": {"enabled": True}}},
            {"proxy": {"tls": {"httpsRedirect": True, "secrets": ["shop-tls"]}}},
            {"proxy": {"adminService": {"type": "LoadBalancer"}}},
            {"agent": {"cookie": {"sameSite": "none", "secure": "never"}}},
            {"agent": {"cookie": {"secure": "sometimes"}}},
            # The PROXY protocol is read only from trusted peers, so it needs some.
            {"proxy": {"proxyProtocol": True}},
            {"proxy": {"accessLog": {"format": "clf"}}},
            {"agent": {"accessLog": {"enabled": "yes"}}},
            # --failover-after bounds --nofailover's wait: it needs it.
            {"proxy": {"failoverAfter": "2m"}},
            {"proxy": {"memberService": "shop/web"}},
            {"agent": {"drainTimeoutSeconds": 0}},
            # File mode has no API access to watch EndpointSlices with.
            {"routeMap": {"source": "file"}, "proxy": {"memberService": "web"}},
            # File mode has no API access to share balancer-manager changes through.
            {"routeMap": {"source": "file"}, "proxy": {"sharedOverrides": True}},
            {"proxy": {"sharedOverrides": "yes"}},
        ):
            with self.subTest(values=bad):
                with self.assertRaises(helm.HelmError):
                    render(bad)


# Every new option on at once: TLS from two Secrets, a public LoadBalancer keeping client
# addresses, the agent's cookie attributes.
EVERYTHING_ON = {
    "exampleApp": {"enabled": True},
    "proxy": {
        "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local", "httpsPort": 8443},
        "adminService": {"annotations": {"prometheus.io/scrape": "true"}},
        "tls": {"enabled": True, "secrets": ["shop-tls", "api-tls"], "httpsRedirect": True},
        "trustedProxies": ["10.0.0.0/8", "fd00::/8"],
        "proxyProtocol": True,
        "accessLog": {"enabled": True, "format": "json"},
    },
    "agent": {
        "cookie": {"secure": "always", "sameSite": "none", "httpOnly": True, "maxAge": 3600},
        "accessLog": {"enabled": True},
    },
}


def args_of(c, flag):
    return [a.split("=", 1)[1] for a in c.get("args", []) if a.startswith(flag + "=")]


def proxy_of(objects):
    return container(one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy")


def agent_of(objects):
    return container(one(objects, "StatefulSet")["spec"]["template"]["spec"], "stickyroute-agent")


class HelmFrontDoor(Manifests):
    def test_lint_and_kubernetes_validation_pass_with_every_new_option_on_and_off(self):
        for name, values in (("on", EVERYTHING_ON), ("off", {}), ("file-on", EVERYTHING_ON | {"routeMap": {"source": "file"}})):
            with self.subTest(options=name):
                report = helm.lint(str(CHART), values, strict=True, namespace="shop")
                self.assertEqual(report["errors"], [], report)
                self.assertEqual([m for m in report["messages"] if m["severity"] > 1], [], report)
                objects, _ = render(values)
                self.assert_valid_kubernetes(objects, f"helm {name}")
                self.assert_restricted(objects, f"helm {name}")
                self.assert_probes_on_admin_ports(objects, f"helm {name}")
                self.assert_no_subpath_and_no_checksum(objects, f"helm {name}")

    def test_tls_secrets_are_mounted_as_directories_and_passed_as_pairs(self):
        objects, _ = render(EVERYTHING_ON)
        deployment = one(objects, "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        proxy = proxy_of(objects)
        self.assertEqual(args_of(proxy, "--tls-listen"), ["0.0.0.0:8443"])
        self.assertEqual(
            args_of(proxy, "--tls-cert"),
            ["/etc/stickyroute/tls/shop-tls/tls.crt", "/etc/stickyroute/tls/api-tls/tls.crt"],
        )
        self.assertEqual(
            args_of(proxy, "--tls-key"),
            ["/etc/stickyroute/tls/shop-tls/tls.key", "/etc/stickyroute/tls/api-tls/tls.key"],
        )
        self.assertIn("--https-redirect", proxy["args"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        for secret in ("shop-tls", "api-tls"):
            volume = next(v for v in volumes.values() if v.get("secret", {}).get("secretName") == secret)
            mount = next(m for m in proxy["volumeMounts"] if m["name"] == volume["name"])
            # A directory (no subPath, no items): the kubelet's updates reach the pod.
            self.assertEqual(mount["mountPath"], f"/etc/stickyroute/tls/{secret}")
            self.assertNotIn("subPath", mount)
            self.assertNotIn("items", volume["secret"])
            self.assertTrue(mount["readOnly"])
        self.assertIn({"name": "https", "containerPort": 8443, "protocol": "TCP"}, proxy["ports"])
        service = one(objects, "Service", "shop-stickyroute")
        self.assertIn({"name": "https", "port": 8443, "targetPort": "https", "protocol": "TCP"}, service["spec"]["ports"])

        objects, _ = render({})
        proxy = proxy_of(objects)
        for flag in ("--tls-listen", "--tls-cert", "--tls-key"):
            self.assertEqual(args_of(proxy, flag), [], flag)
        self.assertNotIn("--https-redirect", proxy["args"])
        self.assertNotIn("volumes", one(objects, "Deployment")["spec"]["template"]["spec"])
        self.assertEqual([p["name"] for p in proxy["ports"]], ["http", "admin"])
        service = one(objects, "Service", "shop-stickyroute")
        self.assertEqual([p["name"] for p in service["spec"]["ports"]], ["http"])

    def test_trusted_proxies_become_one_flag_each(self):
        proxy = proxy_of(render(EVERYTHING_ON)[0])
        self.assertEqual(args_of(proxy, "--trusted-proxy"), ["10.0.0.0/8", "fd00::/8"])
        self.assertEqual(args_of(proxy_of(render({})[0]), "--trusted-proxy"), [])

    def test_proxy_protocol_and_access_logs_become_flags_and_are_off_by_default(self):
        objects, _ = render(EVERYTHING_ON)
        proxy, agent = proxy_of(objects), agent_of(objects)
        self.assertIn("--proxy-protocol", proxy["args"])
        self.assertEqual(args_of(proxy, "--access-log"), ["-"])
        self.assertEqual(args_of(proxy, "--access-log-format"), ["json"])
        self.assertEqual(args_of(agent, "--access-log"), ["-"])
        self.assertEqual(args_of(agent, "--access-log-format"), ["combined"])
        objects, _ = render(EXAMPLE)
        proxy, agent = proxy_of(objects), agent_of(objects)
        self.assertNotIn("--proxy-protocol", proxy["args"])
        self.assertEqual(args_of(proxy, "--access-log"), [])
        self.assertEqual(args_of(agent, "--access-log"), [])

    def test_the_redirect_names_the_port_clients_reach_through_the_service(self):
        objects, _ = render({"proxy": {"tls": {"enabled": True, "secrets": ["shop-tls"], "httpsRedirect": True}}})
        proxy = proxy_of(objects)
        self.assertIn("--https-redirect", proxy["args"])
        self.assertEqual(args_of(proxy, "--https-redirect-port"), ["443"])
        self.assertEqual(args_of(proxy, "--tls-listen"), ["0.0.0.0:8443"])

    def test_the_admin_port_is_on_a_clusterip_service_even_with_a_load_balancer(self):
        objects, _ = render(EVERYTHING_ON)
        traffic = one(objects, "Service", "shop-stickyroute")
        admin = one(objects, "Service", "shop-stickyroute-admin")
        self.assertEqual(traffic["spec"]["type"], "LoadBalancer")
        self.assertEqual(traffic["spec"]["externalTrafficPolicy"], "Local")
        self.assertNotIn("admin", [p["targetPort"] for p in traffic["spec"]["ports"]])
        self.assertNotIn(9900, [p["port"] for p in traffic["spec"]["ports"]])
        self.assertEqual(admin["spec"]["type"], "ClusterIP")
        self.assertEqual(admin["spec"]["ports"], [{"name": "admin", "port": 9900, "targetPort": "admin", "protocol": "TCP"}])
        self.assertEqual(admin["metadata"]["annotations"], {"prometheus.io/scrape": "true"})
        self.assertEqual(admin["spec"]["selector"], one(objects, "Deployment")["spec"]["selector"]["matchLabels"])
        # The probes and the balancer-manager's names follow the admin port and Service.
        proxy = proxy_of(objects)
        self.assertEqual(port_number(proxy, admin["spec"]["ports"][0]["targetPort"]), 9900)
        self.assertIn("shop-stickyroute-admin.shop.svc.cluster.local", admin_hosts(proxy))
        objects, _ = render({})
        self.assertNotIn("externalTrafficPolicy", one(objects, "Service", "shop-stickyroute")["spec"])

    def test_the_agent_cookie_flags(self):
        agent = agent_of(render(EVERYTHING_ON)[0])
        self.assertEqual(args_of(agent, "--cookie-secure"), ["always"])
        self.assertEqual(args_of(agent, "--cookie-samesite"), ["none"])
        self.assertIn("--cookie-httponly", agent["args"])
        self.assertEqual(args_of(agent, "--cookie-max-age"), ["3600"])
        agent = agent_of(render(EXAMPLE)[0])
        self.assertEqual(args_of(agent, "--cookie-secure"), ["auto"])
        for flag in ("--cookie-samesite", "--cookie-max-age"):
            self.assertEqual(args_of(agent, flag), [], flag)
        self.assertNotIn("--cookie-httponly", agent["args"])


class Kustomize(Manifests):
    def test_the_example_overlay_is_valid_kubernetes(self):
        self.assert_valid_kubernetes(kustomize(OVERLAY), "kustomize overlay")
        self.assert_valid_kubernetes(kustomize(BASE), "kustomize base")

    def test_the_route_map_configmap_has_no_hash_suffix_and_is_the_one_the_role_names(self):
        objects = kustomize(OVERLAY)
        configmap = one(objects, "ConfigMap", "routemap")
        self.assertEqual(configmap["metadata"]["name"], "routemap")
        self.assertEqual(configmap["metadata"]["namespace"], "stickyroute-example")
        self.assertEqual(
            configmap["data"]["routemap"], (OVERLAY / "routemap").read_text()
        )
        check_map(self, configmap["data"]["routemap"], "overlays/example/routemap")
        role = one(objects, "Role", "stickyroute-routemap-reader")
        self.assertEqual(role["rules"][0]["resourceNames"], ["routemap"])
        self.assertEqual(role["rules"][0]["verbs"], ["get", "list", "watch"])
        self.assertEqual(
            one(objects, "Role", "stickyroute-agent")["rules"],
            [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["routemap"], "verbs": ["get", "list", "watch"]}],
        )
        for workload in workloads(objects):
            pod = workload["spec"]["template"]["spec"]
            expected = "stickyroute" if workload["kind"] == "Deployment" else "stickyroute-agent"
            self.assertEqual(pod["serviceAccountName"], expected)
            for c in containers(pod):
                if c["name"].startswith("stickyroute-"):
                    self.assertEqual(arg(c, "--routemap-configmap"), "$(POD_NAMESPACE)/routemap")
                    # $(POD_NAMESPACE) expands only if the variable is defined in the container.
                    self.assertIn("POD_NAMESPACE", [e["name"] for e in c["env"]])

    def test_the_balancer_manager_answers_to_its_service_names(self):
        objects = kustomize(BASE)
        proxy = container(
            one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy"
        )
        service = one(objects, "Service", "stickyroute-proxy-admin")["metadata"]["name"]
        names = admin_hosts(proxy)
        for name in (service, f"{service}.$(POD_NAMESPACE)", f"{service}.$(POD_NAMESPACE).svc"):
            self.assertIn(name, names)

    def test_pods_are_locked_down_with_a_native_sidecar(self):
        objects = kustomize(OVERLAY)
        self.assert_restricted(objects, "kustomize")
        self.assert_probes_on_admin_ports(objects, "kustomize")
        self.assert_no_subpath_and_no_checksum(objects, "kustomize")
        pod = one(objects, "StatefulSet")["spec"]["template"]["spec"]
        self.assert_native_sidecar(pod, "kustomize")
        self.assert_agent_identity(pod, "kustomize")
        proxy = container(one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy")
        self.assertEqual(proxy["image"], "registry.example.com/stickyroute:0.1.0")
        self.assertEqual(arg(proxy, "--member-service"), "$(POD_NAMESPACE)/web")
        self.assertEqual(arg(proxy, "--proxy-service"), "$(POD_NAMESPACE)/stickyroute-proxy-admin")
        self.assertEqual(arg(proxy, "--overrides-configmap"), "$(POD_NAMESPACE)/stickyroute-overrides")
        self.assertNotIn("data", one(objects, "ConfigMap", "stickyroute-overrides"))
        self.assertIn(
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["stickyroute-overrides"],
             "verbs": ["get", "list", "watch", "update", "patch"]},
            one(objects, "Role", "stickyroute-routemap-reader")["rules"],
        )
        rules = one(objects, "Role", "stickyroute-routemap-reader")["rules"]
        self.assertIn(
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            rules,
        )
        self.assertIs(one(objects, "Service", "web")["spec"]["publishNotReadyAddresses"], True)
        self.assertEqual(pod["terminationGracePeriodSeconds"], 150)
        self.assertEqual(container(pod, "app")["lifecycle"]["preStop"]["httpGet"]["path"], "/prestop")
        keys = [l.split()[0] for l in (OVERLAY / "routemap").read_text().splitlines() if l.split() and not l.startswith("#")]
        replicas = one(objects, "StatefulSet")["spec"]["replicas"]
        self.assertEqual(keys, [f"web-{i}" for i in range(replicas)])

    def test_the_tls_overlay_mounts_the_secret_as_a_directory_and_keeps_admin_inside(self):
        objects = kustomize(TLS_OVERLAY)
        self.assert_valid_kubernetes(objects, "kustomize tls")
        self.assert_restricted(objects, "kustomize tls")
        self.assert_no_subpath_and_no_checksum(objects, "kustomize tls")
        pod = one(objects, "Deployment")["spec"]["template"]["spec"]
        proxy = container(pod, "stickyroute-proxy")
        self.assertEqual(args_of(proxy, "--tls-listen"), ["0.0.0.0:8443"])
        self.assertEqual(args_of(proxy, "--tls-cert"), ["/etc/stickyroute/tls/stickyroute-tls/tls.crt"])
        self.assertEqual(args_of(proxy, "--tls-key"), ["/etc/stickyroute/tls/stickyroute-tls/tls.key"])
        volume = next(v for v in pod["volumes"] if v["name"] == "tls")
        self.assertEqual(volume["secret"], {"secretName": "stickyroute-tls"})
        mount = next(m for m in proxy["volumeMounts"] if m["name"] == "tls")
        self.assertEqual(mount["mountPath"], "/etc/stickyroute/tls/stickyroute-tls")
        traffic = one(objects, "Service", "stickyroute-proxy")
        self.assertEqual(traffic["spec"]["type"], "LoadBalancer")
        self.assertEqual(traffic["spec"]["externalTrafficPolicy"], "Local")
        self.assertEqual(sorted(p["name"] for p in traffic["spec"]["ports"]), ["http", "https"])
        admin = one(objects, "Service", "stickyroute-proxy-admin")
        self.assertEqual(admin["spec"]["type"], "ClusterIP")
        self.assertEqual([p["name"] for p in admin["spec"]["ports"]], ["admin"])
        self.assertEqual(args_of(proxy, "--access-log"), ["-"])
        agent = container(one(objects, "StatefulSet")["spec"]["template"]["spec"], "stickyroute-agent")
        self.assertEqual(args_of(agent, "--access-log"), ["-"])
        # Without the components: no TLS and no access log at all.
        proxy = container(one(kustomize(OVERLAY), "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy")
        self.assertEqual(args_of(proxy, "--tls-listen"), [])
        self.assertEqual(args_of(proxy, "--access-log"), [])

    def test_the_proxy_protocol_overlay_trusts_the_balancer_and_reads_its_header(self):
        objects = kustomize(ROOT / "deploy" / "kustomize" / "overlays" / "proxy-protocol")
        self.assert_valid_kubernetes(objects, "kustomize proxy-protocol")
        self.assert_restricted(objects, "kustomize proxy-protocol")
        proxy = container(one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy")
        self.assertIn("--proxy-protocol", proxy["args"])
        self.assertEqual(args_of(proxy, "--trusted-proxy"), ["10.0.0.0/8"])
        traffic = one(objects, "Service", "stickyroute-proxy")
        self.assertEqual(traffic["spec"]["type"], "LoadBalancer")
        self.assertNotIn("externalTrafficPolicy", traffic["spec"])
        admin = one(objects, "Service", "stickyroute-proxy-admin")
        self.assertEqual(admin["spec"]["type"], "ClusterIP")

if __name__ == "__main__":
    unittest.main()
