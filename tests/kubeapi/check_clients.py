#!/usr/bin/env python3
# Copyright calico-rs authors. SPDX-License-Identifier: Apache-2.0
"""Checks kube-test-server with the official Kubernetes Python client (`kubernetes` on PyPI).

Usage: check_clients.py URL   (e.g. http://127.0.0.1:PORT; the server's /_test/ controls are used)

Each check compares the server's answer with what the Kubernetes "API concepts" document says a
real API server answers: status codes and reasons, resourceVersion ordering, watch events, the 410
after a compaction, bookmarks, and consistent pagination. The first difference prints
"FAIL: <what>" with the details and exits 1. Run by tests/clients/python.rs.
"""

import json
import sys
import threading
import time
import urllib.request

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

CHECKS = 0


def check(cond, what, detail=""):
    global CHECKS
    CHECKS += 1
    if not cond:
        print(f"FAIL: {what}" + (f"\n  {detail}" if detail else ""), file=sys.stderr)
        sys.exit(1)


def expect_api_error(fn, code, reason, what):
    try:
        fn()
    except ApiException as e:
        body = json.loads(e.body) if e.body else {}
        check(e.status == code, f"{what}: HTTP {code}", f"got {e.status}: {e.body}")
        check(body.get("kind") == "Status" and body.get("status") == "Failure", f"{what}: a Failure Status", e.body)
        check(body.get("reason") == reason, f"{what}: reason {reason}", f"got {body.get('reason')}: {e.body}")
        check(body.get("code") == code, f"{what}: Status.code {code}", e.body)
        return body
    check(False, f"{what}: expected HTTP {code} {reason}, the call succeeded")


def control(url, name):
    req = urllib.request.Request(f"{url}/_test/{name}", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=10) as r:
        check(r.status == 200, f"/_test/{name} answers 200")


def rv(obj):
    return int(obj.metadata.resource_version)


