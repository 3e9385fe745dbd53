#!/usr/bin/env python3
"""The docker-compose scenario without Docker: one network namespace per compose service.

Reads deploy/docker-compose.yml (and the Dockerfile's ENTRYPOINT, and the Prometheus
config it mounts), makes a namespace per service with its own address on a bridge
(veth pairs; names resolve through /etc/netns/<ns>/hosts, as Docker's DNS would
resolve them), starts the same binaries with the same arguments and environment the
compose file gives them, runs the worker's flow to the end, scrapes the server's metrics
from the Prometheus service's namespace at the targets its config names, checks them,
and stops the server with SIGTERM within the compose stop_grace_period. Everything it
makes is removed at the end. Where namespaces cannot be made it reports itself skipped
(JUnit), never passed.
"""
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import yaml

COMPOSE = "deploy/docker-compose.yml"
DOCKERFILE = "deploy/Dockerfile"
# The image's binaries, where Bazel put them.
BINARIES = {"pqkv-server": "server/pqkv-server", "reference_worker": "examples/reference_worker"}
TAG = str(os.getpid())
BRIDGE_NS = "pqkv-cbr-" + TAG
SUBNET = "10.79.0."


def log(*parts):
    print(*parts, flush=True)


def run(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def skip(why):
    log("SKIPPED:", why)
    xml_path = os.environ.get("XML_OUTPUT_FILE")
    if xml_path:
        escaped = (why.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                   .replace('"', "&quot;").replace("\n", " "))
        with open(xml_path, "w") as f:
            f.write('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites>\n'
                    '  <testsuite name="compose_netns_test" errors="0" failures="0" skipped="1" '
                    'tests="1">\n    <testcase classname="compose_netns_test" '
                    'name="the compose scenario in network namespaces" time="0">\n'
                    f'      <skipped message="{escaped}"/>\n    </testcase>\n  </testsuite>\n'
                    '</testsuites>\n')
    sys.exit(0)


def fail(why):
    log("FAILED:", why)
    sys.exit(1)


def image_entrypoint():
    """The ENTRYPOINT of the Dockerfile's last stage (the image the services run)."""
    entrypoint = None
    with open(DOCKERFILE) as f:
        for line in f:
            m = re.match(r'\s*ENTRYPOINT\s+\[(.*)\]', line)
            if m:
                entrypoint = [s.strip().strip('"') for s in m.group(1).split(",")]
    if not entrypoint:
        fail(f"{DOCKERFILE} has no ENTRYPOINT")
    return entrypoint


def as_list(value):
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def environment(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


class Namespaces:
    """A bridge namespace, one namespace per service, veth pairs and hosts files."""

    def __init__(self, services):
        self.names = {}  # service -> namespace
        self.addresses = {}  # service -> IP
        self.made = []
        try:
            run("ip", "netns", "add", BRIDGE_NS)
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            skip("cannot make network namespaces here: " + str(getattr(e, "stderr", e)).strip())
        self.made.append(BRIDGE_NS)
        try:
            self._connect(services)
        except subprocess.CalledProcessError as e:
            self.remove()
            skip(f"cannot wire the namespaces here ({' '.join(e.cmd)}): {e.stderr.strip()}")

    def _connect(self, services):
        run("ip", "-n", BRIDGE_NS, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", BRIDGE_NS, "link", "set", "br0", "up")
        for i, service in enumerate(services):
            ns = f"pqkv-c{i}-{TAG}"
            run("ip", "netns", "add", ns)
            self.made.append(ns)
            outside, inside = f"pqc{i}o{TAG}"[:15], f"pqc{i}i{TAG}"[:15]
            run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            run("ip", "link", "set", outside, "netns", BRIDGE_NS)
            run("ip", "link", "set", inside, "netns", ns)
            run("ip", "-n", BRIDGE_NS, "link", "set", outside, "master", "br0", "up")
            run("ip", "-n", ns, "link", "set", inside, "name", "eth0")
            address = SUBNET + str(10 + i)
            run("ip", "-n", ns, "addr", "add", address + "/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            self.names[service] = ns
            self.addresses[service] = address
        hosts = "127.0.0.1 localhost\n" + "".join(
            f"{a} {s}\n" for s, a in self.addresses.items())
        try:
            for ns in self.names.values():
                os.makedirs(f"/etc/netns/{ns}", exist_ok=True)
                with open(f"/etc/netns/{ns}/hosts", "w") as f:
                    f.write(hosts)
        except OSError as e:
            self.remove()
            skip(f"cannot write the namespaces' hosts files under /etc/netns: {e}")

    def remove(self):
        for ns in self.made:
            run("ip", "netns", "del", ns, check=False)
            if os.path.isdir(f"/etc/netns/{ns}"):
                for name in os.listdir(f"/etc/netns/{ns}"):
                    os.remove(f"/etc/netns/{ns}/{name}")
                os.rmdir(f"/etc/netns/{ns}")

    def command(self, service, argv, ulimits=None):
        """argv run inside the service's namespace (with its ulimits)."""
        prefix = ["ip", "netns", "exec", self.names[service]]
        limits = []
        for name, value in (ulimits or {}).items():
            soft = value if not isinstance(value, dict) else value.get("soft")
            if name == "memlock":
                limit = "--memlock=" + ("unlimited" if int(soft) < 0 else str(soft))
                # Raising a hard limit needs CAP_SYS_RESOURCE, which some sandboxes drop;
                # the worker then runs with its buffer unpinned, as it would in Docker
                # without the ulimit.
                if run("prlimit", limit, "--", "true", check=False).returncode == 0:
                    limits.append(limit)
                else:
                    log(f"{service}: cannot set ulimit {name}={soft} here; running without it")
        return prefix + (["prlimit"] + limits + ["--"] if limits else []) + argv


def wait_for_port(ns, host, port, timeout_s):
    probe = f"import socket; socket.create_connection(('{host}', {port}), 1)"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe],
                          capture_output=True).returncode == 0:
            return True
        time.sleep(0.2)
    return False


def scrape(ns, target):
    code = ("import urllib.request, sys; "
            f"sys.stdout.write(urllib.request.urlopen('http://{target}/metrics', timeout=5)"
            ".read().decode())")
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                         capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"scraping {target} from the prometheus namespace: {out.stderr.strip()}")
    return out.stdout


def metric(text, name, labels=""):
    """The value of `name{labels}` in a Prometheus text exposition, or None."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
    m = re.search(r"^" + pattern + r"$", text, re.M)
    return float(m.group(1)) if m else None


def main():
    started = time.time()
    with open(COMPOSE) as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    for name in ("pqkv-server", "worker", "prometheus"):
        if name not in services:
            fail(f"{COMPOSE} has no service {name}")
    if os.geteuid() != 0:
        skip("network namespaces need root")
    if subprocess.run(["which", "ip"], capture_output=True).returncode != 0:
        skip("no ip command (iproute2)")
    entrypoint = image_entrypoint()

    def argv_of(service):
        spec = services[service]
        argv = as_list(spec.get("entrypoint")) or list(entrypoint)
        argv += as_list(spec.get("command"))
        if argv[0] not in BINARIES:
            fail(f"service {service} runs {argv[0]}, which this test cannot map to a binary")
        return [os.path.abspath(BINARIES[argv[0]])] + argv[1:]

    spaces = Namespaces(list(services))
    server = None
    try:
        # The server, as the compose file starts it.
        server_spec = services["pqkv-server"]
        server_argv = spaces.command("pqkv-server", argv_of("pqkv-server"),
                                     server_spec.get("ulimits"))
        log("pqkv-server:", " ".join(server_argv))
        server_log = open(os.path.join(os.environ.get("TEST_TMPDIR", "/tmp"),
                                       f"compose_server_{TAG}.log"), "w+")
        server = subprocess.Popen(server_argv, env={**os.environ, **environment(server_spec)},
                                  stdout=server_log, stderr=subprocess.STDOUT)
        port = int(re.search(r"--port=(\d+)", " ".join(server_argv)).group(1))
        if not wait_for_port(spaces.names["worker"], "pqkv-server", port, 30):
            server_log.seek(0)
            fail("the server is not reachable at pqkv-server:%d from the worker's namespace:\n%s"
                 % (port, server_log.read()))
        log(f"pqkv-server up after {time.time() - started:.1f} s at "
            f"{spaces.addresses['pqkv-server']}:{port}")
        if wait_for_port(spaces.names["worker"], "127.0.0.1", port, 0.5):
            fail("the server answers on the worker's loopback: the namespaces leak")

        # The worker's whole flow, to the end.
        worker_spec = services["worker"]
        worker_argv = spaces.command("worker", argv_of("worker"), worker_spec.get("ulimits"))
        log("worker:", " ".join(worker_argv))
        worker_start = time.time()
        worker = subprocess.run(worker_argv, env={**os.environ, **environment(worker_spec)},
                                capture_output=True, text=True, timeout=600)
        log(worker.stdout)
        if worker.returncode != 0:
            fail(f"the worker exited with {worker.returncode}:\n{worker.stderr[-3000:]}")
        if "rows_ok" not in worker.stdout or "quality by head type" not in worker.stdout:
            fail("the worker's report is missing its tables")
        log(f"worker ran {time.time() - worker_start:.1f} s")

        # Prometheus's scrape, from its namespace, of the targets its mounted config names.
        volume = next(v for v in services["prometheus"].get("volumes", [])
                      if v.split(":")[1] == "/etc/prometheus/prometheus.yml")
        with open(os.path.join(os.path.dirname(COMPOSE), volume.split(":")[0])) as f:
            prometheus = yaml.safe_load(f)
        targets = [t for job in prometheus["scrape_configs"]
                   for sc in job.get("static_configs", []) for t in sc["targets"]]
        if not targets:
            fail("the Prometheus config names no target")
        for target in targets:
            text = scrape(spaces.names["prometheus"], target)
            checks = {
                "sessions gauge present": metric(text, "pqkv_sessions") is not None,
                "memory budget from the compose command (4GiB)":
                    metric(text, "pqkv_kv_bytes_capacity") == 4 * 2**30,
                "index builds recorded": (metric(text, "pqkv_index_build_seconds_count") or 0) > 0,
                "Retrieve items timed": (metric(text, "pqkv_retrieve_item_seconds_count",
                                                'stage="total"') or 0) > 0,
                "K/V bytes sent": sum(metric(text, "pqkv_kv_bytes_sent_total",
                                             f'transport="{t}"') or 0
                                      for t in ("grpc", "ucx-shm", "ucx-put")) > 0,
                "calls counted by code": re.search(r'^pqkv_requests_total\{.*code="OK"', text,
                                                   re.M) is not None,
                "quality histogram has samples": sum(
                    float(m) for m in re.findall(r'^pqkv_quality_mass_recall_count\{.*\} (\S+)$',
                                                 text, re.M)) > 0,
            }
            for what, ok in checks.items():
                log(f"  metrics at {target}: {what}: {'ok' if ok else 'MISSING'}")
            if not all(checks.values()):
                fail(f"the metrics scraped from {target} lack what the worker's run implies:\n"
                     + text)
            sent = {t: metric(text, "pqkv_kv_bytes_sent_total", f'transport="{t}"')
                    for t in ("grpc", "ucx-shm", "ucx-put")}
            items = metric(text, "pqkv_retrieve_item_seconds_count", 'stage="total"')
            builds = metric(text, "pqkv_index_build_seconds_count")
            log(f"  scraped {len(text.splitlines())} lines; K/V bytes sent by transport: {sent}; "
                f"Retrieve items: {items:.0f}; index builds: {builds:.0f}; "
                f"live sessions: {metric(text, 'pqkv_sessions'):.0f}")

        # docker-compose stop: SIGTERM, then the grace period.
        grace = server_spec.get("stop_grace_period", "10s")
        grace_s = float(re.match(r"(\d+)", str(grace)).group(1))
        stop_start = time.time()
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            fail(f"the server did not stop within the compose stop_grace_period ({grace})")
        server = None
        if code != 0:
            fail(f"the server exited with {code} on SIGTERM")
        log(f"pqkv-server stopped on SIGTERM in {time.time() - stop_start:.1f} s "
            f"(grace {grace})")
        log(f"compose scenario in namespaces ok: {time.time() - started:.1f} s in all")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        spaces.remove()


if __name__ == "__main__":
    main()
