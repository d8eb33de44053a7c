#!/usr/bin/env python3
"""Helpers for bench/handoff: one token per agent, progress, the report and the table.

Every agent holds a token of its own for the same ServiceAccount (so the same RBAC), and the API
server's audit log names each request's token by its ID (user.extra credential-id "JTI=<id>"):
that is how a request is put down to an agent. Lock writes are logged with their answer, so the
holders after each successful write are read from the annotation it wrote.
"""
import base64, http.client, json, os, ssl, subprocess, sys
from collections import deque
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rollout_helper import med, pct, ts  # noqa: E402

LOCK_ANNOTATION = "weave.works/kured-node-lock"
CREDENTIAL = "authentication.kubernetes.io/credential-id"
# The goals of the hand-off (issue 14): at N=500, p99 under a second and at most one conflict per
# hand-off; a waiting agent costs at most two requests per --period, besides its watch.
GOAL_P99_S, GOAL_CONFLICTS, GOAL_PER_PERIOD = 1.0, 1.0, 2.0


def cmd_tokens(admin_kubeconfig, ns, agent_kubeconfig, fleet, prefix, n):
    """For each of the N nodes, a token of ServiceAccount `ns`/kured and a kubeconfig holding it
    (`fleet`/nodes/<node>/kubeconfig, like `agent_kubeconfig` but for the token); writes
    `fleet`/credentials.json, the token IDs by node."""
    view = json.loads(subprocess.run(["kubectl", "--kubeconfig", admin_kubeconfig, "config", "view", "--raw",
                                      "-o", "json"], check=True, capture_output=True, text=True).stdout)
    cluster, user = view["clusters"][0]["cluster"], view["users"][0]["user"]
    ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
    ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    server = urlparse(cluster["server"])
    conn = http.client.HTTPSConnection(server.hostname, server.port, context=ctx)
    with open(agent_kubeconfig) as f:
        template = f.read()
    if template.count("token: ") != 1:
        sys.exit(f"handoff_helper: {agent_kubeconfig}: expected one 'token: ' line to replace")
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                       "spec": {"expirationSeconds": 86400}})
    ids = {}
    for i in range(int(n)):
        node = f"{prefix}-{i}"
        conn.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/kured/token", body,
                     {"Content-Type": "application/json"})
        answer = conn.getresponse()
        text = answer.read()
        if answer.status != 201:
            sys.exit(f"handoff_helper: a token for {node} (ServiceAccount {ns}/kured): HTTP {answer.status}: {text[:300]!r}")
        token = json.loads(text)["status"]["token"]
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        if "jti" not in claims:
            sys.exit(f"handoff_helper: the token for {node} has no ID (jti): cannot tell its requests apart")
        ids[claims["jti"]] = node
        os.makedirs(f"{fleet}/nodes/{node}", exist_ok=True)
        path = f"{fleet}/nodes/{node}/kubeconfig"
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write("\n".join(f"{line.split('token: ')[0]}token: {token}" if "token: " in line else line
                              for line in template.split("\n")))
    with open(f"{fleet}/credentials.json", "w") as f:
        json.dump(ids, f)


def requests(audit, fleet):
    """(time, node, event) of each completed request of the fleet's agents (a watch when it
    started), in the order of the log; `node` is the agent whose token made it."""
    with open(f"{fleet}/namespace") as f:
        user = f"system:serviceaccount:{f.read().strip()}:kured"
    with open(f"{fleet}/credentials.json") as f:
        ids = json.load(f)
    out = []
    if not os.path.exists(audit):
        return out
    with open(audit, errors="replace") as f:
        for line in f:
            if user not in line:
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            u = e.get("user") or {}
            if u.get("username") != user:
                continue
            if e.get("stage") != ("ResponseStarted" if e.get("verb") == "watch" else "ResponseComplete"):
                continue
            cred = ((u.get("extra") or {}).get(CREDENTIAL) or [""])[0]
            node = ids.get(cred.removeprefix("JTI="), "?")
            out.append((ts(e.get("stageTimestamp") or e["requestReceivedTimestamp"]), node, e))
    out.sort(key=lambda r: r[0])
    return out


def holders_of(event):
    """The nodes holding the lock after a successful write, from the object it answered."""
    obj = event.get("responseObject") or {}
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(LOCK_ANNOTATION)
    if not value:
        return set()
    record = json.loads(value)
    entries = record.get("locks", []) if "locks" in record or "maxOwners" in record else [record]
    return {e.get("nodeID") for e in entries if e.get("nodeID")}


