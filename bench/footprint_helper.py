#!/usr/bin/env python3
"""Helpers for bench/footprint: size breakdown by crate, memory sampling, and the report."""
import collections, json, os, re, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rollout_helper import children  # noqa: E402


# --- size -------------------------------------------------------------------------------------

def sections(binary):
    """Allocated ELF sections and their sizes (readelf -SW)."""
    out = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*)", line)
        if m and "A" in m.group(3):
            found[m.group(1)] = int(m.group(2), 16)
    return found


# Rust's standard library and the compiler's runtime: one bucket.
STD = {"std", "core", "alloc", "compiler_builtins", "panic_unwind", "panic_abort", "gimli", "addr2line",
       "miniz_oxide", "rustc_demangle", "object", "hashbrown", "std_detect", "adler2", "unwind"}


def crate_of(name):
    """The crate a demangled Rust symbol belongs to (the implementing type's crate for
    `<T as Trait>::f`, the trait's when T is a standard type), or a bucket for C and Go symbols."""
    name = name.strip()
    while name.startswith("<"):
        inner = name[1:]
        # `<T as Trait>::f`: T's crate, unless T is generic or from std, then the trait's.
        m = re.match(r"&?(?:mut )?(?:dyn )?([A-Za-z_][A-Za-z0-9_]*)::", inner)
        t = re.search(r" as ([A-Za-z_][A-Za-z0-9_]*)::", inner)
        if m and m.group(1) not in STD:
            return m.group(1)
        if t:
            return t.group(1)
        if m:
            return m.group(1)
        name = inner
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", name)
    if m:
        return m.group(1)
    # Go: "net/http.(*Client).Do", "k8s.io/client-go/rest.(*Request).Do"
    m = re.match(r"([a-z0-9.\-]+(?:/[A-Za-z0-9_.\-]+)*)\.", name)
    if m and "/" in m.group(1):
        parts = m.group(1).split("/")
        # a module path: its first three elements (host/org/repo), a standard package: its first
        return "/".join(parts[:3]) if "." in parts[0] else parts[0]
    if name.startswith("ring_core_"):
        return "ring"
    if name.startswith("anon.") and name.endswith(".llvm"):
        return "[unnamed constants]"
    return "[C: musl libc, ring's C and assembly]" if m is None else m.group(1)


