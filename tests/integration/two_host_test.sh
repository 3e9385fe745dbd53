#!/usr/bin/env bash
# Two hosts on one machine: the server in one network namespace, a worker in another,
# joined by a veth pair that this test makes and removes. UCX is forced onto TCP over
# the veth (UCX_TLS=tcp, UCX_NET_DEVICES), so the rows cross a network link; the worker
# checks every landed row bit for bit against what it uploaded.
#
# Where namespaces cannot be made (not root, no CAP_NET_ADMIN), it reports itself
# skipped in the JUnit results (scripts/test.sh counts it apart), never passed.
set -uo pipefail
server=server/pqkv-server
worker=tests/integration/data_plane_client
tag=$$
ns_server=pqkv-srv-$tag ns_worker=pqkv-wrk-$tag
veth_server=pqs$tag veth_worker=pqw$tag
tmp=${TEST_TMPDIR:-$(mktemp -d)}

skip() {
  echo "SKIPPED: $1"
  local why
  why=$(printf '%s' "$1" | tr -d '\n' | sed 's/&/\&amp;/g; s/</\&lt;/g; s/>/\&gt;/g; s/"/\&quot;/g')
  if [ -n "${XML_OUTPUT_FILE:-}" ]; then
    cat >"$XML_OUTPUT_FILE" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="two_host_test" errors="0" failures="0" skipped="1" tests="1">
    <testcase classname="two_host_test" name="UCX over TCP between two network namespaces" time="0">
      <skipped message="$why"/>
    </testcase>
  </testsuite>
</testsuites>
XML
  fi
  exit 0
}

server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  ip netns del "$ns_server" 2>/dev/null
  ip netns del "$ns_worker" 2>/dev/null
}
trap cleanup EXIT

command -v ip >/dev/null || skip "no ip command (iproute2)"
if ! err=$(ip netns add "$ns_server" 2>&1); then
  skip "cannot make network namespaces here: $err"
fi
ip netns add "$ns_worker" || exit 1
ip link add "$veth_server" type veth peer name "$veth_worker" || exit 1
ip link set "$veth_server" netns "$ns_server" && ip link set "$veth_worker" netns "$ns_worker" || exit 1
ip -n "$ns_server" addr add 10.231.0.1/24 dev "$veth_server" || exit 1
ip -n "$ns_worker" addr add 10.231.0.2/24 dev "$veth_worker" || exit 1
for ns in "$ns_server" "$ns_worker"; do ip -n "$ns" link set lo up || exit 1; done
ip -n "$ns_server" link set "$veth_server" up && ip -n "$ns_worker" link set "$veth_worker" up || exit 1

port_file=$tmp/two_host_port
rm -f "$port_file"
UCX_TLS=tcp UCX_NET_DEVICES=$veth_server ip netns exec "$ns_server" "$server" --host=10.231.0.1 \
  --port=0 --port_file="$port_file" --metrics_port=-1 --log_level=warn &
server_pid=$!
for _ in $(seq 300); do [ -s "$port_file" ] && break; sleep 0.1; done
[ -s "$port_file" ] || { echo "FAILED: the server did not start"; exit 1; }
port=$(cat "$port_file")

# The worker's namespace has no route to the server but the veth.
if ip netns exec "$ns_worker" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
  echo "FAILED: the server is reachable on the worker's loopback; the namespaces leak"
  exit 1
fi
start=$(date +%s%N)
out=$(UCX_TLS=tcp UCX_NET_DEVICES=$veth_worker ip netns exec "$ns_worker" "$worker" \
  --server="10.231.0.1:$port" --mode=roundtrip --expect_path=ucx-put 2>&1)
status=$?
echo "$out"
echo "worker run over the veth took $((($(date +%s%N) - start) / 1000000)) ms (connect, upload, 3 retrievals)"
[ $status -eq 0 ] && [[ "$out" == *"roundtrip ok ucx-put"* ]] || { echo "FAILED"; exit 1; }
echo "two-host UCX over TCP ok"
