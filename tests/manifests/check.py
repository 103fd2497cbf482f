#!/usr/bin/env python3
"""Checks manifests/ (what a user applies to install calico-rs) against Kubernetes, Calico and
the daemon itself. Run with the project's venv (scripts/deps.sh, calico_rs_pyenv):

    $CALICO_RS_VENV/bin/python3 tests/manifests/check.py [--fixture-dir DIR ...]

The Rust test tests/tests/it/manifests.rs runs it, passing the lab's rendered YAML as a fixture
dir. What it checks, each printed as it goes:

1. kubernetes-validate --strict on every manifest and sample file: every document must pass;
   custom resources, which it only warns about, must be of a kind whose CRD is checked here.
2. The CRDs: Calico's group, names (kind, plural, singular, listKind), cluster scope, one served
   and stored version v1, and a structural schema (every node typed, no properties beside
   additionalProperties, no unknown keywords, no object that would prune everything).
3. The CRDs against the decoder: the spec fields of each kind node/src/datastore/schema.rs
   decodes must be exactly the CRD's (a field the CRD lacks is pruned by the API server; a CRD
   field the decoder lacks is ignored silently on the Kubernetes datastore).
4. Every Calico resource sample: manifests/samples/, YAML blocks in the repo's Markdown, string
   fixtures in tests/ and lab/ sources, and --fixture-dir files; projectcalico.org/v3 is mapped
   to crd.projectcalico.org/v1 (same spec) and validated with jsonschema against the CRD's
   openAPIV3Schema, unknown fields rejected as the API server's strict field validation does.
5. The DaemonSet and ConfigMap against the daemon: every env name is one node/src reads (or a
   listed pending one), every ConfigMap key is used and every required key exists, probes hit
   the daemon's health address and paths, the socket mount is the daemon's socket directory.
6. The RBAC rules are exactly the documented set (a later test compares them with the requests
   the daemon makes).
7. Self-check: deliberately broken copies (unknown field, wrong type, untyped schema node, bad
   manifest, unread env name) must be rejected, so that this checker can fail.

Exit status 0 only if everything passed.
"""

import argparse
import copy
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
SAMPLES = MANIFESTS / "samples"

CRD_GROUP = "crd.projectcalico.org"
CRD_VERSION = "v1"
V3 = "projectcalico.org/v3"
V1 = f"{CRD_GROUP}/{CRD_VERSION}"

# Calico's names for the kinds calico-rs reads or writes (kind: plural, singular, listKind).
CALICO_NAMES = {
    "BGPConfiguration": ("bgpconfigurations", "bgpconfiguration", "BGPConfigurationList"),
    "BGPPeer": ("bgppeers", "bgppeer", "BGPPeerList"),
    "IPPool": ("ippools", "ippool", "IPPoolList"),
    "BlockAffinity": ("blockaffinities", "blockaffinity", "BlockAffinityList"),
    "IPAMBlock": ("ipamblocks", "ipamblock", "IPAMBlockList"),
    "IPAMHandle": ("ipamhandles", "ipamhandle", "IPAMHandleList"),
}

# Kinds with a decoder in node/src/datastore/schema.rs (the static that lists their fields).
DECODED = {"BGPConfiguration": "BGP_CONFIGURATION", "BGPPeer": "BGP_PEER", "IPPool": "IP_POOL"}

# Disagreements between the CRDs (Calico's fields) and the decoder that are known and reported
# (see manifests/README.md). They are printed, not failed; one that no longer holds fails, so
# this list stays true.
KNOWN_DECODER_GAPS: set = set()

# The daemon's own file-datastore extensions that Calico's API does not have: fixtures using
# them are reported as file-datastore only, not failed (samples in manifests/ may not use them).
FILE_ONLY = {
    # BGPPeer password as a plain string; on Kubernetes it must be a secretKeyRef.
    ("BGPPeer", "spec.password", str),
}

# Environment variables the DaemonSet sets that the daemon does not read yet. They are the
# calico-node settings of the design's contract (DESIGN.md); each is printed as pending.
PENDING_ENV: set = set()

# The RBAC the daemon may have: (namespace or None, apiGroup, resource) -> verbs.
EXPECTED_RBAC = {
    (None, "", "nodes"): {"get", "list", "watch", "patch"},
    (None, "", "pods"): {"list", "watch", "get"},
    (None, "", "pods/status"): {"patch"},
    (None, "", "namespaces"): {"list", "watch"},
    (None, "networking.k8s.io", "networkpolicies"): {"list", "watch"},
    (None, CRD_GROUP, "bgpconfigurations"): {"list", "watch"},
    (None, CRD_GROUP, "bgppeers"): {"list", "watch"},
    (None, CRD_GROUP, "ippools"): {"list", "watch", "create"},
    (None, CRD_GROUP, "blockaffinities"): {"create", "update", "delete"},
    (None, CRD_GROUP, "ipamblocks"): {"list", "watch", "create", "update", "delete"},
    (None, CRD_GROUP, "ipamhandles"): {"create", "get", "update", "delete"},
    ("kube-system", "", "secrets"): {"get"},
}

