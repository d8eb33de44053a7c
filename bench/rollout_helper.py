#!/usr/bin/env python3
"""Helpers for bench/rollout: RSS sampling, metric parsing, and the report."""
import glob, json, math, os, re, statistics, sys, time
from datetime import datetime


def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def agents(roots, binary):
    """kured processes below the recorded PIDs (unshare -> node-init -> agent)."""
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        try:
            if os.readlink(f"/proc/{pid}/exe") == binary:
                found.append(pid)
        except OSError:
            pass
        todo += children(pid)
    return found


def status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cmd_sample(out, binary, *roots):
    """Every 0.5s, append 'time pid VmHWM VmRSS RssAnon' for every agent to `out` (until killed)."""
    roots = [int(r) for r in roots]
    with open(out, "a", buffering=1) as f:
        while True:
            now = time.time()
            for pid in agents(roots, binary):
                hwm, rss, anon = (status_kb(pid, k) for k in ("VmHWM", "VmRSS", "RssAnon"))
                if None not in (hwm, rss, anon):
                    f.write(f"{now:.3f} {pid} {hwm} {rss} {anon}\n")
            time.sleep(0.5)


def cmd_idle(binary, *roots):
    pids = agents([int(r) for r in roots], binary)
    rss = [(status_kb(p, "VmRSS"), status_kb(p, "RssAnon")) for p in pids]
    print(json.dumps([r for r in rss if None not in r]))


LINE = re.compile(r'^apiserver_request_total\{(.*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(path):
    counts = {}
    with open(path) as f:
        for line in f:
            m = LINE.match(line.strip())
            if not m:
                continue
            labels = dict(LABEL.findall(m.group(1)))
            key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""),
                   labels.get("code", ""))
            counts[key] = counts.get(key, 0) + float(m.group(2))
    return counts


def diff(a, b):
    return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b)}


def by_call(counts, with_code=False):
    out = {}
    for (verb, res, sub, code), v in counts.items():
        k = (verb, res, sub) + ((code,) if with_code else ())
        out[k] = out.get(k, 0) + v
    return out


URL = re.compile(r'\] (GET|POST|PUT|PATCH|DELETE) https?://[^/]+(/[^ ?]*)(\?\S*)? ')


def kubectl_calls(path):
    """node-init's own requests, from its kubectl -v=6 log, keyed as apiserver_request_total."""
    out = {}
    if not os.path.exists(path):
        return out
    with open(path, errors="replace") as f:
        for line in f:
            m = URL.search(line)
            if not m:
                continue
            method, p, q = m.group(1), m.group(2).strip("/").split("/"), m.group(3) or ""
            # /api/v1/<res>[/<name>[/<sub>]] or /api/v1/namespaces/<ns>/<res>/... or /apis/<g>/<v>/...
            if not p or p[0] not in ("api", "apis"):
                continue
            p = p[2:] if p[0] == "api" else p[3:]
            if len(p) >= 2 and p[0] == "namespaces" and len(p) > 2:
                p = p[2:]
            if not p:
                continue
            res, name, sub = p[0], p[1] if len(p) > 1 else "", p[2] if len(p) > 2 else ""
            verb = method
            if method == "GET":
                verb = "WATCH" if "watch=true" in q else ("GET" if name else "LIST")
            k = (verb, res, sub)
            out[k] = out.get(k, 0) + 1
    return out


def audit_events(path, user):
    """(received at, event) of each audit-log event of `user`'s requests."""
    with open(path, errors="replace") as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if (e.get("user") or {}).get("username") == user:
                yield ts(e.get("requestReceivedTimestamp", "1970-01-01T00:00:00Z")), e


def audit_node_calls(path, user, start, end):
    """(time, node, verb) of `user`'s completed requests to a Node by name, from the audit log."""
    out = []
    for at, e in audit_events(path, user):
        ref = e.get("objectRef") or {}
        if (e.get("stage") == "ResponseComplete" and ref.get("resource") == "nodes" and ref.get("name")
                and start <= at <= end):
            out.append((at, ref["name"], e.get("verb", "").upper()))
    return out


def audit_calls(path, user, start, end):
    """Exact counts of `user`'s requests received from `start` to `end` (seconds since the epoch),
    from the API server's audit log, keyed (verb, resource, subresource, code): each request once,
    a watch when it started (it may still be open), every other request when it completed."""
    out = {}
    if not os.path.exists(path):
        return None
    for at, e in audit_events(path, user):
        verb, stage = e.get("verb", ""), e.get("stage", "")
        if stage != ("ResponseStarted" if verb == "watch" else "ResponseComplete") or not start <= at <= end:
            continue
        ref = e.get("objectRef") or {}
        code = str((e.get("responseStatus") or {}).get("code", ""))
        k = (verb.upper(), ref.get("resource", ""), ref.get("subresource", ""), code)
        out[k] = out.get(k, 0) + 1
    return out