def key(e):
    ref = e.get("objectRef") or {}
    res = ref.get("resource", "") + ("/" + ref["subresource"] if ref.get("subresource") else "")
    return e.get("verb", ""), res, str((e.get("responseStatus") or {}).get("code", ""))


def is_lock_write(e):
    ref = e.get("objectRef") or {}
    return e.get("verb") == "update" and ref.get("resource") == "daemonsets" and not ref.get("subresource")


def analyse(audit, fleet, n, c):
    """The hand-offs and requests of one fleet, from the audit log."""
    reqs = requests(audit, fleet)
    ready = {}
    for at, node, e in reqs:
        # An agent waits once it watches the lock (or has taken it in its first round).
        if node not in ready and (e.get("objectRef") or {}).get("resource") == "daemonsets" and (
                e.get("verb") == "watch" or is_lock_write(e)):
            ready[node] = at
    t_ready = max(ready.values()) if len(ready) >= n else None
    # Lock writes in the order the API server made them (resourceVersion), each slot freed queued
    # until an acquisition takes it: hand-off = (release, acquisition, acquirer).
    writes = sorted(((int(e["responseObject"]["metadata"]["resourceVersion"]), at, node, e)
                     for at, node, e in reqs if is_lock_write(e) and key(e)[2] == "200" and e.get("responseObject")),
                    key=lambda w: w[0])
    free, prev, handoffs, acquired = deque([None] * c), set(), [], {}
    for _, at, node, e in writes:
        cur = holders_of(e)
        for _ in prev - cur:
            free.append(at)
        for holder in cur - prev:
            since = free.popleft() if free else None
            acquired.setdefault(holder, at)
            if since is not None:
                handoffs.append((since, at, holder))
        prev = cur
    return reqs, ready, t_ready, handoffs, acquired


def measured(handoffs, t_ready, h):
    """The first `h` hand-offs whose slot was freed once every agent was waiting."""
    if t_ready is None:
        return []
    return [x for x in handoffs if x[0] >= t_ready][:h]


def cmd_progress(audit, fleet, n, c, h):
    """Prints how far the run is; exits 0 once `h` hand-offs are measured."""
    n, c, h = int(n), int(c), int(h)
    _, ready, t_ready, handoffs, _ = analyse(audit, fleet, n, c)
    done = len(measured(handoffs, t_ready, h))
    print(f"{len(ready)} of {n} agents waiting, {len(handoffs)} hand-offs, {done} of {h} measured")
    sys.exit(0 if done >= h else 1)


