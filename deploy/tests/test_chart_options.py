"""The chart's optional objects and values, each off by default: the proxies' autoscaler,
the NetworkPolicies, the Prometheus Operator monitors, pod labels, annotations and extra
volumes, extra objects; and the default install, which has no example app.

Everything on at once is ci/all-options-values.yaml, which test_manifests.py also lints,
renders and validates with every other mode; here its objects' properties are asserted.
"""

import unittest

import helm_python as helm

from test_manifests import (
    EXAMPLE,
    MODES,
    Manifests,
    arg,
    check_map,
    container,
    of_kind,
    one,
    render,
)

ALL = MODES["all-options"]


def pod_template(objects, kind):
    return one(objects, kind)["spec"]["template"]


def proxy_container(objects):
    return container(pod_template(objects, "Deployment")["spec"], "stickyroute-proxy")


def agent_container(objects):
    return container(pod_template(objects, "StatefulSet")["spec"], "stickyroute-agent")


def peers_allowed(rule):
    """A NetworkPolicy rule's `from`/`to`; absent means every peer."""
    return rule.get("from", rule.get("to"))


def rule_ports(rule):
    return [(p["port"], p.get("protocol", "TCP")) for p in rule.get("ports", [])]


class DefaultInstall(Manifests):
    """No example app by default: the proxy alone, and NOTES saying what comes next."""

    def test_the_default_install_is_the_proxy_alone_with_an_empty_valid_map(self):
        objects, notes = render({})
        self.assertEqual(of_kind(objects, "StatefulSet"), [])
        self.assertEqual(
            sorted(o["metadata"]["name"] for o in of_kind(objects, "Service")),
            ["shop-stickyroute", "shop-stickyroute-admin"],
        )
        proxy = proxy_container(objects)
        # No members are guessed: no suffix, no EndpointSlices, no agent admin port.
        for flag in ("--member-domain-suffix", "--member-service", "--agent-admin-port"):
            self.assertIsNone(arg(proxy, flag), flag)
        text = one(objects, "ConfigMap", "shop-stickyroute-routemap")["data"]["routemap"]
        self.assertEqual(
            [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")], []
        )
        check_map(self, text, "the default routeMap.content")
        # The Role reads the map, the overrides and the proxies' own EndpointSlices (the
        # list of replicas), which --proxy-service names.
        self.assertEqual(
            [r for rule in one(objects, "Role", "shop-stickyroute-routemap-reader")["rules"] for r in rule["resources"]],
            ["configmaps", "configmaps", "endpointslices"],
        )
        self.assertEqual(arg(proxy, "--proxy-service"), "shop/shop-stickyroute-admin")

    def test_the_notes_say_what_to_do_next_without_the_example_app(self):
        _, notes = render({})
        for text in (
            "NEXT: YOUR APP PODS",
            "no entries yet",
            "stickyroute.agentSidecar",
                        "publishNotReadyAddresses: true",
            "--set proxy.memberService=SERVICE",
            "--set proxy.memberDomainSuffix=.SERVICE.shop.svc.cluster.local",
            "--set proxy.agentAdminPort=9901",
            "serviceAccountName: shop-stickyroute-agent",
            "examples/example-app-values.yaml",
        ):
            self.assertIn(text, notes)
        self.assertNotIn("THE EXAMPLE APP", notes)
        # File mode has no account and no EndpointSlices to offer.
        _, notes = render({"routeMap": {"source": "file"}})
        self.assertIn("NEXT: YOUR APP PODS", notes)
        self.assertNotIn("proxy.memberService=", notes)
        self.assertNotIn("serviceAccountName", notes)

    def test_the_example_values_file_turns_on_the_example_app_with_its_map(self):
        objects, notes = render(EXAMPLE)
        statefulset = one(objects, "StatefulSet", "web")
        self.assertIn("THE EXAMPLE APP", notes)
        self.assertIn("curl -s -H 'Cookie: balanceid=route.www0' localhost:8080/", notes)
        self.assertNotIn("NEXT: YOUR APP PODS", notes)
        self.assertNotIn("no entries yet", notes)
        proxy = proxy_container(objects)
        self.assertEqual(arg(proxy, "--member-service"), "shop/web")
        self.assertEqual(arg(proxy, "--agent-admin-port"), "9901")
        text = one(objects, "ConfigMap", "shop-stickyroute-routemap")["data"]["routemap"]
        keys = [l.split()[0] for l in text.splitlines() if l.split() and not l.startswith("#")]
        self.assertEqual(keys, [f"web-{i}" for i in range(statefulset["spec"]["replicas"])])


class Autoscaling(Manifests):
    def test_the_autoscaler_owns_the_replica_count(self):
        objects, notes = render(ALL)
        hpa = one(objects, "HorizontalPodAutoscaler")
        deployment = one(objects, "Deployment")
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        self.assertEqual(
            hpa["spec"]["scaleTargetRef"],
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]},
        )
        self.assertEqual((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]), (3, 12))
        self.assertEqual(
            {m["resource"]["name"]: m["resource"]["target"] for m in hpa["spec"]["metrics"]},
            {
                "cpu": {"type": "Utilization", "averageUtilization": 70},
                "memory": {"type": "Utilization", "averageUtilization": 85},
            },
        )
        self.assertEqual(hpa["spec"]["behavior"], {"scaleDown": {"stabilizationWindowSeconds": 300}})
        # No replicas for helm upgrade to reset; the requests the utilization is measured on.
        self.assertNotIn("replicas", deployment["spec"])
        resources = proxy_container(objects)["resources"]["requests"]
        self.assertLessEqual({"cpu", "memory"}, set(resources))
        self.assertIn("3 to 12 proxy replicas, autoscaled", notes)
        # CPU only, by default.
        objects, _ = render({"proxy": {"autoscaling": {"enabled": True}}})
        hpa = one(objects, "HorizontalPodAutoscaler")
        self.assertEqual((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]), (2, 10))
        self.assertEqual([m["resource"]["name"] for m in hpa["spec"]["metrics"]], ["cpu"])
        self.assertNotIn("behavior", hpa["spec"])

    def test_without_it_the_deployment_has_its_replicas_and_no_autoscaler(self):
        objects, _ = render({"proxy": {"replicas": 4}})
        self.assertEqual(of_kind(objects, "HorizontalPodAutoscaler"), [])
        self.assertEqual(one(objects, "Deployment")["spec"]["replicas"], 4)

    def test_impossible_bounds_and_no_target_are_refused(self):
        for bad in (
            {"minReplicas": 5, "maxReplicas": 3},
            {"targetCPUUtilizationPercentage": None},
        ):
            with self.subTest(bad=bad):
                with self.assertRaises(helm.HelmError):
                    render({"proxy": {"autoscaling": {"enabled": True} | bad}})