def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def agent_events(path):
    """(time, message) of the agent's JSON log lines."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                j = json.loads(line)
            except ValueError:
                continue
            msg = j.get("msg") or j.get("message") or (j.get("fields") or {}).get("message") or ""
            t = j.get("timestamp") or j.get("time") or j.get("ts")
            if t:
                out.append((ts(t), msg))
    return out


def per_node(work):
    """Per node: lock acquired, rebooting, back (node rebooted...), lock released (after the reboot)."""
    nodes = {}
    for log in sorted(glob.glob(f"{work}/nodes/*/agent.log")):
        node = os.path.basename(os.path.dirname(log))
        r = {}
        for t, msg in agent_events(log):
            if msg == "lock acquired" and "acquired" not in r:
                r["acquired"] = t
            elif msg == "rebooting" and "rebooting" not in r:
                r["rebooting"] = t
            elif msg.startswith("node rebooted") and "rebooting" in r and "back" not in r:
                r["back"] = t
            elif msg.startswith("lock released") and "rebooting" in r and "released" not in r:
                r["released"] = t
        nodes[node] = r
    return nodes


def cmd_done(work, n):
    """Exit 0 when every node has rebooted and released the lock afterwards."""
    nodes = per_node(work)
    done = sum(1 for r in nodes.values() if "released" in r)
    print(done)
    sys.exit(0 if done >= int(n) else 1)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def pct(xs, p):
    """The p-th percentile (nearest rank) of xs."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


