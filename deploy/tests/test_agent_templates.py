"""The agent sidecar in the user's own workloads: the chart's named templates, used by a
parent chart (deploy/helm/examples/parent-chart, rendered and linted with the chart as its
dependency, as `helm dependency update` would place it), and the kustomize component
agent-sidecar on a plain user StatefulSet (deploy/kustomize/overlays/own-app).
"""

import os
import pathlib
import shutil
import tempfile
import unittest

import helm_python as helm
import yaml

from test_manifests import (
    CHART,
    EXAMPLE,
    ROOT,
    Manifests,
    arg,
    check_map,
    container,
    kustomize,
    one,
    render,
)

PARENT = ROOT / "deploy" / "helm" / "examples" / "parent-chart"
COMPONENT = ROOT / "deploy" / "kustomize" / "components" / "agent-sidecar"
OWN_APP = ROOT / "deploy" / "kustomize" / "overlays" / "own-app"
# What differs between two pods' agents by design: where the app listens, and the example's
# --track-all (whoami keeps no sessions).
PER_APP_ARGS = ("--upstream=", "--track-all")


def agent_args(agent):
    return [a for a in agent["args"] if not a.startswith(PER_APP_ARGS)]


class ParentChart(Manifests):
    """deploy/helm/examples/parent-chart with this chart as its dependency."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.chart = pathlib.Path(cls.tmp.name) / "shop"
        shutil.copytree(PARENT, cls.chart, ignore=shutil.ignore_patterns("charts"))
        shutil.copytree(CHART, cls.chart / "charts" / "stickyroute")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def render(self, values=None):
        rendered = helm.Chart.load(str(self.chart)).render(values or {}, name="shop", namespace="shop")
        return [
            doc
            for path, text in sorted(rendered.items())
            if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def shop_pod(self, objects):
        return one(objects, "StatefulSet", "shop")["spec"]["template"]

    MODES = {
        "api-native": {},
        "api-plain": {"stickyroute": {"agent": {"nativeSidecar": False}}},
        "file-native": {"stickyroute": {"routeMap": {"source": "file"}, "proxy": {"memberService": ""}}},
    }

    def test_the_parent_chart_depends_on_this_chart_s_version(self):
        parent = yaml.safe_load((PARENT / "Chart.yaml").read_text())
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        (dependency,) = parent["dependencies"]
        self.assertEqual(dependency["name"], chart["name"])
        self.assertEqual(dependency["version"], chart["version"], "bump the example parent chart's dependency too")
        self.assertEqual(dependency["repository"], "file://../../stickyroute")
        self.assertEqual((PARENT / dependency["repository"].removeprefix("file://")).resolve(), CHART)

    def test_the_parent_chart_lints_and_renders_valid_locked_down_kubernetes(self):
        for mode, values in self.MODES.items():
            with self.subTest(mode=mode):
                report = helm.lint(str(self.chart), values, strict=True, namespace="shop", with_subcharts=True)
                self.assertEqual(report["errors"], [], report)
                self.assertEqual([m for m in report["messages"] if m["severity"] > 1], [], report)
                objects = self.render(values)
                self.assert_valid_kubernetes(objects, f"parent chart {mode}")
                self.assert_restricted(objects, f"parent chart {mode}")
                self.assert_probes_on_admin_ports(objects, f"parent chart {mode}")
                self.assert_no_subpath_and_no_checksum(objects, f"parent chart {mode}")

    def test_the_user_s_statefulset_gets_the_sidecar_hook_account_and_label(self):
        objects = self.render()
        template = self.shop_pod(objects)
        pod = template["spec"]
        self.assert_native_sidecar(pod, "parent chart")
        self.assert_agent_identity(pod, "parent chart")
        agent = container(pod, "stickyroute-agent")
        self.assertEqual(arg(agent, "--upstream"), "127.0.0.1:8081")
        self.assertEqual(container(pod, "app")["ports"][0]["containerPort"], 8081)
        # The dependency's names: its route map, its agents' ServiceAccount (which their
        # Role binds: the route map, read, nothing else).
        self.assertEqual(arg(agent, "--routemap-configmap"), "shop/shop-stickyroute-routemap")
        account = one(objects, "ServiceAccount", "shop-stickyroute-agent")["metadata"]["name"]
        self.assertEqual(pod["serviceAccountName"], account)
        binding = one(objects, "RoleBinding", "shop-stickyroute-agent")
        self.assertEqual(binding["subjects"][0]["name"], account)
        # The dependency's image, at the dependency's appVersion.
        other = self.shop_pod(self.render({"stickyroute": {"image": {"repository": "registry.example.com/stickyroute"}}}))
        self.assertEqual(
            container(other["spec"], "stickyroute-agent")["image"], "registry.example.com/stickyroute:0.1.0"
        )
        # The drain: the app's preStop waits on the agent's /prestop, within the grace.
        pre_stop = container(pod, "app")["lifecycle"]["preStop"]["httpGet"]
        self.assertEqual(pre_stop, {"path": "/prestop", "port": int(arg(agent, "--admin-listen").rsplit(":", 1)[1])})
        self.assertEqual(pod["terminationGracePeriodSeconds"], 120 + 20 + 10)
        self.assertEqual(template["metadata"]["labels"]["stickyroute-agent"], "shop-stickyroute")
        # The proxy follows the parent's Service and reads the agents' /status.
        proxy = container(one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy")
        self.assertEqual(arg(proxy, "--member-service"), "shop/shop")
        self.assertEqual(arg(proxy, "--agent-admin-port"), "9901")
        service = one(objects, "Service", "shop")
        self.assertIs(service["spec"]["publishNotReadyAddresses"], True)
        self.assertEqual(service["spec"]["ports"][0]["port"], int(arg(proxy, "--member-port")))
        check_map(self, one(objects, "ConfigMap", "shop-stickyroute-routemap")["data"]["routemap"], "parent chart map")

    def test_plain_sidecar_and_file_mode(self):
        pod = self.shop_pod(self.render(self.MODES["api-plain"]))["spec"]
        self.assertNotIn("initContainers", pod)
        self.assertEqual([c["name"] for c in pod["containers"]], ["app", "stickyroute-agent"])
        self.assertNotIn("restartPolicy", container(pod, "stickyroute-agent"))

        pod = self.shop_pod(self.render(self.MODES["file-native"]))["spec"]
        self.assertNotIn("serviceAccountName", pod)
        self.assertEqual(pod["volumes"], [{"name": "routemap", "configMap": {"name": "shop-stickyroute-routemap"}}])
        agent = container(pod, "stickyroute-agent")
        self.assertEqual(agent["volumeMounts"], [{"name": "routemap", "mountPath": "/etc/stickyroute/routemap", "readOnly": True}])
        self.assertEqual(arg(agent, "--routemap"), "/etc/stickyroute/routemap/routemap")

    def test_the_example_app_is_built_from_the_same_templates(self):
        """One definition: the chart's example app and the parent's app get the same agent."""
        example = one(render(EXAMPLE)[0], "StatefulSet", "web")["spec"]["template"]
        shop = self.shop_pod(self.render())
        example_agent = container(example["spec"], "stickyroute-agent")
        shop_agent = container(shop["spec"], "stickyroute-agent")
        self.assertEqual(agent_args(example_agent), agent_args(shop_agent))
        for key in set(example_agent) | set(shop_agent):
            if key != "args":
                self.assertEqual(example_agent.get(key), shop_agent.get(key), key)
        self.assertEqual(
            container(example["spec"], "app")["lifecycle"], container(shop["spec"], "app")["lifecycle"]
        )
        for key in ("serviceAccountName", "automountServiceAccountToken", "terminationGracePeriodSeconds"):
            self.assertEqual(example["spec"][key], shop["spec"][key], key)
        self.assertEqual(
            example["metadata"]["labels"]["stickyroute-agent"], shop["metadata"]["labels"]["stickyroute-agent"]
        )

    def test_the_templates_refuse_the_parent_s_own_context_and_a_missing_app_port(self):
        for include, message in (
            ('include "stickyroute.agentSidecar" (dict "ctx" $ "appPort" 8081)', "Subcharts"),
            ('include "stickyroute.agentPodSpec" $', "Subcharts"),
            ('include "stickyroute.agentSidecar" (dict "ctx" .Subcharts.stickyroute)', "appPort"),
        ):
            with self.subTest(include=include):
                wrong = self.chart / "templates" / "wrong.yaml"
                wrong.write_text("# {{ " + include + " }}\n")
                try:
                    with self.assertRaisesRegex(helm.HelmError, message):
                        self.render()
                finally:
                    wrong.unlink()


class KustomizeComponent(Manifests):
    """components/agent-sidecar on overlays/own-app's plain StatefulSet."""

    def test_the_overlay_is_valid_and_locked_down(self):
        objects = kustomize(OWN_APP)
        self.assert_valid_kubernetes(objects, "kustomize own-app")
        self.assert_restricted(objects, "kustomize own-app")
        self.assert_probes_on_admin_ports(objects, "kustomize own-app")
        self.assert_no_subpath_and_no_checksum(objects, "kustomize own-app")

    def test_the_plain_statefulset_gets_the_sidecar(self):
        source = [d for d in yaml.safe_load_all((OWN_APP / "shop.yaml").read_text()) if d["kind"] == "StatefulSet"][0]
        self.assertNotIn("initContainers", source["spec"]["template"]["spec"], "shop.yaml is plain")
        objects = kustomize(OWN_APP)
        template = one(objects, "StatefulSet", "shop")["spec"]["template"]
        pod = template["spec"]
        self.assert_native_sidecar(pod, "own-app")
        agent = container(pod, "stickyroute-agent")
        env = {e["name"]: e for e in agent["env"]}
        self.assertEqual(env["APP_PORT"]["value"], "8081")
        self.assertEqual(arg(agent, "--upstream"), "127.0.0.1:$(APP_PORT)")
        self.assertEqual(container(pod, "app")["ports"][0]["containerPort"], 8081)
        # The overlay's image and namespace reach the component's container.
        self.assertEqual(agent["image"], "registry.example.com/stickyroute:0.1.0")
        self.assertEqual(arg(agent, "--routemap-configmap"), "$(POD_NAMESPACE)/routemap")
        self.assertEqual(pod["serviceAccountName"], one(objects, "ServiceAccount", "stickyroute-agent")["metadata"]["name"])
        self.assertEqual(pod["terminationGracePeriodSeconds"], 150)
        self.assertEqual(
            container(pod, "app")["lifecycle"], {"preStop": {"httpGet": {"path": "/prestop", "port": 9901}}}
        )
        self.assertEqual(template["metadata"]["labels"]["stickyroute-agent"], "stickyroute")
        proxy = container(one(objects, "Deployment")["spec"]["template"]["spec"], "stickyroute-proxy")
        self.assertEqual(arg(proxy, "--member-service"), "$(POD_NAMESPACE)/shop")
        self.assertEqual(arg(proxy, "--agent-admin-port"), "9901")
        self.assertIs(one(objects, "Service", "shop")["spec"]["publishNotReadyAddresses"], True)
        keys = [l.split()[0] for l in (OWN_APP / "routemap").read_text().splitlines() if l.split() and not l.startswith("#")]
        self.assertEqual(keys, [f"shop-{i}" for i in range(one(objects, "StatefulSet")["spec"]["replicas"])])
        check_map(self, (OWN_APP / "routemap").read_text(), "overlays/own-app/routemap")

    def test_only_labelled_workloads_of_either_kind_get_it(self):
        def workload(kind, name, labelled, init=()):
            return {
                "apiVersion": "apps/v1",
                "kind": kind,
                "metadata": {"name": name, "labels": {"stickyroute-agent": "stickyroute"} if labelled else {}},
                "spec": {
                    "selector": {"matchLabels": {"app": name}},
                    **({"serviceName": name} if kind == "StatefulSet" else {}),
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {
                            "containers": [{"name": "main", "image": "app:1"}],
                            **({"initContainers": [{"name": i, "image": "init:1"} for i in init]} if init else {}),
                        },
                    },
                },
            }

        with tempfile.TemporaryDirectory() as tmp:
            overlay = pathlib.Path(tmp)
            (overlay / "apps.yaml").write_text(
                yaml.safe_dump_all(
                    [
                        workload("Deployment", "api", True, init=["migrate"]),
                        workload("StatefulSet", "cart", True),
                        workload("Deployment", "other", False),
                    ]
                )
            )
            (overlay / "kustomization.yaml").write_text(
                yaml.safe_dump(
                    {
                        "resources": ["apps.yaml"],
                        "components": [os.path.relpath(COMPONENT, overlay)],
                    }
                )
            )
            objects = kustomize(overlay)
        self.assert_valid_kubernetes(objects, "component on apps")
        api = one(objects, "Deployment", "api")["spec"]["template"]["spec"]
        # First, so it runs before (and during) the user's own init containers.
        self.assertEqual([c["name"] for c in api["initContainers"]], ["stickyroute-agent", "migrate"])
        self.assertEqual(container(api, "main")["lifecycle"]["preStop"]["httpGet"]["path"], "/prestop")
        cart = one(objects, "StatefulSet", "cart")["spec"]["template"]["spec"]
        self.assertEqual(container(cart, "stickyroute-agent")["restartPolicy"], "Always")
        other = one(objects, "Deployment", "other")["spec"]["template"]["spec"]
        self.assertNotIn("initContainers", other)
        self.assertNotIn("lifecycle", container(other, "main"))

    def test_the_component_s_agent_is_the_chart_s(self):
        """The same container as the chart's template renders for api mode: the same ports,
        probes, securityContext, resources, environment and drain settings."""
        kustomized = container(one(kustomize(OWN_APP), "StatefulSet")["spec"]["template"]["spec"], "stickyroute-agent")
        charted = container(one(render(EXAMPLE)[0], "StatefulSet")["spec"]["template"]["spec"], "stickyroute-agent")
        for key in ("restartPolicy", "command", "ports", "startupProbe", "readinessProbe", "livenessProbe", "resources", "securityContext"):
            self.assertEqual(kustomized[key], charted[key], key)
        self.assertEqual([e for e in kustomized["env"] if e["name"] != "APP_PORT"], charted["env"])
        for flag in ("--listen", "--admin-listen", "--drain-idle", "--drain-timeout", "--grace-period", "--session-cookie", "--log-format"):
            self.assertEqual(arg(kustomized, flag), arg(charted, flag), flag)


if __name__ == "__main__":
    unittest.main()
