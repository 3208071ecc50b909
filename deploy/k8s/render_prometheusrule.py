"""Write base/prometheusrule.yaml from deploy/prometheus/alerts.yml, the one source of the
alert rules (compose's Prometheus reads alerts.yml directly; the Prometheus Operator needs
them wrapped in a PrometheusRule). tests/deploy checks that the two agree.

    python deploy/k8s/render_prometheusrule.py
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
OUT = HERE / "base" / "prometheusrule.yaml"
HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by deploy/k8s/render_prometheusrule.py: edit
# alerts.yml and run the script. Like the ServiceMonitor, it carries the label your
# Prometheus selects rules by (kube-prometheus-stack: release=<release name>).
"""


def render() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "par-reward",
            "labels": {
                "app.kubernetes.io/name": "par-reward",
                "app.kubernetes.io/part-of": "par-reward",
                "release": "kube-prometheus-stack",
            },
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=10**6, allow_unicode=True)


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