def cmd_report(work, n, c, period, start, quiet_s):
    n, c, start, quiet_s = int(n), int(c), float(start), float(quiet_s)
    nodes = per_node(work)
    full = [r for r in nodes.values() if {"acquired", "rebooting", "back", "released"} <= r.keys()]
    end = max(r["released"] for r in full)
    total = end - start
    rounds = math.ceil(n / c)
    work_s = [r["released"] - r["acquired"] for r in full]
    w = med(work_s)
    ideal = rounds * w
    acq = sorted(r["acquired"] for r in full)
    rel = sorted(r["released"] for r in full)
    # hand-off: for each acquisition after the first c, the wait since the latest release before it
    gaps = []
    for a in acq[c:]:
        before = [x for x in rel if x <= a]
        if before:
            gaps.append(a - before[-1])

    print(f"rollout: N={n} nodes, concurrency c={c}, period {period}, {len(full)} of {n} nodes rebooted")
    summary = {"nodes": n, "concurrency": c, "period": period, "total_s": total, "work_s": w,
               "overhead_per_round_s": (total - ideal) / rounds, "first_lock_s": acq[0] - start,
               "handoff_s": med(gaps) if gaps else None}
    print(f"  total rollout time        {total:8.1f} s   (agents started -> last lock release)")
    print(f"  per-node work (median)    {w:8.1f} s   (agent log: 'lock acquired' -> 'lock released' after the reboot;"
          f" min {min(work_s):.1f}, max {max(work_s):.1f})")
    print(f"    of which drain+signal   {med([r['rebooting'] - r['acquired'] for r in full]):8.1f} s   ('lock acquired' -> 'rebooting')")
    print(f"    simulated reboot        {med([r['back'] - r['rebooting'] for r in full]):8.1f} s   ('rebooting' -> new agent's 'node rebooted')")
    print(f"    return + release        {med([r['released'] - r['back'] for r in full]):8.1f} s   ('node rebooted' -> 'lock released')")
    print(f"  ideal = ceil(N/c) x work  {ideal:8.1f} s   ({rounds} rounds x {w:.1f} s)")
    print(f"  coordination overhead     {(total - ideal) / rounds:8.1f} s per round  ((total - ideal) / ceil(N/c);"
          f" {(total - ideal) / n:.2f} s per node)")
    print(f"    first lock acquired     {acq[0] - start:8.1f} s   after the agents started")
    if gaps:
        print(f"    lock hand-off p50/p99   {pct(gaps, 50):8.2f} s / {pct(gaps, 99):.2f} s  (a release -> the next acquisition;"
              f" max {max(gaps):.2f}, {len(gaps)} hand-offs)")

    if os.path.exists(f"{work}/audit.log"):
        audit = audit_calls(f"{work}/audit.log", f"system:serviceaccount:{work_ns(work)}:kured", start, end)
        summary.update(report_audit(audit, n, end - start))
        report_node_phases(audit_node_calls(f"{work}/audit.log", f"system:serviceaccount:{work_ns(work)}:kured",
                                            start, end), nodes, n)
        return report_rss(work, summary)

    # API requests
    m0, m1, m2, m3 = (parse_metrics(f"{work}/metrics.{i}") for i in range(4))
    quiet = by_call(diff(m0, m1))            # background, before any agent: controllers, kwok, scheduler
    run = diff(m2, m3)                        # agents start -> rollout done
    run_calls = by_call(run)
    ni = kubectl_calls(f"{work}/kubectl.log")  # node-init's own kubectl calls, counted exactly
    # only what the agents do: nodes (get/list/watch/patch), pods (list/watch, eviction), daemonsets (lock)
    agent_keys = [k for k in run_calls if k[1] in ("nodes", "pods", "daemonsets") and k[2] in ("", "eviction")
                  and k[0] in ("GET", "LIST", "WATCH", "PATCH", "APPLY", "PUT", "UPDATE", "POST", "CREATE")
                  and not (k[1] == "pods" and k[2] == "" and k[0] not in ("GET", "LIST", "WATCH"))]
    print(f"  API requests by the agents (apiserver_request_total has no user-agent label: delta over the rollout of")
    print(f"    the calls kured makes, minus node-init's kubectl calls (counted from kubectl -v=6) and minus the")
    print(f"    background rate of the same calls over a {quiet_s:.0f}s quiet window before the agents started)")
    rows, tot = [], 0
    dur = end - start
    for k in sorted(agent_keys, key=lambda k: (k[1], k[2], k[0])):
        d = run_calls[k]
        bg = quiet.get(k, 0) * dur / quiet_s if quiet_s else 0
        a = max(0.0, d - ni.get(k, 0) - bg)  # the background estimate is noisy; never below zero
        if d == 0:
            continue
        tot += a
        rows.append((k, d, ni.get(k, 0), bg, a))
    print(f"    {'verb':7} {'resource':22} {'delta':>7} {'node-init':>9} {'backgr.':>8} {'agents':>8} {'/node':>7}")
    for (verb, res, sub), d, nic, bg, a in rows:
        r = res + ("/" + sub if sub else "")
        print(f"    {verb:7} {r:22} {d:7.0f} {nic:9.0f} {bg:8.0f} {a:8.0f} {a / n:7.1f}")
    summary.update(requests=tot, requests_per_node=tot / n)
    print(f"    total   {'':22} {'':7} {'':9} {'':8} {tot:8.0f} {tot / n:7.1f}   ({tot / dur:.1f} requests/s)")
    conflicts = sum(v for (verb, res, sub, code), v in run.items()
                    if res == "daemonsets" and sub == "" and code == "409" and verb in ("PUT", "UPDATE", "PATCH", "APPLY"))
    writes = sum(v for (verb, res, sub, code), v in run.items()
                 if res == "daemonsets" and sub == "" and verb in ("PUT", "UPDATE", "PATCH", "APPLY"))
    summary.update(conflicts=conflicts, conflicts_per_handoff=conflicts / n)
    print(f"  409 conflicts on the lock {conflicts:8.0f}     ({conflicts / n:.2f} per hand-off; {writes:.0f} lock writes,"
          f" {writes / n:.1f} per hand-off)")

    report_rss(work, summary)


def work_ns(work):
    with open(f"{work}/namespace") as f:
        return f.read().strip()


def report_audit(audit, n, dur):
    """The agents' requests, counted exactly from the audit log (by their ServiceAccount)."""
    print("  API requests by the agents (exact: the API server's audit log, the agents' ServiceAccount;"
          " a watch counted when it starts)")
    calls, codes = {}, {}
    for (verb, res, sub, code), v in audit.items():
        k = (verb, res + ("/" + sub if sub else ""))
        calls[k] = calls.get(k, 0) + v
        codes.setdefault(k, {})[code] = codes.get(k, {}).get(code, 0) + v
    tot = sum(calls.values())
    print(f"    {'verb':7} {'resource':22} {'requests':>8} {'/node':>7}   answers")
    for k in sorted(calls, key=lambda k: (-calls[k], k)):
        verb, r = k
        shown = ", ".join(f"{c}: {v:.0f}" for c, v in sorted(codes[k].items()))
        print(f"    {verb:7} {r:22} {calls[k]:8.0f} {calls[k] / n:7.2f}   {shown}")
    print(f"    total   {'':22} {tot:8.0f} {tot / n:7.2f}   ({tot / dur:.1f} requests/s)")
    conflicts = sum(v for (verb, res, sub, code), v in audit.items()
                    if res == "daemonsets" and sub == "" and code == "409")
    writes = sum(v for (verb, res, sub, code), v in audit.items()
                 if res == "daemonsets" and sub == "" and verb in ("UPDATE", "PATCH"))
    print(f"  409 conflicts on the lock {conflicts:8.0f}     ({conflicts / n:.2f} per hand-off; {writes:.0f} lock writes,"
          f" {writes / n:.1f} per hand-off)")
    return {"requests": tot, "requests_per_node": tot / n, "conflicts": conflicts, "conflicts_per_handoff": conflicts / n}