# JSONSchemaProps keywords a CRD schema may use (apiextensions.k8s.io/v1).
SCHEMA_KEYWORDS = {
    "description", "type", "format", "title", "default", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems",
    "uniqueItems", "multipleOf", "enum", "maxProperties", "minProperties", "required", "items",
    "allOf", "oneOf", "anyOf", "not", "properties", "additionalProperties", "nullable",
    "example", "externalDocs", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys", "x-kubernetes-list-type",
    "x-kubernetes-map-type", "x-kubernetes-validations",
}
# Allowed in JSON Schema but not in a structural schema.
NOT_STRUCTURAL = {"$ref", "definitions", "dependencies", "patternProperties", "additionalItems", "id", "$schema"}
TYPES = {"object", "array", "string", "integer", "number", "boolean"}

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Report:
    """Collects results; every check prints one line."""

    def __init__(self, quiet=False):
        self.passed = 0
        self.failed = []
        self.quiet = quiet

    def ok(self, what):
        self.passed += 1
        if not self.quiet:
            print(f"ok    {what}")

    def fail(self, what):
        self.failed.append(what)
        if not self.quiet:
            print(f"FAIL  {what}")

    def note(self, what):
        if not self.quiet:
            print(f"note  {what}")

    def check(self, cond, what, why=""):
        if cond:
            self.ok(what)
        else:
            self.fail(f"{what}: {why}" if why else what)
        return cond