def breakdown(binary):
    """Bytes of code and read-only data per crate, from the symbol table (needs an unstripped
    binary); None when it has no symbols."""
    out = subprocess.run(["nm", "-S", "--size-sort", "-C", binary], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    sizes = collections.Counter()
    for line in out.stdout.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 4 or parts[2] not in "tTrRdD":
            continue
        c = crate_of(parts[3])
        sizes["std (Rust's standard library)" if c in STD else c] += int(parts[1], 16)
    return sizes


def cmd_size(binary, unstripped=""):
    sec = sections(binary)
    crates = breakdown(unstripped or binary)
    print(json.dumps({"bytes": os.path.getsize(binary), "sections": sec,
                      "crates": dict(crates) if crates is not None else None}))


# --- memory -----------------------------------------------------------------------------------

def agents(root, binary):
    """Processes running `binary` below `root` (unshare -> node-init -> agent)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            if os.readlink(f"/proc/{pid}/exe") == binary:
                found.append(pid)
        except OSError:
            pass
        todo += children(pid)
    return found


def status(pid):
    got = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
                    got[k] = int(v.split()[0])
    except OSError:
        return None
    return got


def smaps(pid, binary):
    """Resident kB of the binary's own mappings by permissions, and of everything else."""
    by = collections.Counter()
    cur = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split()
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    path = head[5] if len(head) > 5 else "[anon]"
                    cur = ("binary " + head[1]) if path == binary else ("other " + (path if path.startswith("[") else "file"))
                elif head and head[0] == "Rss:" and cur:
                    by[cur] += int(head[1])
    except OSError:
        return None
    return dict(by)


def cgroup_memory(cg):
    """cgroup v2: memory.current, the working set as the kubelet computes it (current minus
    inactive_file), and memory.peak when the kernel has it; bytes."""
    if not cg:
        return None
    try:
        current = int(open(f"{cg}/memory.current").read())
        stat = dict(l.split() for l in open(f"{cg}/memory.stat"))
        got = {"current": current, "working_set": current - int(stat.get("inactive_file", 0)),
               "anon": int(stat.get("anon", 0)), "file": int(stat.get("file", 0))}
        if os.path.exists(f"{cg}/memory.peak"):
            got["peak"] = int(open(f"{cg}/memory.peak").read())
        return got
    except (OSError, ValueError):
        return None


def page_cache(path):
    """kB of the file in the page cache (fincore), whoever maps it: the memory its pages take."""
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", path], capture_output=True, text=True)
    return int(out.stdout.split()[0]) // 1024 if out.returncode == 0 and out.stdout.split() else None


def cmd_cgroup(cg=""):
    print(json.dumps(cgroup_memory(cg)))


def cmd_snapshot(root, binary, cg=""):
    """One agent's memory now, as JSON."""
    pids = agents(int(root), binary)
    if len(pids) != 1:
        sys.exit(f"expected one agent below {root}, found {pids}")
    pid = pids[0]
    print(json.dumps({"pid": pid, "status": status(pid), "smaps": smaps(pid, binary),
                      "page_cache": page_cache(binary), "cgroup": cgroup_memory(cg)}))


def cmd_sample(out, root, binary):
    """Every 0.1 s, append 'time pid VmHWM VmRSS RssAnon RssFile' for the agents (until killed)."""
    with open(out, "a", buffering=1) as f:
        while True:
            now = time.time()
            for pid in agents(int(root), binary):
                s = status(pid)
                if s and "RssFile" in s:
                    f.write(f"{now:.3f} {pid} {s['VmHWM']} {s['VmRSS']} {s['RssAnon']} {s['RssFile']}\n")
            time.sleep(0.1)


def cmd_peak(samples, pid):
    """The highest VmHWM, RssAnon and RssFile sampled for one process, as JSON."""
    hwm = anon = file = 0
    for line in open(samples):
        _, p, h, _, a, fl = line.split()
        if p == pid:
            hwm, anon, file = max(hwm, int(h)), max(anon, int(a)), max(file, int(fl))
    print(json.dumps({"VmHWM": hwm, "RssAnon": anon, "RssFile": file}))


# --- report -----------------------------------------------------------------------------------

def mib(kb):
    return f"{kb / 1024:.1f} MiB"


def mb(b):
    return f"{b / 1e6:.1f} MB"


def cmd_report(results, top):
    top = int(top)
    runs = [json.loads(l) for l in open(results)]
    a = runs[0]
    b = runs[1] if len(runs) > 1 else None
    width = 18
    print(f"{'':34}{a['label'][:width]:>{width}}" + (f"{b['label'][:width]:>{width}}{'ratio':>8}" if b else ""))

    def row(name, fa, fb, fmt):
        va, vb = fa(a), (fb(b) if b else None)
        line = f"  {name:32}{(fmt(va) if va is not None else 'n/a'):>{width}}"
        if b:
            line += f"{(fmt(vb) if vb is not None else 'n/a'):>{width}}"
            line += f"{vb / va:>7.2f}x" if va and vb is not None else ""
        print(line)

    def sec(r, names):
        s = r["size"]["sections"]
        return sum(v for k, v in s.items() if k in names) or None

    print("binary")
    row("file size", lambda r: r["size"]["bytes"], lambda r: r["size"]["bytes"], mb)
    row("  code (.text)", lambda r: sec(r, {".text"}), lambda r: sec(r, {".text"}), mb)
    row("  read-only data", lambda r: sec(r, {".rodata", ".data.rel.ro", ".gopclntab", ".typelink",
                                              ".itablink", ".noptrdata"}),
        lambda r: sec(r, {".rodata", ".data.rel.ro", ".gopclntab", ".typelink", ".itablink", ".noptrdata"}), mb)
    row("  unwind tables", lambda r: sec(r, {".eh_frame", ".eh_frame_hdr", ".gcc_except_table"}),
        lambda r: sec(r, {".eh_frame", ".eh_frame_hdr", ".gcc_except_table"}), mb)
    row("  relocations", lambda r: sec(r, {".rela.dyn"}), lambda r: sec(r, {".rela.dyn"}), mb)
    for phase, what in (("idle", "idle agent (after start-up, no reboot needed)"),
                        ("drain", f"during a drain of {a['pods']} pods (peak, sampled every 0.1 s)")):
        print(what)
        if phase == "idle":
            g = lambda k: (lambda r: r["idle"]["status"].get(k))
            row("VmRSS", g("VmRSS"), g("VmRSS"), mib)
            row("  RssAnon (own memory)", g("RssAnon"), g("RssAnon"), mib)
            row("  RssFile (binary's pages)", g("RssFile"), g("RssFile"), mib)
            sm = lambda k: (lambda r: (r["idle"]["smaps"] or {}).get(k))
            row("    of which code (r-xp)", sm("binary r-xp"), sm("binary r-xp"), mib)
            row("    of which read-only (r--p)", sm("binary r--p"), sm("binary r--p"), mib)
            row("binary in the page cache", lambda r: r["idle"].get("page_cache"),
                lambda r: r["idle"].get("page_cache"), mib)
            row("threads", g("Threads"), g("Threads"), str)
            cg = lambda k: (lambda r: (r["idle"]["cgroup"] or {}).get(k))
            row("cgroup working set", lambda r: cg("working_set")(r) and cg("working_set")(r) / 1024,
                lambda r: cg("working_set")(r) and cg("working_set")(r) / 1024, mib)
        else:
            g = lambda k: (lambda r: r["drain"].get(k))
            row("VmHWM (peak VmRSS)", g("VmHWM"), g("VmHWM"), mib)
            row("  peak RssAnon", g("RssAnon"), g("RssAnon"), mib)
            row("  peak RssFile", g("RssFile"), g("RssFile"), mib)
            cg = lambda r: (r.get("drain_cgroup") or {}).get("peak")
            row("cgroup memory.peak", lambda r: cg(r) and cg(r) / 1024, lambda r: cg(r) and cg(r) / 1024, mib)
    if not (a["idle"].get("cgroup")):
        print("  (cgroup figures: n/a, no writable cgroup v2 memory controller at /sys/fs/cgroup here)")
    for r in runs:
        crates = r["size"]["crates"]
        if not crates:
            print(f"size by crate, {r['label']}: no symbol table (stripped), no breakdown")
            continue
        total = sum(crates.values())
        print(f"size by crate, {r['label']} (code and read-only data of named symbols, "
              f"{mb(total)} in all; top {top}):")
        for name, size in sorted(crates.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {size / 1e3:9.0f} kB {100 * size / total:5.1f}%  {name}")


if __name__ == "__main__":
    globals()["cmd_" + sys.argv[1]](*sys.argv[2:])