def main():
    url = sys.argv[1]
    cfg = client.Configuration()
    cfg.host = url
    cfg.api_key = {"authorization": "python-token"}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    api = client.ApiClient(cfg)
    v1 = client.CoreV1Api(api)
    ns = "py"

    # create / get / AlreadyExists / NotFound
    created_ns = v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    check(created_ns.status.phase == "Active", "a new namespace is Active", str(created_ns.status))
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="web", labels={"app": "web", "tier": "front"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="nginx")]),
    )
    p1 = v1.create_namespaced_pod(ns, pod)
    check(p1.metadata.uid and len(p1.metadata.uid) == 36, "create sets metadata.uid", str(p1.metadata))
    check(p1.metadata.creation_timestamp is not None, "create sets creationTimestamp")
    check(rv(p1) > rv(created_ns), "resourceVersions increase", f"{rv(p1)} <= {rv(created_ns)}")
    check(p1.metadata.namespace == ns, "the namespace comes from the path")
    check(p1.status.phase == "Pending", "a new pod is Pending", str(p1.status))
    for name, labels in [("db", {"app": "db", "tier": "back"}), ("cache", {"app": "cache"})]:
        v1.create_namespaced_pod(ns, client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")])))
    got = v1.read_namespaced_pod("web", ns)
    check(got.metadata.uid == p1.metadata.uid and rv(got) == rv(p1), "get returns the created object")
    expect_api_error(lambda: v1.create_namespaced_pod(ns, pod), 409, "AlreadyExists", "create of an existing name")
    nf = expect_api_error(lambda: v1.read_namespaced_pod("nope", ns), 404, "NotFound", "get of a missing pod")
    check(nf.get("details", {}).get("name") == "nope" and nf["details"].get("kind") == "pods", "NotFound details name the object", str(nf))
    expect_api_error(lambda: v1.create_namespaced_pod("ghost", pod), 404, "NotFound", "create in a missing namespace")

    # list with label selectors
    def names(sel):
        return sorted(p.metadata.name for p in v1.list_namespaced_pod(ns, label_selector=sel).items)
    check(names("app=web") == ["web"], "labelSelector app=web", str(names("app=web")))
    check(names("tier") == ["db", "web"], "labelSelector exists", str(names("tier")))
    check(names("!tier") == ["cache"], "labelSelector !key", str(names("!tier")))
    check(names("app in (web,cache),tier!=back") == ["cache", "web"], "labelSelector in and !=", str(names("app in (web,cache),tier!=back")))
    check(names("app notin (web)") == ["cache", "db"], "labelSelector notin", str(names("app notin (web)")))
    lst = v1.list_namespaced_pod(ns)
    check(int(lst.metadata.resource_version) >= rv(p1), "a list's resourceVersion is at least its items'")
    all_pods = v1.list_pod_for_all_namespaces(field_selector=f"metadata.namespace={ns}")
    check(len(all_pods.items) == 3, "fieldSelector metadata.namespace across namespaces", str(len(all_pods.items)))
    expect_api_error(lambda: v1.list_namespaced_pod(ns, label_selector="app in web"), 400, "BadRequest", "a malformed label selector")

    # replace: fresh works, stale is a 409 Conflict
    fresh = v1.read_namespaced_pod("web", ns)
    fresh.metadata.labels["replaced"] = "1"
    r1 = v1.replace_namespaced_pod("web", ns, fresh)
    check(rv(r1) > rv(fresh), "replace takes a new resourceVersion")
    fresh.metadata.labels["again"] = "1"
    body = expect_api_error(lambda: v1.replace_namespaced_pod("web", ns, fresh), 409, "Conflict", "replace with a stale resourceVersion")
    check("the object has been modified" in body.get("message", ""), "the Conflict message is upstream's", body.get("message", ""))
    # strategic merge patch (the client's default for dict bodies) and JSON patch (list bodies)
    pp = v1.patch_namespaced_pod("web", ns, {"metadata": {"labels": {"patched": "yes"}}})
    check(pp.metadata.labels.get("patched") == "yes" and pp.metadata.labels.get("replaced") == "1", "strategic merge patch merges labels", str(pp.metadata.labels))
    jp = v1.patch_namespaced_pod("web", ns, [{"op": "replace", "path": "/metadata/labels/patched", "value": "json"}])
    check(jp.metadata.labels.get("patched") == "json", "JSON patch", str(jp.metadata.labels))
    st = v1.patch_namespaced_pod_status("web", ns, {"status": {"phase": "Running", "podIP": "10.9.8.7"}})
    check(st.status.pod_ip == "10.9.8.7" and st.metadata.generation == jp.metadata.generation, "status patch changes status only")

    # watch: replay from an rv shows the later changes in order
    start = rv(st)
    v1.patch_namespaced_pod("db", ns, {"metadata": {"labels": {"seen": "1"}}})
    v1.delete_namespaced_pod("cache", ns)
    events = []
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_pod, ns, resource_version=str(start), timeout_seconds=2):
        events.append((ev["type"], ev["object"].metadata.name, rv(ev["object"])))
        if len(events) == 2:
            w.stop()
    check([e[:2] for e in events] == [("MODIFIED", "db"), ("DELETED", "cache")], "watch from an rv replays later events", str(events))
    check(events[0][2] < events[1][2] and events[0][2] > start, "watch events come in resourceVersion order", str(events))

    # a live watch sees ADDED, with bookmarks when allowed
    types = []
    def live():
        wl = watch.Watch()
        for ev in wl.stream(v1.list_namespaced_pod, ns, resource_version=str(events[-1][2]), allow_watch_bookmarks=True, timeout_seconds=4):
            types.append(ev["type"])
            if "ADDED" in types and "BOOKMARK" in types:
                wl.stop()
    t = threading.Thread(target=live)
    t.start()
    time.sleep(0.5)
    v1.create_namespaced_pod(ns, client.V1Pod(
        metadata=client.V1ObjectMeta(name="late"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")])))
    t.join(10)
    check("ADDED" in types, "a live watch sees a create", str(types))
    check("BOOKMARK" in types, "allow_watch_bookmarks=True brings BOOKMARK events", str(types))

    # after /_test/compact a watch from an old rv ends in 410 Expired
    control(url, "compact")
    try:
        for ev in watch.Watch().stream(v1.list_namespaced_pod, ns, resource_version=str(start), timeout_seconds=3):
            check(False, "a watch from a compacted rv sends no objects", str(ev["type"]))
        check(False, "a watch from a compacted rv must raise ApiException 410")
    except ApiException as e:
        check(e.status == 410, "a watch from a compacted rv is a 410", f"{e.status} {e.reason}")
        check("Expired" in str(e.reason) and "too old resource version" in str(e.reason), "410 reason Expired: too old resource version", str(e.reason))

    # pagination with limit / _continue, consistent across pages
    for i in range(7):
        v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"cm-{i}")))
    page = v1.list_namespaced_config_map(ns, limit=3)
    check(len(page.items) == 3 and page.metadata._continue, "limit=3 gives 3 items and a continue token", str(page.metadata))
    check(page.metadata.remaining_item_count == 4, "remainingItemCount counts the rest", str(page.metadata.remaining_item_count))
    first_rv = page.metadata.resource_version
    v1.delete_namespaced_config_map("cm-6", ns)
    seen = [c.metadata.name for c in page.items]
    while page.metadata._continue:
        page = v1.list_namespaced_config_map(ns, limit=3, _continue=page.metadata._continue)
        check(page.metadata.resource_version == first_rv, "later pages are at the first page's resourceVersion", f"{page.metadata.resource_version} != {first_rv}")
        seen += [c.metadata.name for c in page.items]
    check(seen == [f"cm-{i}" for i in range(7)], "pages cover the list as of the first page, once each", str(seen))
    token = v1.list_namespaced_config_map(ns, limit=2).metadata._continue
    v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="after")))
    control(url, "compact")
    expect_api_error(lambda: v1.list_namespaced_config_map(ns, limit=2, _continue=token), 410, "Expired", "a continue token from before a compaction")

    # delete
    d = v1.delete_namespaced_pod("web", ns)
    check(d.metadata.name == "web", "delete returns the deleted object", str(d)[:200])
    expect_api_error(lambda: v1.read_namespaced_pod("web", ns), 404, "NotFound", "get after delete")
    expect_api_error(lambda: v1.delete_namespaced_pod("web", ns), 404, "NotFound", "delete of a missing pod")
    db = v1.read_namespaced_pod("db", ns)
    stale = client.V1DeleteOptions(preconditions=client.V1Preconditions(resource_version=str(rv(db) - 1)))
    expect_api_error(lambda: v1.delete_namespaced_pod("db", ns, body=stale), 409, "Conflict", "delete with a stale precondition")
    v1.delete_namespace(ns)
    expect_api_error(lambda: v1.read_namespaced_pod("db", ns), 404, "NotFound", "deleting a namespace deletes its pods")

    print(f"python client: all {CHECKS} checks ok")


if __name__ == "__main__":
    main()