def cmd_report(audit, fleet, n, c, h, period, period_s):
    n, c, h, period_s = int(n), int(c), int(h), float(period_s)
    reqs, ready, t_ready, handoffs, acquired = analyse(audit, fleet, n, c)
    ms = measured(handoffs, t_ready, h)
    if not ms:
        sys.exit("handoff_helper: no hand-off measured")
    t_end = ms[-1][1]
    lat = [a - r for r, a, _ in ms]
    # Where a hand-off's time goes: to the winner's first request after the release (its turn
    # delay, and seeing the release), then to its write (reading its Node, the write itself).
    by_node = {}
    for at, node, e in reqs:
        by_node.setdefault(node, []).append((at, e))
    turn, write = [], []
    for r, a, holder in ms:
        first = next((at for at, e in by_node.get(holder, []) if r < at < a), None)
        if first is not None:
            turn.append(first - r)
            write.append(a - first)
    in_window = [(at, node, e) for at, node, e in reqs if t_ready <= at <= t_end]
    conflicts = sum(1 for _, _, e in in_window if is_lock_write(e) and key(e)[2] == "409")
    lock_writes = sum(1 for _, _, e in in_window if is_lock_write(e))
    acquisitions = sum(1 for _, a, _ in handoffs if t_ready <= a <= t_end)
    # Waiting agents: from t_ready until the agent's own acquisition (if any in the window).
    calls, agent_s, watching = {}, 0.0, 0
    for node in ready:
        until = min(t_end, acquired.get(node, t_end))
        if until <= t_ready:
            continue
        agent_s += until - t_ready
        for at, e in by_node.get(node, []):
            if t_ready <= at < until:
                k = key(e)
                calls[k] = calls.get(k, 0) + 1
                # The watch of the lock: started again when it times out, listed again if need be.
                watching += k[0] in ("watch", "list") and k[1] == "daemonsets"
    waiting = sum(calls.values()) - watching
    per_hour = waiting / agent_s * 3600 if agent_s else float("nan")
    watches_per_hour = watching / agent_s * 3600 if agent_s else float("nan")
    summary = {
        "nodes": n, "concurrency": c, "period": period, "handoffs": len(ms),
        "p50_s": pct(lat, 50), "p99_s": pct(lat, 99), "max_s": max(lat),
        "conflicts_per_handoff": conflicts / acquisitions, "writes_per_handoff": lock_writes / acquisitions,
        "waiting_per_hour": per_hour, "waiting_per_period": per_hour * period_s / 3600,
        "watches_per_hour": watches_per_hour, "waiting_per_handoff": waiting / acquisitions,
        "window_s": t_end - t_ready,
    }
    with open(f"{fleet}/summary.json", "w") as f:
        json.dump(summary, f)

    print(f"hand-off: N={n} waiting agents, concurrency c={c}, period {period}; {len(ms)} hand-offs measured"
          f" over {t_end - t_ready:.0f} s once all {n} agents were waiting")
    print(f"  hand-off latency p50/p99   {pct(lat, 50):6.2f} s / {pct(lat, 99):.2f} s   (the write that frees a slot ->"
          f" the write that takes it; max {max(lat):.2f} s; goal p99 < {GOAL_P99_S:.0f} s)")
    if turn:
        print(f"    to the winner's request  {med(turn):6.2f} s          (median: its turn delay, and the release"
              f" reaching it)")
        print(f"    its read and write       {med(write):6.2f} s          (median: its Node read, the lock write)")
    print(f"  409 conflicts per hand-off {conflicts / acquisitions:6.2f}            ({conflicts} in {acquisitions}"
          f" hand-offs; {lock_writes / acquisitions:.2f} lock writes per hand-off; goal <= {GOAL_CONFLICTS:.0f})")
    print(f"  a waiting agent's requests {per_hour:6.1f} per hour  ({per_hour * period_s / 3600:.2f} per --period"
          f" {period}; goal <= {GOAL_PER_PERIOD:.0f}) besides its watch of the lock: {watches_per_hour:.1f} watch"
          " starts and lists per hour")
    print(f"    all waiting agents'      {waiting / acquisitions:6.1f} per hand-off   (besides their watches; over"
          f" {agent_s / 3600:.2f} agent-hours of waiting)")
    print(f"    {'verb':7} {'resource':22} {'answer':>6} {'requests':>8} {'/agent/h':>9}")
    for (verb, res, code), v in sorted(calls.items(), key=lambda kv: -kv[1]):
        print(f"    {verb:7} {res:22} {code:>6} {v:8d} {v / agent_s * 3600:9.2f}")


def cmd_table(*summaries):
    """Every run's figures in one table, the goals beside them."""
    rows = [json.load(open(s)) for s in summaries]
    print(f"{'N':>4} {'c':>2} {'hand-offs':>9} {'p50':>6} {'p99':>6} {'goal':>6}   {'409/hand-off':>12} {'goal':>4}"
          f"   {'waiting agent: req/h':>20} {'per period':>10} {'goal':>4} {'watch/h':>7}")
    for r in sorted(rows, key=lambda r: (r["nodes"], r["concurrency"])):
        ok = lambda good: " " if good else "!"  # noqa: E731
        print(f"{r['nodes']:4d} {r['concurrency']:2d} {r['handoffs']:9d} {r['p50_s']:5.2f}s {r['p99_s']:5.2f}s"
              f" {'<' + format(GOAL_P99_S, '.0f') + 's':>6}{ok(r['p99_s'] < GOAL_P99_S)}"
              f"  {r['conflicts_per_handoff']:12.2f} {'<=' + format(GOAL_CONFLICTS, '.0f'):>4}"
              f"{ok(r['conflicts_per_handoff'] <= GOAL_CONFLICTS)}"
              f"  {r['waiting_per_hour']:20.1f} {r['waiting_per_period']:10.2f} {'<=' + format(GOAL_PER_PERIOD, '.0f'):>4}"
              f"{ok(r['waiting_per_period'] <= GOAL_PER_PERIOD)} {r['watches_per_hour']:7.1f}")
    print("(! marks a figure that misses its goal; the goals are for N=500. watch/h: a waiting agent's watch of the lock,"
          " started again when it times out)")


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