class NetworkPolicies(Manifests):
    def policies(self, values):
        objects, _ = render(values)
        return (
            objects,
            one(objects, "NetworkPolicy", "shop-stickyroute"),
            one(objects, "NetworkPolicy", "shop-stickyroute-agents"),
        )

    def test_only_the_proxies_reach_the_agents_and_admin_ports_are_closed(self):
        objects, proxy_policy, agent_policy = self.policies(ALL)
        deployment = one(objects, "Deployment")
        proxy_pods = deployment["spec"]["selector"]["matchLabels"]
        # The proxies' policy selects exactly the proxy pods.
        self.assertEqual(proxy_policy["spec"]["podSelector"], {"matchLabels": proxy_pods})
        self.assertEqual(proxy_policy["spec"]["policyTypes"], ["Ingress", "Egress"])
        traffic, admin = proxy_policy["spec"]["ingress"]
        self.assertEqual(rule_ports(traffic), [("http", "TCP"), ("https", "TCP")])
        self.assertEqual(peers_allowed(traffic), ALL["networkPolicy"]["ingressFrom"])
        # The admin port: the other replicas (which read each other's /status to list the
        # replicas), the CIDRs, and the scrapers.
        self.assertEqual(rule_ports(admin), [("admin", "TCP")])
        self.assertEqual(
            peers_allowed(admin),
            [{"podSelector": {"matchLabels": proxy_pods}}, {"ipBlock": {"cidr": "10.8.2.0/24"}}]
            + ALL["networkPolicy"]["metricsFrom"],
        )
        self.assertEqual(arg(proxy_container(objects), "--proxy-service"), "shop/shop-stickyroute-admin")
        # The named ports are the proxy container's.
        names = {p["name"] for p in proxy_container(objects)["ports"]}
        self.assertLessEqual({"http", "https", "admin"}, names)

        # The agents' policy selects the pods that carry the agent label: the example app's.
        template = pod_template(objects, "StatefulSet")
        self.assertEqual(
            agent_policy["spec"]["podSelector"], {"matchLabels": {"stickyroute-agent": "shop-stickyroute"}}
        )
        self.assertEqual(template["metadata"]["labels"]["stickyroute-agent"], "shop-stickyroute")
        self.assertEqual(agent_policy["spec"]["policyTypes"], ["Ingress"])
        agent_traffic, agent_admin = agent_policy["spec"]["ingress"]
        agent = agent_container(objects)
        self.assertEqual(rule_ports(agent_traffic), [(8080, "TCP")])
        self.assertEqual(int(arg(agent, "--listen").rsplit(":", 1)[1]), 8080)
        self.assertEqual(peers_allowed(agent_traffic), [{"podSelector": {"matchLabels": proxy_pods}}])
        # The agents' admin port: the proxies (which read /status) and, with the PodMonitor,
        # the scrapers. The app's own port has no rule at all.
        self.assertEqual(rule_ports(agent_admin), [(9901, "TCP")])
        self.assertEqual(
            peers_allowed(agent_admin),
            [{"podSelector": {"matchLabels": proxy_pods}}] + ALL["networkPolicy"]["metricsFrom"],
        )
        app_port = container(template["spec"], "app")["ports"][0]["containerPort"]
        self.assertNotIn(app_port, [p for rule in agent_policy["spec"]["ingress"] for p, _ in rule_ports(rule)])

    def test_egress_allows_dns_the_members_and_the_api_server(self):
        objects, proxy_policy, _ = self.policies(ALL)
        dns, members, replicas, api, extra = proxy_policy["spec"]["egress"]
        proxy_pods = one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
        self.assertEqual(replicas["to"], [{"podSelector": {"matchLabels": proxy_pods}}])
        self.assertEqual(rule_ports(replicas), [(9900, "TCP")])
        self.assertEqual(rule_ports(dns), [(53, "UDP"), (53, "TCP")])
        self.assertNotIn("to", dns)
        self.assertEqual(
            members["to"], [{"podSelector": {"matchLabels": {"stickyroute-agent": "shop-stickyroute"}}}]
        )
        self.assertEqual(rule_ports(members), [(8080, "TCP"), (9901, "TCP")])
        self.assertEqual(api["to"], [{"ipBlock": {"cidr": "172.20.0.10/32"}}])
        self.assertEqual(rule_ports(api), [(443, "TCP"), (6443, "TCP")])
        self.assertEqual(extra, ALL["networkPolicy"]["egress"]["extraRules"][0])

    def test_the_defaults_open_the_traffic_port_to_anyone_and_leave_egress_alone(self):
        objects, proxy_policy, agent_policy = self.policies({"networkPolicy": {"enabled": True}})
        self.assertEqual(proxy_policy["spec"]["policyTypes"], ["Ingress"])
        self.assertNotIn("egress", proxy_policy["spec"])
        # The traffic port, from anywhere; the admin port only from the node and the other
        # replicas.
        proxy_pods = one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
        traffic, admin = proxy_policy["spec"]["ingress"]
        self.assertEqual(rule_ports(traffic), [("http", "TCP")])
        self.assertIsNone(peers_allowed(traffic))
        self.assertEqual(peers_allowed(admin), [{"podSelector": {"matchLabels": proxy_pods}}])
        # File mode has no list of replicas: the admin port only from the node.
        objects, _ = render({"routeMap": {"source": "file"}, "networkPolicy": {"enabled": True}})
        (traffic,) = one(objects, "NetworkPolicy", "shop-stickyroute")["spec"]["ingress"]
        self.assertEqual(rule_ports(traffic), [("http", "TCP")])
        # No example app, no agentAdminPort: the agents' admin port is opened to no one.
        self.assertEqual([rule_ports(r) for r in agent_policy["spec"]["ingress"]], [[(8080, "TCP")]])
        # With the example app the proxies read the agents' /status.
        _, _, agent_policy = self.policies(EXAMPLE | {"networkPolicy": {"enabled": True}})
        self.assertEqual(
            [rule_ports(r) for r in agent_policy["spec"]["ingress"]], [[(8080, "TCP")], [(9901, "TCP")]]
        )
        # metricsFrom reaches the agents' admin port only with their PodMonitor.
        _, _, agent_policy = self.policies(
            {"networkPolicy": {"enabled": True, "metricsFrom": [{"podSelector": {}}]}}
        )
        self.assertEqual(len(agent_policy["spec"]["ingress"]), 1)
        # Off by default.
        self.assertEqual(of_kind(render({})[0], "NetworkPolicy"), [])

    def test_monitors_behind_the_policies_without_metrics_from_are_warned_of(self):
        _, notes = render({"networkPolicy": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}})
        self.assertIn("networkPolicy.metricsFrom is empty, so Prometheus cannot", notes)
        _, notes = render(
            {
                "networkPolicy": {"enabled": True, "metricsFrom": [{"podSelector": {}}]},
                "metrics": {"serviceMonitor": {"enabled": True}},
            }
        )
        self.assertNotIn("Prometheus cannot", notes)

    def test_annotations_must_be_strings(self):
        for values in (
            {"proxy": {"podAnnotations": {"sidecar.istio.io/inject": False}}},
            {"proxy": {"service": {"annotations": {"a": 1}}}},
        ):
            with self.assertRaisesRegex(helm.HelmError, "string"):
                render(values)

    def test_egress_in_api_mode_needs_the_api_server_addresses(self):
        with self.assertRaises(helm.HelmError):
            render({"networkPolicy": {"enabled": True, "egress": {"enabled": True}}})
        # File mode reads the map from its volume: no API rule, no addresses needed.
        objects, _ = render({"routeMap": {"source": "file"}, "networkPolicy": {"enabled": True, "egress": {"enabled": True}}})
        egress = one(objects, "NetworkPolicy", "shop-stickyroute")["spec"]["egress"]
        self.assertEqual(len(egress), 2)
        self.assertNotIn("ipBlock", str(egress))


