#!/usr/bin/env python3
"""Helpers for bench/idle: the agents' memory, and the report of requests and memory per binary."""
import json, os, statistics, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rollout_helper import agents, by_call, diff, kubectl_calls, parse_metrics, status_kb  # noqa: E402


def cmd_memory(binary, *roots):
    """VmRSS, RssAnon, RssFile (KiB) of each agent below the given PIDs, as JSON."""
    out = []
    for pid in agents([int(r) for r in roots], binary):
        fields = [status_kb(pid, k) for k in ("VmRSS", "RssAnon", "RssFile")]
        if None not in fields:
            out.append(fields)
    print(json.dumps(out))


# What the agents' ServiceAccount may touch (deploy/kured.yaml's RBAC, and what a newer kured might
# ask for). Requests for other resources in the API server's count are the control plane's own (its
# informers' watches come and go at random moments), noise the background cannot cancel exactly.
AGENT_RESOURCES = {"nodes", "pods", "daemonsets", "events", "leases", "namespaces"}


def agent_calls(work, run):
    """The agents' requests during `run`, by (verb, resource, subresource): the API server's count
    of requests for the resources agents use, less the background (measured over as long before)
    and node-init's own kubectl calls."""
    total = by_call(diff(parse_metrics(f"{work}/metrics.{run}.0"), parse_metrics(f"{work}/metrics.{run}.1")))
    background = by_call(diff(parse_metrics(f"{work}/metrics.background.0"),
                              parse_metrics(f"{work}/metrics.background.1")))
    node_init = kubectl_calls(f"{work}/{run}/kubectl.log")
    out = {}
    for k in set(total) | set(background):
        if k[1] not in AGENT_RESOURCES:
            continue
        v = total.get(k, 0) - background.get(k, 0) - node_init.get(k, 0)
        if round(v) > 0:
            out[k] = round(v)
    return out


def mib(kib):
    return f"{kib / 1024:.1f}"


def cmd_report(work, n, duration, period, *binaries):
    n = int(n)
    rows = []
    for i, binary in enumerate(binaries):
        calls = agent_calls(work, f"run{i}")
        with open(f"{work}/run{i}/memory.json") as f:
            memory = json.load(f)
        size = os.path.getsize(binary)
        rows.append((binary, calls, memory, size))

    print(f"{n} idle agents (no reboot needed), --period={period}, {duration}s each")
    print("requests by the agents: the API server's count for nodes, pods, daemonsets, events,")
    print("leases and namespaces, less the background traffic measured over as long before and")
    print("less node-init's own kubectl calls")
    print()
    base = None
    for binary, calls, memory, size in rows:
        total = sum(calls.values())
        rss = [m[0] for m in memory]
        anon = [m[1] for m in memory]
        files = [m[2] for m in memory]
        print(binary)
        print(f"  binary size       {size / 1e6:.1f} MB")
        print(f"  API requests      {total} in all, {total / n:.1f} per agent")
        for (verb, res, sub), v in sorted(calls.items(), key=lambda kv: -kv[1]):
            name = res + (f"/{sub}" if sub else "")
            print(f"    {v:5d}  {verb} {name}")
        if rss:
            print(f"  VmRSS (MiB)       median {mib(statistics.median(rss))}, max {mib(max(rss))} "
                  f"(RssAnon {mib(statistics.median(anon))}, RssFile {mib(statistics.median(files))})")
        else:
            print("  VmRSS             no agent was running at the end")
        if base is None:
            base = (total, statistics.median(rss) if rss else None, size)
        else:
            ratios = []
            if total and base[0] is not None:
                ratios.append(f"requests {base[0] / total:.2f}x")
            if rss and base[1]:
                ratios.append(f"VmRSS {base[1] / statistics.median(rss):.2f}x")
            ratios.append(f"size {base[2] / size:.2f}x")
            print("  first binary against this one: " + ", ".join(ratios))
        print()


if __name__ == "__main__":
    {"memory": cmd_memory, "report": cmd_report}[sys.argv[1]](*sys.argv[2:])