def rel(p):
    try:
        return str(pathlib.Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def load_docs(path):
    """The non-empty YAML documents of a file (a parse error raises)."""
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifest_files():
    return sorted(MANIFESTS.glob("*.yaml")) + sorted(MANIFESTS.glob("*.yml"))


def sample_files():
    return sorted(SAMPLES.glob("*.yaml")) + sorted(SAMPLES.glob("*.yml"))


# ---------------------------------------------------------------------------------------------
# 1. kubernetes-validate


def kubernetes_validate(r, path, docs, crd_kinds, tool):
    """Runs kubernetes-validate --strict on one file; every document must be accounted for."""
    p = subprocess.run([tool, "--strict", str(path)], capture_output=True, text=True)
    lines = [l for l in (p.stdout + p.stderr).splitlines() if l.strip()]
    passed, custom, problems = 0, 0, []
    for l in lines:
        if l.startswith("INFO ") and " passed for resource " in l:
            passed += 1
            continue
        m = re.match(r"WARN .* Couldn't find schema for kind (\S+) with api version (\S+) ", l)
        if m and m.group(2) == V1 and m.group(1) in crd_kinds:
            custom += 1  # checked against its CRD in step 4
            continue
        problems.append(l)
    name = f"kubernetes-validate --strict {rel(path)}"
    if p.returncode != 0 or problems:
        r.fail(f"{name}: exit {p.returncode}: " + " | ".join(problems or lines))
    elif passed + custom != len(docs):
        r.fail(f"{name}: {len(docs)} documents but {passed} passed and {custom} custom: {lines}")
    else:
        r.ok(f"{name}: {passed} passed" + (f", {custom} custom resources (checked against their CRD below)" if custom else ""))


# ---------------------------------------------------------------------------------------------
# 2. CRDs


def structural_errors(s, path="openAPIV3Schema", root=True):
    """Why `s` is not a structural schema (empty when it is)."""
    errs = []
    if not isinstance(s, dict):
        return [f"{path}: not a schema object"]
    for k in s:
        if k in NOT_STRUCTURAL:
            errs.append(f"{path}: {k} is not allowed in a structural schema")
        elif k not in SCHEMA_KEYWORDS:
            errs.append(f"{path}: unknown keyword {k!r}")
    t = s.get("type")
    int_or_string = s.get("x-kubernetes-int-or-string") is True
    preserve = s.get("x-kubernetes-preserve-unknown-fields") is True
    if t is None and not int_or_string and not preserve:
        errs.append(f"{path}: no type")
    elif t is not None and t not in TYPES:
        errs.append(f"{path}: type {t!r} is not one of {sorted(TYPES)}")
    if int_or_string and t is not None:
        errs.append(f"{path}: x-kubernetes-int-or-string with a type")
    if root and t != "object":
        errs.append(f"{path}: the root must be type object")
    if "properties" in s and "additionalProperties" in s:
        errs.append(f"{path}: properties and additionalProperties together")
    if s.get("additionalProperties") is False:
        errs.append(f"{path}: additionalProperties: false is not allowed (unknown fields are pruned)")
    if t == "array":
        if "items" not in s:
            errs.append(f"{path}: array without items")
        elif not isinstance(s["items"], dict):
            errs.append(f"{path}: items must be one schema")
    elif "items" in s:
        errs.append(f"{path}: items on a {t}")
    if t != "object" and ("properties" in s or "additionalProperties" in s):
        errs.append(f"{path}: properties on a {t}")
    if t == "object" and not root and not preserve and path != "openAPIV3Schema.properties.metadata":
        if "properties" not in s and "additionalProperties" not in s:
            errs.append(f"{path}: object with neither properties nor additionalProperties (everything would be pruned)")
    for req in s.get("required", []):
        if req not in s.get("properties", {}):
            errs.append(f"{path}: required {req!r} is not a property")
    for v in s.get("enum", []):
        pytype = {"string": str, "integer": int, "boolean": bool, "number": (int, float)}.get(t)
        if pytype and (not isinstance(v, pytype) or (t == "integer" and isinstance(v, bool))):
            errs.append(f"{path}: enum value {v!r} is not a {t}")
    if "description" in s and not isinstance(s["description"], str):
        errs.append(f"{path}: description is not a string")
    for k, sub in s.get("properties", {}).items():
        errs += structural_errors(sub, f"{path}.properties.{k}", root=False)
    if isinstance(s.get("additionalProperties"), dict):
        errs += structural_errors(s["additionalProperties"], f"{path}.additionalProperties", root=False)
    if isinstance(s.get("items"), dict):
        errs += structural_errors(s["items"], f"{path}.items", root=False)
    if root:
        meta = s.get("properties", {}).get("metadata", {})
        extra = set(meta.get("properties", {})) - {"name", "generateName"}
        if extra:
            errs.append(f"{path}.properties.metadata: may only restrict name and generateName, not {sorted(extra)}")
    return errs


def check_crd(r, path, crd):
    """Names, scope, versions and schema of one CRD; returns (kind, schema) or None."""
    where = rel(path)
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    kind = names.get("kind")
    if not r.check(kind in CALICO_NAMES, f"{where}: kind {kind} is one calico-rs reads or writes",
                   f"not in {sorted(CALICO_NAMES)}"):
        return None
    plural, singular, list_kind = CALICO_NAMES[kind]
    got = (names.get("plural"), names.get("singular"), names.get("listKind"))
    r.check(got == (plural, singular, list_kind),
            f"{where}: {kind} names are Calico's ({plural}, {singular}, {list_kind})", f"got {got}")
    r.check(spec.get("group") == CRD_GROUP and crd["metadata"]["name"] == f"{plural}.{CRD_GROUP}",
            f"{where}: group {CRD_GROUP}, name {plural}.{CRD_GROUP}",
            f"group {spec.get('group')}, name {crd['metadata']['name']}")
    r.check(spec.get("scope") == "Cluster", f"{where}: {kind} is cluster-scoped as in Calico",
            f"scope {spec.get('scope')}")
    r.check(spec.get("preserveUnknownFields") in (None, False),
            f"{where}: unknown fields are pruned (preserveUnknownFields false)")
    versions = spec.get("versions", [])
    if not r.check(len(versions) == 1 and versions[0].get("name") == CRD_VERSION
                   and versions[0].get("served") is True and versions[0].get("storage") is True,
                   f"{where}: one version {CRD_VERSION}, served and stored", f"{versions and [v.get('name') for v in versions]}"):
        return None
    schema = versions[0].get("schema", {}).get("openAPIV3Schema")
    errs = structural_errors(schema)
    r.check(not errs, f"{where}: openAPIV3Schema is structural", "; ".join(errs))
    return kind, schema


# ---------------------------------------------------------------------------------------------
# 3. CRDs against the decoder's field lists


def rust_map_keys(block):
    """Top-level keys of the inside of a `map![ ... ]` (nested maps skipped)."""
    keys, depth, i = [], 0, 0
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"\s*=>|[\[\]()]', block):
        tok = m.group(0)
        if tok in "[(":
            depth += 1
        elif tok in "])":
            depth -= 1
        elif depth == 0:
            keys.append(m.group(1))
    return keys


def bracket_block(text, start):
    """The text between the `[` at or after `start` and its matching `]`."""
    i = text.index("[", start)
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "[":
            depth += 1
        elif text[j] == "]":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    raise ValueError("unbalanced brackets")


def decoder_spec_fields(static_name, schema_rs):
    m = re.search(rf"pub static {static_name}: S = map!\[", schema_rs)
    if not m:
        raise ValueError(f"pub static {static_name} not found in node/src/datastore/schema.rs")
    body = bracket_block(schema_rs, m.start() + len(m.group(0)) - 1)
    sm = re.search(r'"spec"\s*=>\s*map!\[', body)
    if not sm:
        raise ValueError(f"{static_name} has no spec map")
    return set(rust_map_keys(bracket_block(body, sm.end() - 1)))


def check_decoder_agreement(r, crds, schema_rs, known=KNOWN_DECODER_GAPS):
    found = set()
    for kind, static in DECODED.items():
        if kind not in crds:
            r.fail(f"{kind}: no CRD in manifests/")
            continue
        crd_fields = set(crds[kind]["properties"]["spec"].get("properties", {}))
        try:
            dec = decoder_spec_fields(static, schema_rs)
        except ValueError as e:
            r.fail(f"{kind}: reading the decoder's fields: {e}")
            continue
        pruned = dec - crd_fields
        r.check(not pruned, f"{kind}: every spec field the decoder knows is in the CRD",
                f"the API server would drop {sorted(pruned)}")
        ignored = crd_fields - dec
        for f in sorted(ignored):
            found.add((kind, f))
        new = {f for f in ignored if (kind, f) not in known}
        r.check(not new, f"{kind}: every CRD spec field is known to the decoder (schema.rs {static})",
                f"{sorted(new)} would be ignored silently on the Kubernetes datastore")
        for f in sorted(ignored - new):
            r.note(f"{kind}: known gap: spec.{f} is a Calico field the decoder does not list "
                   f"(ignored when served by Kubernetes, 'unknown field' in files)")
    for k in sorted(known - found):
        r.fail(f"known gap {k} no longer holds: remove it from KNOWN_DECODER_GAPS")


# ---------------------------------------------------------------------------------------------
# 4. Calico resources against their CRD


def to_json_schema(s, root=True):
    """A structural schema as a JSON Schema (draft 4 style) that rejects unknown fields."""
    out = {}
    for k, v in s.items():
        if k in ("properties", "additionalProperties", "items", "nullable") or k.startswith("x-kubernetes-"):
            continue
        if k in ("default", "example", "externalDocs"):
            continue
        out[k] = copy.deepcopy(v)
    if s.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in s:
        out["properties"] = {k: to_json_schema(v, False) for k, v in s["properties"].items()}
        if not s.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(s["additionalProperties"], False)
    if "items" in s:
        out["items"] = to_json_schema(s["items"], False)
    if s.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
    if root:
        # metadata is ObjectMeta, which the API server checks itself; here just the name.
        out["properties"]["metadata"] = {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "maxLength": 253, "pattern": DNS_SUBDOMAIN.pattern}},
        }
        out["required"] = sorted(set(out.get("required", [])) | {"apiVersion", "kind", "metadata"})
    return out