def report_node_phases(calls, nodes, n):
    """Requests to each agent's own Node, by where the node was in its cycle: waiting (before
    'lock acquired'), the cycle itself (to 'lock released'), idle after it. (A GET of a lock holder's
    Node, to reclaim its slot, counts for the holder.)"""
    phases = {}
    for at, node, verb in calls:
        r = nodes.get(node, {})
        phase = ("waiting" if at < r.get("acquired", float("inf")) else
                 "cycle" if at <= r.get("released", float("inf")) else "idle after")
        phases[(phase, verb)] = phases.get((phase, verb), 0) + 1
    print("  requests to the agent's own Node (GET/PATCH by name), by the node's phase:")
    for phase in ("waiting", "cycle", "idle after"):
        shown = ", ".join(f"{verb} {v / n:.2f}" for (p, verb), v in sorted(phases.items()) if p == phase)
        print(f"    {phase:10} {shown or '-'}   (per node)")


def report_rss(work, summary):
    hwm, anon, pids = 0, 0, set()
    with open(f"{work}/rss") as f:
        for line in f:
            _, pid, h, _, a = line.split()
            hwm, anon = max(hwm, int(h)), max(anon, int(a))
            pids.add(pid)
    idle = json.load(open(f"{work}/idle-rss"))
    print(f"  agent peak RSS            {hwm / 1024:8.1f} MiB (max VmHWM over {len(pids)} agent processes, sampled every 0.5 s)")
    print(f"    of which anonymous      {anon / 1024:8.1f} MiB (max RssAnon: the agent's own memory; the rest is the"
          " binary's file pages, shared and reclaimable)")
    summary.update(peak_rss_mib=hwm / 1024, peak_anon_mib=anon / 1024)
    if idle:
        rss, own = [r for r, _ in idle], [a for _, a in idle]
        summary.update(idle_rss_mib=med(rss) / 1024, idle_anon_mib=med(own) / 1024)
        print(f"  agent idle RSS            {med(rss) / 1024:8.1f} MiB (median VmRSS of {len(idle)} agents after the rollout;"
              f" max {max(rss) / 1024:.1f})")
        print(f"    of which anonymous      {med(own) / 1024:8.1f} MiB (median RssAnon; max {max(own) / 1024:.1f})")
    if os.environ.get("BENCH_SUMMARY"):
        with open(os.environ["BENCH_SUMMARY"], "w") as f:
            json.dump(summary, f)


# (key, what, unit) of the figures bench/compare puts side by side
COMPARED = [
    ("total_s", "total rollout time", "s"), ("work_s", "per-node work (median)", "s"),
    ("overhead_per_round_s", "coordination overhead per round", "s"),
    ("first_lock_s", "first lock acquired after start", "s"), ("handoff_s", "lock hand-off (median)", "s"),
    ("requests", "API requests by the agents", ""), ("requests_per_node", "  per node", ""),
    ("conflicts", "409 conflicts on the lock", ""), ("conflicts_per_handoff", "  per hand-off", ""),
    ("peak_rss_mib", "agent peak RSS (max VmHWM)", "MiB"), ("peak_anon_mib", "  of which anonymous", "MiB"),
    ("idle_rss_mib", "agent idle RSS (median VmRSS)", "MiB"), ("idle_anon_mib", "  of which anonymous", "MiB"),
]


def cmd_compare(label_a, summary_a, label_b, summary_b):
    """Two rollouts' figures side by side, with the ratio of the second to the first."""
    a, b = json.load(open(summary_a)), json.load(open(summary_b))
    print(f"rollout: N={a['nodes']} nodes, concurrency c={a['concurrency']}, period {a['period']}")
    print(f"  {'':34} {label_a[:22]:>22} {label_b[:22]:>22} {'ratio':>7}")
    for key, what, unit in COMPARED:
        va, vb = a.get(key), b.get(key)
        fa = "n/a" if va is None else f"{va:.1f} {unit}".strip()
        fb = "n/a" if vb is None else f"{vb:.1f} {unit}".strip()
        ratio = f"{vb / va:6.2f}x" if va and vb is not None else f"{'':>7}"
        print(f"  {what:34} {fa:>22} {fb:>22} {ratio}")


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
