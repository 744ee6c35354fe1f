"""What the chart ships stays true to its sources: the CRD is the generated one byte for byte, the README documents
every value with its real default, versions agree with the package, and the metrics it names exist."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from kubetune.api.crd import render as render_crd
from kubetune.operator.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
CRD_NAME = "kubetune.dev_finetuneruns.yaml"


def leaves(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted paths of every value; an empty map or a list is a value of its own."""
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            yield from leaves(value, path)
        else:
            yield path, value


def readme_table() -> dict[str, str]:
    """value path → default cell, from the README's values table."""
    rows = re.findall(r"(?m)^\| `([^`]+)` \| `([^`]*)` \| [^|]+ \|$", (CHART / "README.md").read_text())
    paths = [path for path, _ in rows]
    assert len(paths) == len(set(paths)), "a value is documented twice"
    return dict(rows)


def default_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def test_chart_crd_is_byte_equal_to_the_generated_crd() -> None:
    assert (CHART / "crds" / CRD_NAME).read_bytes() == (ROOT / "crds" / CRD_NAME).read_bytes()
    assert (CHART / "crds" / CRD_NAME).read_text() == render_crd()
    assert [p.name for p in (CHART / "crds").iterdir()] == [CRD_NAME]


def test_readme_documents_every_value() -> None:
    documented = readme_table()
    missing = [path for path, _ in leaves(default_values()) if path not in documented]
    assert missing == []


def test_readme_documents_no_value_the_chart_lacks() -> None:
    known = {path for path, _ in leaves(default_values())}
    assert sorted(set(readme_table()) - known) == []


@pytest.mark.parametrize(("path", "default"), list(leaves(default_values())))
def test_readme_default_is_the_real_default(path: str, default: Any) -> None:
    assert yaml.safe_load(readme_table()[path]) == default


def test_all_on_values_set_every_value_to_something_else() -> None:
    # ci/all-on-values.yaml is the "everything on" render: it must exercise every value, not only some.
    all_on = dict(leaves(yaml.safe_load((CHART / "ci" / "all-on-values.yaml").read_text())))
    # Switching these off would take objects out of the "everything on" render; NodePort would only add a port.
    stays_on = {"serviceAccount.operator.create", "serviceAccount.job.create", "metrics.enabled", "metrics.service.type"}
    not_exercised = [path for path, default in leaves(default_values())
                     if path not in stays_on and not any(
                         p == path or p.startswith(f"{path}.") for p in all_on if all_on[p] != default)]
    # Security contexts keep their restricted defaults in every render.
    assert [p for p in not_exercised if ".securityContext." not in p and ".podSecurityContext." not in p] == []


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert chart["name"] == "kubetune" and chart["apiVersion"] == "v2"


def test_metrics_the_readme_names_are_the_operators() -> None:
    named = set(re.findall(r"`(kubetune_[a-z_]+)\{", (CHART / "README.md").read_text()))
    # Counters are exposed with a _total suffix on their family name.
    exported = {family.name + ("_total" if family.type == "counter" else "")
                for family in Metrics().registry.collect()}
    assert named and named <= exported, sorted(named - exported)


# --- docs/cluster-quickstart.md follows the chart -----------------------------------------------------------------

QUICKSTART = ROOT / "docs" / "cluster-quickstart.md"


def quickstart_sets() -> list[str]:
    return re.findall(r"--set '?([^' \n]+)'?", QUICKSTART.read_text())


def test_quickstart_sets_only_values_the_chart_has() -> None:
    known = {path for path, _ in leaves(default_values())}
    sets = quickstart_sets()
    assert sets
    for assignment in sets:
        for path, _ in leaves(helm.parse_set_string(assignment)):
            assert path in known, f"docs/cluster-quickstart.md sets {path}, which values.yaml does not have"


def test_quickstart_install_renders_what_the_guide_then_uses() -> None:
    given: dict[str, Any] = {}
    for assignment in quickstart_sets():
        given = _deep_merge(given, helm.parse_set_string(assignment))
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(given, name="kubetune", namespace="kubetune-system")
    objects = [doc for path, text in manifests.items() if not path.endswith("NOTES.txt")
               for doc in yaml.safe_load_all(text) if doc]
    text = QUICKSTART.read_text()
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert f"deployment/{deployment['metadata']['name']}" in text
    job_accounts = {o["metadata"]["namespace"] for o in objects if o["kind"] == "ServiceAccount"
                    and o["metadata"]["labels"]["app.kubernetes.io/component"] == "job"}
    example = yaml.safe_load((ROOT / "examples" / "cluster-s3-gpu.yaml").read_text())
    assert example["metadata"].get("namespace", "default") in job_accounts  # its Jobs can run there
    secret = example["spec"]["storage"]["credentialsSecret"]
    assert given["storage"]["credentialsSecret"] == secret and f"generic {secret}" in text
    assert f"kubectl describe ftr {example['metadata']['name']}" in text


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged
