#!/usr/bin/env bash
# The deploy files are valid: docker-compose accepts the compose file, and the Kubernetes
# manifests parse and hold what the README promises (headless Service, StatefulSet with
# gRPC probes and sized requests, PodDisruptionBudget).
set -euo pipefail
compose=deploy/docker-compose.yml
docker-compose -f "$compose" config -q
services=$(docker-compose -f "$compose" config --services | LC_ALL=C sort | tr '\n' ' ')
[ "$services" = "pqkv-server prometheus worker " ] || { echo "services: $services"; exit 1; }
python3 - deploy/k8s/pqkv.yaml <<'PY'
import sys, yaml
docs = {d["kind"]: d for d in yaml.safe_load_all(open(sys.argv[1]))}
assert set(docs) == {"Service", "StatefulSet", "PodDisruptionBudget"}, docs.keys()
assert docs["Service"]["spec"]["clusterIP"] == "None"
pod = docs["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
assert pod["readinessProbe"]["grpc"]["port"] == 50051
assert pod["livenessProbe"]["grpc"]["port"] == 50051
assert pod["resources"]["requests"]["memory"]
budget = [a for a in pod["args"] if a.startswith("--memory_budget=")]
assert budget, "the server's memory budget is set"
print("k8s manifests ok")
PY
echo "deploy files ok"
