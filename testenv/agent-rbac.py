"""The RBAC objects of deploy/kured.yaml, moved into one namespace of the test cluster.

Reads the manifest's objects as `kubectl create --dry-run=client -o json` prints them (one JSON
document after another) and writes a List of its ServiceAccount, ClusterRole, ClusterRoleBinding,
Role and RoleBinding: the namespaced ones in NAMESPACE, the cluster-wide ones renamed
`<name>-NAMESPACE`, all labelled kured.test/agent-rbac=NAMESPACE. The rules are untouched, so an
agent holding the ServiceAccount's token has exactly the permissions the shipped manifest grants.

Usage: python3 testenv/agent-rbac.py NAMESPACE < objects.json > list.json
"""

import json
import sys

KINDS = ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
LABEL = "kured.test/agent-rbac"


def objects(text):
    decoder, at, found = json.JSONDecoder(), 0, []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return found
        obj, at = decoder.raw_decode(text, at)
        found.append(obj)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: agent-rbac.py NAMESPACE < objects.json")
    ns = sys.argv[1]
    rbac = [o for o in objects(sys.stdin.read()) if o.get("kind") in KINDS]
    kinds = sorted(o["kind"] for o in rbac)
    if kinds != sorted(KINDS):
        sys.exit(f"agent-rbac.py: expected one each of {KINDS} in deploy/kured.yaml, found {kinds}")
    for o in rbac:
        meta = o["metadata"]
        meta.setdefault("labels", {})[LABEL] = ns
        if o["kind"].startswith("Cluster"):
            meta["name"] = f"{meta['name']}-{ns}"
        else:
            meta["namespace"] = ns
        if o["kind"] == "ClusterRoleBinding":
            o["roleRef"]["name"] = f"{o['roleRef']['name']}-{ns}"
        for subject in o.get("subjects", []):
            subject["namespace"] = ns
    json.dump({"apiVersion": "v1", "kind": "List", "items": rbac}, sys.stdout)


if __name__ == "__main__":
    main()