class Monitoring(Manifests):
    def test_the_service_monitor_scrapes_the_admin_service_only(self):
        objects, _ = render(ALL)
        monitor = one(objects, "ServiceMonitor")
        admin = one(objects, "Service", "shop-stickyroute-admin")
        traffic = one(objects, "Service", "shop-stickyroute")
        selector = monitor["spec"]["selector"]["matchLabels"]
        self.assertLessEqual(selector.items(), admin["metadata"]["labels"].items())
        self.assertFalse(selector.items() <= traffic["metadata"]["labels"].items())
        self.assertEqual(monitor["spec"]["namespaceSelector"], {"matchNames": ["shop"]})
        self.assertEqual(monitor["metadata"]["namespace"], "monitoring")
        self.assertEqual(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack")
        (endpoint,) = monitor["spec"]["endpoints"]
        self.assertEqual(endpoint["port"], "admin")
        self.assertIn("admin", [p["name"] for p in admin["spec"]["ports"]])
        self.assertEqual(endpoint["path"], "/metrics")
        self.assertEqual((endpoint["interval"], endpoint["scrapeTimeout"]), ("15s", "5s"))
        self.assertEqual(endpoint["metricRelabelings"], ALL["metrics"]["serviceMonitor"]["metricRelabelings"])
        self.assertNotIn("relabelings", endpoint)
        # The admin Service still selects the proxy pods, and its port is the proxy's /metrics.
        self.assertEqual(admin["spec"]["selector"], one(objects, "Deployment")["spec"]["selector"]["matchLabels"])
        proxy = proxy_container(objects)
        self.assertEqual(
            admin["spec"]["ports"][0]["port"], int(arg(proxy, "--admin-listen").rsplit(":", 1)[1])
        )

    def test_the_pod_monitor_scrapes_the_agents_admin_port(self):
        objects, _ = render(ALL)
        monitor = one(objects, "PodMonitor")
        template = pod_template(objects, "StatefulSet")
        selector = monitor["spec"]["selector"]["matchLabels"]
        self.assertLessEqual(selector.items(), template["metadata"]["labels"].items())
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        self.assertEqual((endpoint["port"], endpoint["path"]), ("agent-admin", "/metrics"))
        agent = agent_container(objects)
        port = next(p["containerPort"] for p in agent["ports"] if p["name"] == "agent-admin")
        self.assertEqual(port, int(arg(agent, "--admin-listen").rsplit(":", 1)[1]))
        # The proxies do not carry the agent label.
        self.assertNotIn("stickyroute-agent", pod_template(objects, "Deployment")["metadata"]["labels"])

    def test_no_monitors_by_default_and_each_on_its_own(self):
        objects, _ = render(EXAMPLE)
        self.assertEqual(of_kind(objects, "ServiceMonitor") + of_kind(objects, "PodMonitor"), [])
        objects, _ = render({"metrics": {"serviceMonitor": {"enabled": True, "interval": "", "scrapeTimeout": ""}}})
        monitor = one(objects, "ServiceMonitor")
        self.assertEqual(of_kind(objects, "PodMonitor"), [])
        self.assertEqual(monitor["metadata"]["namespace"], "shop")
        self.assertEqual(set(monitor["spec"]["endpoints"][0]), {"port", "path", "scheme"})
        self.assert_valid_kubernetes(objects, "serviceMonitor alone")
        objects, _ = render({"metrics": {"podMonitor": {"enabled": True}}})
        self.assertEqual(of_kind(objects, "ServiceMonitor"), [])
        one(objects, "PodMonitor")


class PodExtras(Manifests):
    def test_pod_labels_and_annotations_reach_the_pod_templates(self):
        objects, _ = render(ALL)
        for kind in ("Deployment", "StatefulSet"):
            template = pod_template(objects, kind)
            with self.subTest(kind=kind):
                self.assertEqual(template["metadata"]["labels"]["team"], "shop")
                self.assertEqual(template["metadata"]["annotations"], {"example.com/owner": "shop-team"})
                # The selector's labels are still there.
                selector = one(objects, kind)["spec"]["selector"]["matchLabels"]
                self.assertLessEqual(selector.items(), template["metadata"]["labels"].items())

    def test_pod_labels_never_override_the_chart_s_own(self):
        objects, _ = render({"proxy": {"podLabels": {"app.kubernetes.io/component": "other", "team": "x"}}})
        labels = pod_template(objects, "Deployment")["metadata"]["labels"]
        self.assertEqual(labels["app.kubernetes.io/component"], "proxy")
        self.assertEqual(labels["team"], "x")

    def test_extra_volumes_are_mounted_beside_the_chart_s_own(self):
        objects, _ = render(ALL)
        pod = pod_template(objects, "Deployment")["spec"]
        proxy = proxy_container(objects)
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(volumes["admin-tokens"], {"name": "admin-tokens", "secret": {"secretName": "shop-admin-tokens"}})
        self.assertIn("tls-0", volumes)
        mounts = {m["name"]: m for m in proxy["volumeMounts"]}
        self.assertEqual(mounts["admin-tokens"]["mountPath"], "/etc/stickyroute/admin-tokens")
        self.assertIn("tls-0", mounts)
        self.assertIn("--admin-token-file=/etc/stickyroute/admin-tokens/tokens", proxy["args"])
        # Alone (api mode, no TLS: the chart has no volume of its own), and with the map's.
        for values, own in (({}, set()), ({"routeMap": {"source": "file"}}, {"routemap"})):
            extra = {"proxy": {k: ALL["proxy"][k] for k in ("extraVolumes", "extraVolumeMounts")}}
            objects, _ = render(values | extra)
            pod = pod_template(objects, "Deployment")["spec"]
            self.assertEqual({v["name"] for v in pod["volumes"]}, own | {"admin-tokens"})
            self.assertEqual(
                {m["name"] for m in proxy_container(objects)["volumeMounts"]}, own | {"admin-tokens"}
            )
            self.assert_valid_kubernetes(objects, f"extra volumes {values}")

    def test_extra_objects_are_rendered_as_maps_and_through_tpl(self):
        objects, _ = render(ALL)
        secret = one(objects, "Secret", "shop-admin-tokens")
        self.assertEqual(secret["stringData"], {"tokens": "ops:change-me-to-a-long-secret"})
        extra = one(objects, "ConfigMap", "shop-stickyroute-extra")
        self.assertEqual(extra["data"], {"release": "shop"})
        self.assertEqual(extra["metadata"]["labels"], {"app.kubernetes.io/instance": "shop"})
        self.assertEqual(of_kind(render({})[0], "Secret"), [])


class SchemaCatchesTypos(unittest.TestCase):
    def test_a_typo_in_each_new_block_is_refused(self):
        for bad in (
            {"proxy": {"autoscaling": {"minReplica": 2}}},
            {"proxy": {"autoscaling": {"enabled": "yes"}}},
            {"proxy": {"autoscaling": {"maxReplicas": 0}}},
            {"proxy": {"autoScaling": {"enabled": True}}},
            {"proxy": {"podLabel": {"team": "shop"}}},
            {"proxy": {"podLabels": {"team": 1}}},
            {"proxy": {"extraVolume": []}},
            {"proxy": {"extraVolumes": [{"secret": {"secretName": "x"}}]}},
            {"proxy": {"extraVolumeMount": []}},
            {"proxy": {"extraVolumeMounts": [{"name": "x"}]}},
            {"exampleApp": {"podLabel": {}}},
            {"exampleApp": {"podAnnotation": {}}},
            {"metric": {"serviceMonitor": {"enabled": True}}},
            {"metrics": {"servicemonitor": {"enabled": True}}},
            {"metrics": {"serviceMonitor": {"intervall": "30s"}}},
            {"metrics": {"serviceMonitor": {"interval": "30 seconds"}}},
            {"metrics": {"serviceMonitor": {"label": {}}}},
            {"metrics": {"podMonitor": {"enable": True}}},
            {"metrics": {"podMonitor": {"interval": "30s"}}},
            {"networkPolicies": {"enabled": True}},
            {"networkPolicy": {"enable": True}},
            {"networkPolicy": {"adminCidr": ["10.0.0.0/8"]}},
            {"networkPolicy": {"adminCidrs": ["10.0.0.1"]}},
            {"networkPolicy": {"ingressFrom": [{}]}},
            {"networkPolicy": {"egress": {"enable": True}}},
            {"networkPolicy": {"egress": {"apiServerCidr": ["10.0.0.1/32"]}}},
            {"networkPolicy": {"egress": {"apiServerPorts": [0]}}},
            {"extraObject": []},
            {"extraObjects": [1]},
        ):
            with self.subTest(values=bad):
                with self.assertRaises(helm.HelmError):
                    render(bad)


if __name__ == "__main__":
    unittest.main()