def validation_errors(doc, kind, schema):
    """Messages for `doc` (a crd.projectcalico.org/v1 object) against its CRD schema."""
    js = to_json_schema(schema)
    js["properties"]["apiVersion"] = {"enum": [V1]}
    js["properties"]["kind"] = {"enum": [kind]}
    v = jsonschema.Draft7Validator(js)
    errs = []
    for e in sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in e.absolute_path) or "(root)"
        errs.append((where, e.message, e.instance))
    meta = doc.get("metadata") or {}
    if isinstance(meta, dict):
        extra = set(meta) - {"name", "labels", "annotations"}
        if extra:
            errs.append(("metadata", f"fields a user should not set on a cluster-scoped object: {sorted(extra)}", None))
    return errs


def file_only(kind, where, instance):
    return any(k == kind and where == w and isinstance(instance, t) for k, w, t in FILE_ONLY)


def check_resource(r, origin, doc, crds, strict):
    """One Calico resource; `strict` (manifests/samples) allows no file-datastore extension."""
    api, kind = doc.get("apiVersion"), doc.get("kind")
    name = (doc.get("metadata") or {}).get("name")
    label = f"{origin}: {kind} {name}"
    if kind not in crds:
        r.note(f"{label}: no CRD for this kind here (calico-rs does not implement it); not checked")
        return
    if api == V3:
        doc = dict(doc, apiVersion=V1)
    elif api != V1:
        r.fail(f"{label}: apiVersion {api!r} is neither {V3} nor {V1}")
        return
    errs = validation_errors(doc, kind, crds[kind])
    ext = [e for e in errs if file_only(kind, e[0], e[2])]
    hard = [e for e in errs if e not in ext] + (ext if strict else [])
    if hard:
        r.fail(f"{label}: rejected by the {kind} CRD: " + "; ".join(f"{w}: {m}" for w, m, _ in hard))
    elif ext:
        r.note(f"{label}: valid only in the file datastore ({'; '.join(w for w, _, _ in ext)} "
               f"uses a calico-rs extension); the rest matches the CRD")
        r.ok(f"{label}: matches the {kind} CRD apart from file-datastore extensions")
    else:
        r.ok(f"{label}: matches the {kind} CRD" + (f" (as {V1})" if api == V3 else ""))


RUST_LITERAL = re.compile(r'r(#*)"(.*?)"\1|"((?:[^"\\]|\\.)*)"', re.S)
FORMAT_CALL = re.compile(r"(format|write|writeln|print|println|eprintln|panic|format_args)!\s*\(\s*(\w+\s*,\s*)?$")


def rust_unescape(s):
    s = re.sub(r"\\\n\s*", "", s)
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r", "0": "\0", "'": "'"}
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            if n in simple:
                out.append(simple[n])
                i += 2
                continue
            if n == "x":
                out.append(chr(int(s[i + 2:i + 4], 16)))
                i += 4
                continue
            if n == "u":
                j = s.index("}", i)
                out.append(chr(int(s[i + 3:j], 16)))
                i = j + 1
                continue
        out.append(c)
        i += 1
    return "".join(out)


def rust_fixtures(r):
    """(origin, text) of every Calico YAML string literal in tests/ and lab/ sources. Format
    strings (their placeholders are filled at run time) are left to the Rust test, which passes
    the rendered lab YAML with --fixture-dir. node/src is skipped: its unit tests feed the decoder
    invalid documents on purpose."""
    out, formats = [], []
    files = sorted(ROOT.glob("tests/**/*.rs")) + sorted(ROOT.glob("lab/src/**/*.rs"))
    for p in files:
        src = p.read_text()
        for m in RUST_LITERAL.finditer(src):
            raw = m.group(2) if m.group(2) is not None else m.group(3)
            if raw is None or V3 not in raw:
                continue
            text = raw if m.group(2) is not None else rust_unescape(raw)
            line = src.count("\n", 0, m.start()) + 1
            origin = f"{rel(p)}:{line}"
            if FORMAT_CALL.search(src[max(0, m.start() - 80):m.start()]):
                formats.append(origin)
                continue
            out.append((origin, text))
    return out, formats


