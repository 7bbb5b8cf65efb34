"""The chart's README.md is generated from values.yaml (deploy/helm/gen-readme.py) and
cannot drift: the committed file must be what the generator writes, and every value must
be documented and known to the schema."""

import importlib.util
import json
import unittest

from test_manifests import CHART, ROOT

spec = importlib.util.spec_from_file_location("gen_readme", ROOT / "deploy" / "helm" / "gen-readme.py")
gen_readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen_readme)


def schema_paths(node, path=()):
    """Every property path the schema declares."""
    for key, child in node.get("properties", {}).items():
        yield path + (key,)
        yield from schema_paths(child, path + (key,))


class ChartReadme(unittest.TestCase):
    def setUp(self):
        self.values = gen_readme.Values(CHART)

    def test_the_committed_readme_is_the_generated_one(self):
        committed = (CHART / "README.md").read_text()
        self.assertEqual(
            committed,
            gen_readme.generate(CHART),
            "deploy/helm/stickyroute/README.md is stale: run target/venv/bin/python deploy/helm/gen-readme.py",
        )

    def test_every_leaf_value_is_documented(self):
        self.assertGreater(len(self.values.leaves), 100)
        self.assertEqual(self.values.undocumented(), [])
        self.assertEqual(self.values.stray(), [], "a `# --` comment above no value")
        readme = (CHART / "README.md").read_text()
        for leaf in self.values.leaves:
            self.assertIn(f"| `{'.'.join(leaf)}` |", readme)

    def test_every_value_is_in_the_schema_and_every_setting_in_values_yaml(self):
        schema = json.loads((CHART / "values.schema.json").read_text())
        for leaf in self.values.leaves:
            self.assertTrue(gen_readme.schema_type(schema, leaf), ".".join(leaf))
        known = set()
        for leaf in self.values.leaves:
            known.update(leaf[:i] for i in range(1, len(leaf) + 1))
        # What a user can set is in values.yaml, hence documented (global is Helm's).
        missing = [".".join(p) for p in schema_paths(schema) if p not in known and p[0] != "global"]
        self.assertEqual(missing, [])

    def test_the_generator_refuses_an_undocumented_value(self):
        docs = gen_readme.comments("a:\n  # -- documented\n  b: 1\n  c: 2\n# -- list\nd:\n  - x: 1\n    y: 2\ne: |\n  f: 3\n")
        self.assertEqual(set(docs), {("a", "b"), ("d",)})
        self.assertEqual(docs[("a", "b")].text, "documented")


class MainReadme(unittest.TestCase):
    def test_the_parent_chart_snippet_is_the_tested_example(self):
        """The Kubernetes guide's snippet for your own StatefulSet is taken from
        deploy/helm/examples/parent-chart/templates/shop.yaml, which the tests render."""
        readme = (ROOT / "README.md").read_text()
        section = readme[readme.index("For your own app"):]
        start = section.index("```yaml") + len("```yaml")
        snippet = section[start:section.index("```", start)]
        template = (ROOT / "deploy" / "helm" / "examples" / "parent-chart" / "templates" / "shop.yaml").read_text()
        template_lines = {line.strip() for line in template.splitlines()}
        lines = [l.strip() for l in snippet.splitlines() if l.strip() and l.strip() != "..."]
        self.assertGreater(len(lines), 5)
        for line in lines:
            self.assertIn(line.split("  #")[0].rstrip(), template_lines, line)


if __name__ == "__main__":
    unittest.main()
