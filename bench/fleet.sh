# A fleet of simulated nodes for the benchmarks (sourced by bench/rollout and bench/handoff, not
# run): the test cluster (the shared one, or one of its own whose API server keeps an audit log),
# kwok Nodes, the namespace with the DaemonSet that carries the lock, the agents' ServiceAccount,
# and one PID namespace per node whose PID 1 (testenv/node-init) runs the agent.
#
# The sourcing script sets `bench` (its name, for messages) and `repo`, then calls:
#   fleet_prepare                  $run_id and the work directory ($work); everything stopped and
#                                  removed on exit
#   fleet_binary [PATH]            the kured the agents run: PATH, or this tree's static build ($kured)
#   fleet_audit_cluster POLICY     a test cluster of its own (ports from BENCH_PORT, default 27640)
#                                  whose API server logs to $work/audit.log as the audit POLICY says
#   fleet_cluster                  start the test cluster unless it runs ($kubeconfig, kc)
#   fleet_namespace [TAG]          the namespace of the fleet tagged TAG (for an audit policy)
#   fleet_new DIR N [TAG]          a fresh fleet: namespace $ns (fleet_namespace TAG), N Nodes named
#                                  $prefix-<i>, the DaemonSet, the agents' kubeconfig
#                                  ($agent_kubeconfig); DIR holds the nodes' files ($fleet)
#   fleet_start_agent NODE KUBECONFIG C PERIOD [ARGS...]   node NODE, needing a reboot, running an
#                                  agent at concurrency C and --period PERIOD; its pid goes to `pids`
#   fleet_teardown                 stop the fleet's agents, delete its namespace, roles and Nodes
# `helpers` holds the pids of helper processes to stop on exit (a sampler, a watcher).

die() { echo "bench/$bench: $*" >&2; exit 1; }
usage_error() { echo "bench/$bench: $*" >&2; exit 2; }

fleet_prepare() {
  [[ $(id -u) == 0 ]] || usage_error "needs root (unshare)"
  real_kubectl=$(command -v kubectl) || die "kubectl not found"
  run_id=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
  work=$(mktemp -d "/tmp/kured-$bench.XXXXXX")
  started_cluster=false pids=() helpers=() kubeconfig="" ns="" fleet=""
  trap fleet_cleanup EXIT
  trap 'exit 130' INT TERM
}

fleet_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${helpers[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${helpers[@]}"; do wait "$pid" 2>/dev/null || true; done
  fleet_teardown
  if $started_cluster; then (cd "$repo" && scripts/testcluster down >/dev/null) || true; fi
  if ((rc == 0)) && [[ -z ${BENCH_KEEP:-} ]]; then rm -rf "$work"; else echo "bench/$bench: logs kept in $work" >&2; fi
}

fleet_binary() {
  kured=${1:-}
  if [[ -n $kured ]]; then
    [[ -f $kured && -x $kured ]] || die "$kured is not an executable file"
    kured=$(realpath "$kured")
  else
    echo "bench/$bench: building the static kured (scripts/build-static)" >&2
    kured=$("$repo/scripts/build-static") || die "scripts/build-static failed (or give a kured binary with -k)"
  fi
  echo "bench/$bench: agents run $kured" >&2
}

fleet_audit_cluster() {
  export KURED_TESTCLUSTER_DIR=/tmp/kured-bench-tc-$run_id
  export KURED_TESTCLUSTER_PORT=${BENCH_PORT:-27640}
  export KURED_TESTCLUSTER_APISERVER_ARGS="--audit-policy-file=$1 --audit-log-path=$work/audit.log --audit-log-maxsize=0 ${KURED_TESTCLUSTER_APISERVER_ARGS:-}"
  echo "bench/$bench: starting a test cluster of its own with an audit log ($KURED_TESTCLUSTER_DIR, ports from $KURED_TESTCLUSTER_PORT)" >&2
}

fleet_cluster() {
  if ! (cd "$repo" && scripts/testcluster status >/dev/null 2>&1); then
    started_cluster=true
    (cd "$repo" && scripts/testcluster up >&2)
  fi
  kubeconfig=$(cd "$repo" && scripts/testcluster kubeconfig)
}

kc() { "$real_kubectl" --kubeconfig "$kubeconfig" "$@"; }

fleet_namespace() { echo "kured-$bench-$run_id${1:+-$1}"; }

fleet_new() {
  local n=$2
  ns=$(fleet_namespace "${3:-}") prefix=$bench-$run_id${3:+-$3} fleet=$1
  mkdir -p "$fleet/nodes"
  echo "$ns" >"$fleet/namespace"
  echo "bench/$bench: $n nodes, namespace $ns, the DaemonSet that carries the lock" >&2
  (cd "$repo" && scripts/testcluster nodes "$n" "$prefix" "kured.bench=$ns") >/dev/null
  # The agents authenticate as ServiceAccount kured, bound to the RBAC rules of deploy/kured.yaml
  # (this creates the namespace too).
  agent_kubeconfig=$fleet/kured.kubeconfig
  (cd "$repo" && scripts/testcluster agent-kubeconfig "$ns" "$agent_kubeconfig") || die "cannot set up the agents' ServiceAccount"
  kc apply -n "$ns" -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kured
spec:
  selector: { matchLabels: { app: kured } }
  template:
    metadata: { labels: { app: kured } }
    spec:
      # The agents run as simulated nodes' processes, not as pods; this object holds the lock.
      nodeSelector: { kured.bench/no-such-node: "true" }
      containers: [{ name: kured, image: registry.invalid/kured:bench }]
EOF
}

fleet_start_agent() {
  local node=$1 agent_kc=$2 c=$3 period=$4 dir=$fleet/nodes/$1
  shift 4
  mkdir -p "$dir"
  touch "$dir/reboot-required"
  NODE_INIT_NODE=$node NODE_INIT_AGENT=$kured NODE_INIT_SENTINEL=$dir/reboot-required \
    NODE_INIT_KUBECONFIG=$kubeconfig NODE_INIT_LOG=$dir/agent.log NODE_INIT_EVENTS=$dir/events \
    unshare --pid --fork --mount-proc --kill-child "$repo/testenv/node-init" \
    --kubeconfig="$agent_kc" --ds-namespace="$ns" --ds-name=kured --log-format=json \
    --concurrency="$c" --reboot-method=signal --period="$period" \
    --reboot-sentinel="$dir/reboot-required" --metrics-host=127.0.0.1 --metrics-port=0 "$@" \
    </dev/null >>"$fleet/node-init.out" 2>&1 &
  pids+=($!)
}

fleet_teardown() {
  local pid
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  if [[ -n $ns && -f $kubeconfig ]]; then
    kc delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
    kc delete clusterrole,clusterrolebinding -l "kured.test/agent-rbac=$ns" --wait=false >/dev/null 2>&1 || true
    kc delete nodes -l "kured.bench=$ns" --wait=false >/dev/null 2>&1 || true
  fi
  ns=""
}