def markdown_fixtures():
    out, paths = [], []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in ("target", ".git", "node_modules")]
        paths += [pathlib.Path(top, f) for f in files if f.endswith(".md")]
    for p in sorted(paths):
        text = p.read_text()
        for m in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.S | re.M):
            if "apiVersion:" in m.group(1) and "projectcalico.org" in m.group(1):
                out.append((f"{rel(p)}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1)))
    return out


def check_text_fixture(r, origin, text, crds):
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        r.fail(f"{origin}: not YAML: {e}")
        return
    for i, d in enumerate(docs, 1):
        if isinstance(d, dict) and str(d.get("apiVersion", "")).startswith(("projectcalico.org/", f"{CRD_GROUP}/")):
            check_resource(r, f"{origin} doc {i}", d, crds, strict=False)


# ---------------------------------------------------------------------------------------------
# 5. DaemonSet and ConfigMap against the daemon


def daemon_env_names():
    """Environment variable names the code under node/src reads."""
    names = set()
    for p in ROOT.glob("node/src/**/*.rs"):
        src = p.read_text()
        names |= set(re.findall(r'\benv\s*=\s*"([A-Z][A-Z0-9_]*)"', src))
        names |= set(re.findall(r'\bvar(?:_os)?\(\s*"([A-Z][A-Z0-9_]*)"\s*\)', src))
        for block in re.finditer(r"\bmod env\s*\{(.*?)\n\}", src, re.S):
            names |= set(re.findall(r'const \w+: &str = "([A-Z][A-Z0-9_]*)";', block.group(1)))
    return names


def find(docs, kind, name=None):
    for d in docs:
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name):
            return d
    return None


def check_daemonset(r, docs, read, pending=PENDING_ENV):
    ds = find(docs, "DaemonSet", "calico-node-rs")
    cm = find(docs, "ConfigMap", "calico-rs-config")
    if not r.check(ds is not None and cm is not None, "DaemonSet calico-node-rs and ConfigMap calico-rs-config exist"):
        return
    pod = ds["spec"]["template"]["spec"]
    data = cm.get("data", {})
    used_keys = set()
    main = next((c for c in pod["containers"] if c["name"] == "calico-node-rs"), None)
    if not r.check(main is not None, "DaemonSet: container calico-node-rs"):
        return
    env = {e["name"]: e for e in main.get("env", [])}
    unknown = sorted(n for n in env if n not in read and n not in pending)
    r.check(not unknown, f"DaemonSet: the {len(env)} env names of calico-node-rs are read by node/src "
            f"or pending", f"node/src reads none of {unknown}")
    waiting = sorted(n for n in env if n in pending and n not in read)
    if waiting:
        r.note(f"pending: the daemon does not read these yet: {', '.join(waiting)}")
    for n in sorted(pending & read):
        r.note(f"{n} is read by node/src now: remove it from PENDING_ENV")
    for c in pod.get("initContainers", []) + pod["containers"]:
        for e in c.get("env", []) + [{"name": None, "valueFrom": {"configMapKeyRef": f.get("configMapRef")}} for f in c.get("envFrom", [])]:
            ref = (e.get("valueFrom") or {}).get("configMapKeyRef")
            if ref and ref.get("key"):
                used_keys.add(ref["key"])
                if not ref.get("optional"):
                    r.check(ref["key"] in data, f"{c['name']}: env {e['name']} <- ConfigMap key {ref['key']}",
                            "the key is missing (the container would not start)")
                r.check(ref.get("name") == "calico-rs-config", f"{c['name']}: env {e['name']} names ConfigMap calico-rs-config")
        if c is not main:
            script = " ".join(c.get("command", []) + c.get("args", []))
            for e in c.get("env", []):
                # A shell's $NAME / ${NAME}, or Kubernetes' own $(NAME) expansion in command/args.
                r.check(any(f in script for f in ("${" + e["name"] + "}", "$" + e["name"], "$(" + e["name"] + ")")),
                        f"{c['name']}: env {e['name']} is used by its command")
    for v in pod.get("volumes", []):
        for item in (v.get("configMap") or {}).get("items", []):
            used_keys.add(item["key"])
    unused = sorted(set(data) - used_keys)
    r.check(not unused, f"ConfigMap: all {len(data)} keys are used by the DaemonSet", f"unused: {unused}")
    try:
        conf = json.loads(data.get("cni_network_config", ""))
        r.check(conf.get("plugins", [{}])[0].get("type") == "calico-cni-rs"
                and "__KUBERNETES_NODE_NAME__" in data["cni_network_config"],
                "ConfigMap: cni_network_config is a conflist for calico-cni-rs with the node-name placeholder")
    except ValueError as e:
        r.fail(f"ConfigMap: cni_network_config is not JSON: {e}")

    health = (ROOT / "node/src/daemon/health.rs").read_text()
    bin_src = (ROOT / "node/src/bin/calico-node-rs.rs").read_text()
    host = env.get("FELIX_HEALTHHOST", {}).get("value")
    default_host = re.search(r'env = "FELIX_HEALTHHOST", default_value = "([^"]+)"', bin_src)
    port = env.get("FELIX_HEALTHPORT", {}).get("value")
    default_port = re.search(r'env = "FELIX_HEALTHPORT", default_value_t = (\d+)', bin_src)
    host = host or (default_host and default_host.group(1))
    port = port or (default_port and default_port.group(1))
    for probe, want in (("startupProbe", "/liveness"), ("livenessProbe", "/liveness"), ("readinessProbe", "/readiness")):
        g = (main.get(probe) or {}).get("httpGet")
        if not r.check(g is not None, f"DaemonSet: {probe} is an httpGet probe"):
            continue
        r.check(g.get("path") == want and f'"{want}"' in health,
                f"DaemonSet: {probe} path {want} is served by node/src/daemon/health.rs", f"path {g.get('path')}")
        r.check(str(g.get("port")) == str(port), f"DaemonSet: {probe} port is the health port {port}", f"port {g.get('port')}")
        # Under hostNetwork the default probe host is the node IP; the daemon must listen there,
        # or the probe must name the loopback address the daemon listens on.
        r.check(g.get("host") == host or (host in ("0.0.0.0", "::") and not g.get("host")),
                f"DaemonSet: {probe} reaches the health listener ({host})", f"probe host {g.get('host')!r}")
    r.check(pod.get("hostNetwork") is True, "DaemonSet: hostNetwork (the daemon acts on the node's namespace)")
    sock = re.search(r'DEFAULT_SOCKET: &str = "([^"]+)"', (ROOT / "node/src/grpc/mod.rs").read_text())
    sock_dir = os.path.dirname(sock.group(1)) if sock else None
    mounts = {m["mountPath"]: m["name"] for m in main.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    r.check(sock_dir in mounts and (vols[mounts[sock_dir]].get("hostPath") or {}).get("path") == sock_dir,
            f"DaemonSet: the status socket directory {sock_dir} is a hostPath mount", f"mounts {sorted(mounts)}")
    sc = main.get("securityContext", {})
    caps = set((sc.get("capabilities") or {}).get("add", []))
    # privileged for a writable /proc/sys (see the manifest's opening comment); the capability
    # list still states what the daemon uses, and nothing else is asked for.
    r.check(sc.get("privileged") is True and "allowPrivilegeEscalation" not in sc
            and caps == {"NET_ADMIN", "NET_BIND_SERVICE"}
            and (sc.get("capabilities") or {}).get("drop") == ["ALL"],
            "DaemonSet: privileged (writable /proc/sys), capabilities NET_ADMIN and NET_BIND_SERVICE",
            f"{sc}")
    tol = pod.get("tolerations", [])
    r.check({"effect": "NoSchedule", "operator": "Exists"} in tol and {"effect": "NoExecute", "operator": "Exists"} in tol
            and {"key": "CriticalAddonsOnly", "operator": "Exists"} in tol,
            "DaemonSet: tolerates every NoSchedule and NoExecute taint and CriticalAddonsOnly")
    r.check(pod.get("priorityClassName") == "system-node-critical", "DaemonSet: priorityClassName system-node-critical")
    r.check(pod.get("serviceAccountName") == "calico-node-rs", "DaemonSet: runs as ServiceAccount calico-node-rs")


# ---------------------------------------------------------------------------------------------
# 6. RBAC


def rbac_rules(docs):
    got = {}
    for d in docs:
        if d.get("kind") not in ("ClusterRole", "Role"):
            continue
        ns = d["metadata"].get("namespace") if d["kind"] == "Role" else None
        for rule in d.get("rules", []):
            for g in rule.get("apiGroups", []):
                for res in rule.get("resources", []):
                    got.setdefault((ns, g, res), set()).update(rule.get("verbs", []))
    return got


def check_rbac(r, docs):
    got = rbac_rules(docs)
    for key in sorted(set(got) | set(EXPECTED_RBAC), key=str):
        ns, g, res = key
        where = f"{'Role ' + ns if ns else 'ClusterRole'}: {g or 'core'}/{res}"
        r.check(got.get(key) == EXPECTED_RBAC.get(key), f"{where} verbs {sorted(EXPECTED_RBAC.get(key, []))}",
                f"has {sorted(got.get(key, []))}")
    for d in docs:
        for rule in d.get("rules", []) if d.get("kind") in ("ClusterRole", "Role") else []:
            r.check("*" not in rule.get("verbs", []) + rule.get("resources", []) + rule.get("apiGroups", []),
                    f"{d['kind']} {d['metadata']['name']}: no wildcard in {rule.get('resources')}")
    sa = find(docs, "ServiceAccount", "calico-node-rs")
    r.check(sa is not None and sa["metadata"].get("namespace") == "kube-system", "ServiceAccount kube-system/calico-node-rs")
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        b = find(docs, kind, "calico-node-rs")
        r.check(b is not None and b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": "calico-node-rs"}
                and b["subjects"] == [{"kind": "ServiceAccount", "name": "calico-node-rs", "namespace": "kube-system"}],
                f"{kind} calico-node-rs binds {role_kind} calico-node-rs to the ServiceAccount")


# ---------------------------------------------------------------------------------------------
# 7. The checker can fail


def self_check(r, crds, crd_docs, docs, tool, schema_rs, read):
    """Broken copies that must each be rejected."""

    def rejected(fn, why):
        """True when `fn` fails, and for the expected reason (`why` in a failure message)."""
        q = Report(quiet=True)
        fn(q)
        return any(why in f for f in q.failed)

    def accepted(fn):
        q = Report(quiet=True)
        fn(q)
        return not q.failed, q.failed

    pool = {"apiVersion": V1, "kind": "IPPool", "metadata": {"name": "p"}, "spec": {"cidr": "10.9.0.0/16", "blockSize": 26}}
    peer = {"apiVersion": V3, "kind": "BGPPeer", "metadata": {"name": "x"}, "spec": {"peerIP": "10.0.0.1", "asNumber": 65001}}
    cases = []
    # Calico-shaped objects as IPAM writes them: these must pass.
    block = {"apiVersion": V1, "kind": "IPAMBlock", "metadata": {"name": "10-244-0-64-26"},
             "spec": {"cidr": "10.244.0.64/26", "affinity": "host:node1", "allocations": [0, None, 1] + [None] * 61,
                      "unallocated": list(range(3, 64)) + [1], "strictAffinity": False, "deleted": False,
                      "attributes": [{"handle_id": "k8s-pod-network.abc", "secondary": {"namespace": "default", "pod": "web-0", "node": "node1"}},
                                     {"handle_id": "k8s-pod-network.def", "secondary": {}}],
                      "sequenceNumber": 4, "sequenceNumberForAllocation": {"0": 1, "2": 3}}}
    affinity = {"apiVersion": V1, "kind": "BlockAffinity", "metadata": {"name": "node1-10-244-0-64-26"},
                "spec": {"cidr": "10.244.0.64/26", "node": "node1", "state": "confirmed", "deleted": "false", "type": "host"}}
    handle = {"apiVersion": V1, "kind": "IPAMHandle", "metadata": {"name": "k8s-pod-network.abc"},
              "spec": {"handleID": "k8s-pod-network.abc", "block": {"10.244.0.64/26": 1}, "deleted": False}}
    for obj in (pool, peer, block, affinity, handle):
        ok, why = accepted(lambda q: check_resource(q, "self-check", obj, crds, True))
        r.check(ok, f"self-check: a well-formed {obj['kind']} passes", "; ".join(why))
    bad = copy.deepcopy(pool)
    bad["spec"]["cidrr"] = "10.0.0.0/8"
    cases.append(("an IPPool with the unknown field spec.cidrr", "cidrr", lambda q: check_resource(q, "self-check", bad, crds, True)))
    bad2 = copy.deepcopy(pool)
    bad2["spec"]["blockSize"] = "26"
    cases.append(("an IPPool with blockSize a string", "spec.blockSize", lambda q: check_resource(q, "self-check", bad2, crds, True)))
    bad3 = copy.deepcopy(peer)
    bad3["spec"]["sourceAddress"] = "NodeIP"
    cases.append(("a BGPPeer with sourceAddress outside its enum", "spec.sourceAddress", lambda q: check_resource(q, "self-check", bad3, crds, True)))
    bad4 = copy.deepcopy(peer)
    bad4["spec"]["password"] = "s3cret"
    cases.append(("a sample BGPPeer with a plain-string password", "spec.password", lambda q: check_resource(q, "self-check", bad4, crds, True)))
    bad5 = copy.deepcopy(peer)
    bad5["metadata"]["name"] = "Not_A_Name"
    cases.append(("a BGPPeer with an invalid name", "metadata.name", lambda q: check_resource(q, "self-check", bad5, crds, True)))
    crd = copy.deepcopy(crd_docs["IPAMBlock"])
    props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    del props["allocations"]["items"]["type"]
    cases.append(("a CRD whose allocations items have no type", "allocations.items: no type", lambda q: check_crd(q, "self-check", crd)))
    crd2 = copy.deepcopy(crd_docs["BGPPeer"])
    crd2["spec"]["names"]["plural"] = "bgppeer"
    cases.append(("a CRD with a wrong plural", "names are Calico's", lambda q: check_crd(q, "self-check", crd2)))
    crd3 = copy.deepcopy(crds)
    del crd3["BGPPeer"]["properties"]["spec"]["properties"]["ttlSecurity"]
    cases.append(("a BGPPeer CRD without a field the decoder reads", "ttlSecurity", lambda q: check_decoder_agreement(q, crd3, schema_rs)))
    crd4 = copy.deepcopy(crds)
    crd4["IPPool"]["properties"]["spec"]["properties"]["madeUp"] = {"type": "string"}
    cases.append(("an IPPool CRD with a field the decoder does not know", "madeUp", lambda q: check_decoder_agreement(q, crd4, schema_rs)))
    ds_docs = copy.deepcopy(docs)
    find(ds_docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "CALICO_NOT_A_SETTING", "value": "1"})
    cases.append(("a DaemonSet env name the daemon does not read", "CALICO_NOT_A_SETTING", lambda q: check_daemonset(q, ds_docs, read)))
    rb_docs = copy.deepcopy(docs)
    find(rb_docs, "ClusterRole")["rules"][0]["verbs"].append("update")
    cases.append(("a ClusterRole with an extra verb", "core/nodes", lambda q: check_rbac(q, rb_docs)))
    with tempfile.TemporaryDirectory() as tmp:
        ds = copy.deepcopy(find(docs, "DaemonSet"))
        ds["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
        p1 = pathlib.Path(tmp, "ds.yaml")
        p1.write_text(yaml.safe_dump(ds))
        cases.append(("a DaemonSet with the unknown field imagePullPolcy (kubernetes-validate)", "imagePullPolcy",
                      lambda q: kubernetes_validate(q, p1, [ds], set(crds), tool)))
        cm = copy.deepcopy(find(docs, "ConfigMap"))
        cm["data"]["CALICO_IPV4POOL_BLOCK_SIZE"] = 26
        p2 = pathlib.Path(tmp, "cm.yaml")
        p2.write_text(yaml.safe_dump(cm))
        cases.append(("a ConfigMap with a number as a value (kubernetes-validate)", "CALICO_IPV4POOL_BLOCK_SIZE",
                      lambda q: kubernetes_validate(q, p2, [cm], set(crds), tool)))
        p3 = pathlib.Path(tmp, "unknown-cr.yaml")
        other = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
        p3.write_text(yaml.safe_dump(other))
        cases.append(("a custom resource of a kind without a CRD here (kubernetes-validate)", "Widget",
                      lambda q: kubernetes_validate(q, p3, [other], set(crds), tool)))
        for what, why, fn in cases:
            r.check(rejected(fn, why), f"self-check: {what} is rejected (naming {why!r})",
                    "the checker accepted it, or rejected it for another reason")


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixture-dir", action="append", default=[],
                    help="a directory of rendered Calico YAML fixtures to validate too (repeatable)")
    args = ap.parse_args()
    r = Report()
    tool = pathlib.Path(sys.executable).parent / "kubernetes-validate"
    if not tool.exists():
        print(f"FAIL  {tool} not found: create the venv with scripts/deps.sh (calico_rs_pyenv)")
        return 1

    docs, sample_docs = [], []
    for path in manifest_files() + sample_files():
        try:
            d = load_docs(path)
        except yaml.YAMLError as e:
            r.fail(f"{rel(path)}: not YAML: {e}")
            continue
        r.check(d and all(isinstance(x, dict) and x.get("apiVersion") and x.get("kind") for x in d),
                f"{rel(path)}: {len(d)} Kubernetes object(s)")
        (sample_docs if path.parent == SAMPLES else docs).extend((path, x) for x in d)

    print("== CRDs")
    crds, crd_docs = {}, {}
    for path, d in docs:
        if d.get("kind") == "CustomResourceDefinition":
            got = check_crd(r, path, d)
            if got:
                crds[got[0]] = got[1]
                crd_docs[got[0]] = d
    missing = sorted(set(CALICO_NAMES) - set(crds))
    r.check(not missing, f"a CRD for each of {', '.join(CALICO_NAMES)}", f"missing {missing}")

    print("== kubernetes-validate --strict")
    for path in manifest_files() + sample_files():
        file_docs = [x for p, x in docs + sample_docs if p == path]
        kubernetes_validate(r, path, file_docs, set(crds), str(tool))

    print("== CRDs against the decoder (node/src/datastore/schema.rs)")
    schema_rs = (ROOT / "node/src/datastore/schema.rs").read_text()
    check_decoder_agreement(r, crds, schema_rs)

    print("== Calico resources against their CRD")
    samples = [(p, x) for p, x in sample_docs if str(x.get("apiVersion", "")).startswith((f"{CRD_GROUP}/", "projectcalico.org/"))]
    r.check(len(samples) >= 4, f"manifests/samples/ has Calico resources ({len(samples)})")
    for path, d in samples:
        check_resource(r, rel(path), d, crds, strict=True)
    for origin, text in markdown_fixtures():
        check_text_fixture(r, origin, text, crds)
    lits, formats = rust_fixtures(r)
    for origin, text in lits:
        check_text_fixture(r, origin, text, crds)
    for d in args.fixture_dir:
        files = sorted(pathlib.Path(d).glob("*.yaml"))
        r.check(files, f"--fixture-dir {d} has YAML files")
        for p in files:
            check_text_fixture(r, f"{p.name} (rendered)", p.read_text(), crds)
    if formats:
        how = "the rendered copies above are what is checked" if args.fixture_dir else \
              "not checked here: run through tests/tests/it/manifests.rs, which renders them"
        r.note(f"format-string fixtures ({', '.join(formats)}): {how}")

    print("== DaemonSet and ConfigMap against the daemon")
    all_docs = [x for _, x in docs]
    read = daemon_env_names()
    check_daemonset(r, all_docs, read)

    print("== RBAC")
    check_rbac(r, all_docs)

    print("== self-check")
    self_check(r, crds, crd_docs, all_docs, str(tool), schema_rs, read)

    print(f"\nmanifest checks: {r.passed} passed, {len(r.failed)} failed")
    for f in r.failed:
        print(f"  FAIL {f}")
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
