//! kubectl against the server: apply (create, then PATCH on change, nothing when unchanged), label,
//! annotate, the three patch types, the status subresource, replace with a stale resourceVersion,
//! get with selectors, watch, delete, CRDs and their custom resources, and discovery's fallback from
//! aggregated to legacy discovery.
//!
//! kubectl 1.32 is run by its versioned path (`/usr/bin/kubectl` is a dispatcher that picks the
//! kubectl matching the server's version, 1.33 here), and the dispatcher is smoke-tested too.
//! client-go sends no credentials over plain http, so kubectl's requests are logged as `anonymous`.
//! `kubectl create namespace|configmap|secret` send protobuf, which the server decodes for those
//! kinds only (see the crate's `proto` module).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::support::*;

const KUBECTL: &str = "/usr/bin/kubectl";

/// kubectl 1.32 beside the dispatcher, as the brief's machines have it.
fn kubectl_132() -> PathBuf {
    let real = std::fs::canonicalize(KUBECTL)
        .unwrap_or_else(|e| panic!("{KUBECTL} is required for this test: {e}"));
    let v132 = real.with_file_name("kubectl.1.32");
    if v132.exists() {
        v132
    } else {
        real
    }
}

struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "kubectl printed no JSON ({e}): {}\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl Kubectl {
    fn new(bin: PathBuf, server: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {server}\nusers:\n- name: u\n  user:\n    token: kubectl-token\ncontexts:\n- name: t\n  context: {{cluster: t, user: u, namespace: demo}}\ncurrent-context: t\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), cfg).unwrap();
        Kubectl { bin, dir }
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.bin);
        c.args(args)
            .env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("HOME", self.dir.path())
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("cache").display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    async fn run_in(&self, args: &[&str], stdin: &str) -> Out {
        let mut child = self
            .command(args)
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.bin.display()));
        let mut si = child.stdin.take().unwrap();
        si.write_all(stdin.as_bytes()).await.unwrap();
        drop(si);
        let o = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finishes")
            .unwrap();
        Out {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_in(args, "").await
    }

    /// Runs and requires success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args).await;
        assert!(o.ok, "kubectl {args:?} failed:\n{}\n{}", o.stdout, o.stderr);
        o.stdout
    }
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  containers:\n  - name: web\n    image: nginx:1\n    ports: [{containerPort: 80}]\n";
const POD_DB: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: db\n  labels: {app: db, tier: back}\nspec:\n  containers: [{name: db, image: postgres}]\n";
const NETPOL: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n";
const CRD: &str = "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: ippools.crd.projectcalico.org}\nspec:\n  group: crd.projectcalico.org\n  scope: Cluster\n  names: {plural: ippools, singular: ippool, kind: IPPool, listKind: IPPoolList, shortNames: [ipp]}\n  versions:\n  - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n";
const POOL: &str = "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {name: pool1}\nspec: {cidr: 10.0.0.0/16, ipipMode: Never}\n";

fn requests(srv: &kube_test_server::ServerHandle) -> Vec<Value> {
    srv.requests()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn count(reqs: &[Value], verb: &str, resource: &str) -> usize {
    reqs.iter()
        .filter(|r| r["verb"] == verb && r["resource"] == resource)
        .count()
}

async fn get_json(k: &Kubectl, args: &[&str]) -> Value {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let o = k.run(&a).await;
    assert!(o.ok, "kubectl {a:?}: {}", o.stderr);
    o.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_132_drives_the_server() {
    let srv = start().await;
    let k = Kubectl::new(kubectl_132(), &srv.url());
    let ns = k.file(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n",
    );
    let pod = k.file("pod.yaml", POD);
    let db = k.file("db.yaml", POD_DB);
    let np = k.file("np.yaml", NETPOL);
    let crd = k.file("crd.yaml", CRD);
    let pool = k.file("pool.yaml", POOL);

    // Discovery: kubectl asks for aggregated discovery first and falls back on our legacy answer.
    let v = k.run(&["get", "ns", "-v=8"]).await;
    assert!(v.ok, "{}", v.stderr);
    assert!(
        v.stderr.contains("as=APIGroupDiscoveryList"),
        "kubectl asked for aggregated discovery"
    );
    assert!(v.stdout.contains("kube-system"), "{}", v.stdout);
    let reqs = requests(&srv);
    for path in [
        "/api",
        "/apis",
        "/api/v1",
        "/apis/apps/v1",
        "/apis/networking.k8s.io/v1",
    ] {
        assert!(
            reqs.iter().any(|r| r["path"] == path),
            "no fallback request to {path}"
        );
    }

    let out = k.ok(&["create", "--validate=false", "-f", &ns]).await;
    assert_eq!(out.trim(), "namespace/demo created");
    // The generators send protobuf for these kinds; a kind we cannot decode is refused, not mangled.
    assert_eq!(
        k.ok(&["create", "namespace", "gen"]).await.trim(),
        "namespace/gen created"
    );
    k.ok(&[
        "-n",
        "gen",
        "create",
        "configmap",
        "cm",
        "--from-literal=a=b",
        "--from-literal=c=d",
    ])
    .await;
    k.ok(&[
        "-n",
        "gen",
        "create",
        "secret",
        "generic",
        "pw",
        "--from-literal=password=s3cret",
    ])
    .await;
    assert_eq!(
        get_json(&k, &["-n", "gen", "configmap", "cm"]).await["data"],
        json!({"a": "b", "c": "d"})
    );
    let secret = get_json(&k, &["-n", "gen", "secret", "pw"]).await;
    assert_eq!(
        (secret["type"].as_str(), secret["data"]["password"].as_str()),
        (Some("Opaque"), Some("czNjcmV0"))
    );
    let dep = k
        .run(&["-n", "gen", "create", "deployment", "d", "--image=nginx"])
        .await;
    assert!(
        !dep.ok
            && dep
                .stderr
                .contains("protobuf bodies of apps/v1 Deployment are not supported"),
        "{}",
        dep.stderr
    );
    let out = k
        .ok(&[
            "apply",
            "--validate=false",
            "-f",
            &pod,
            "-f",
            &db,
            "-f",
            &np,
            "-f",
            &crd,
        ])
        .await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "pod/web created",
            "pod/db created",
            "networkpolicy.networking.k8s.io/deny created",
            "customresourcedefinition.apiextensions.k8s.io/ippools.crd.projectcalico.org created"
        ]
    );
    assert_eq!(
        k.ok(&["apply", "--validate=false", "-f", &pool])
            .await
            .trim(),
        "ippool.crd.projectcalico.org/pool1 created"
    );
    let web0 = get_json(&k, &["pod", "web"]).await;
    assert_eq!(web0["metadata"]["namespace"], "demo");
    assert_eq!(web0["metadata"]["generation"], 1);
    assert!(
        web0["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );

    // Apply again: unchanged sends no patch; a change is a PATCH that changes the object.
    let before = requests(&srv);
    assert_eq!(
        k.ok(&["apply", "--validate=false", "-f", &pod])
            .await
            .trim(),
        "pod/web unchanged"
    );
    assert_eq!(
        count(&requests(&srv), "patch", "pods"),
        count(&before, "patch", "pods")
    );
    k.file("pod.yaml", &POD.replace("nginx:1", "nginx:2"));
    k.file("pool.yaml", &POOL.replace("Never", "Always"));
    assert_eq!(
        k.ok(&["apply", "--validate=false", "-f", &pod])
            .await
            .trim(),
        "pod/web configured"
    );
    assert_eq!(
        k.ok(&["apply", "--validate=false", "-f", &pool])
            .await
            .trim(),
        "ippool.crd.projectcalico.org/pool1 configured"
    );
    let after = requests(&srv);
    assert_eq!(
        count(&after, "patch", "pods"),
        count(&before, "patch", "pods") + 1
    );
    assert_eq!(count(&after, "patch", "ippools"), 1);
    let web1 = get_json(&k, &["pod", "web"]).await;
    assert_eq!(web1["spec"]["containers"][0]["image"], "nginx:2");
    assert_eq!(
        web1["spec"]["containers"][0]["ports"],
        json!([{"containerPort": 80}])
    );
    assert_eq!(web1["metadata"]["generation"], 2);
    assert_eq!(web1["metadata"]["uid"], web0["metadata"]["uid"]);
    assert!(rv(&web1) > rv(&web0));
    assert_eq!(
        get_json(&k, &["ipp", "pool1"]).await["spec"]["ipipMode"],
        "Always"
    );

    // Selectors.
    let names = k
        .ok(&[
            "get",
            "pods",
            "-l",
            "app in (web,db),tier notin (back)",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(names.trim(), "pod/web");
    let names = k
        .ok(&["get", "pods", "-A", "-l", "tier", "-o", "name"])
        .await;
    assert_eq!(names.trim(), "pod/db");
    let names = k
        .ok(&[
            "get",
            "pods",
            "--field-selector",
            "metadata.name=db",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(names.trim(), "pod/db");

    // label, annotate, patch (merge, json, strategic default), status subresource.
    assert_eq!(
        k.ok(&["label", "pod", "web", "tier=front"]).await.trim(),
        "pod/web labeled"
    );
    let clash = k.run(&["label", "pod", "web", "tier=other"]).await;
    assert!(
        !clash.ok && clash.stderr.contains("already has a value"),
        "{}",
        clash.stderr
    );
    assert_eq!(
        k.ok(&["annotate", "pod", "web", "note=hello"]).await.trim(),
        "pod/web annotated"
    );
    k.ok(&[
        "patch",
        "pod",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"labels":{"merged":"yes"}}}"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "pod",
        "web",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/jsonpatched","value":"yes"}]"#,
    ])
    .await;
    k.ok(&[
        "patch",
        "pod",
        "web",
        "-p",
        r#"{"spec":{"containers":[{"name":"web","image":"nginx:3"}]}}"#,
    ])
    .await;
    let bad = k
        .run(&[
            "patch",
            "pod",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/labels/absent"}]"#,
        ])
        .await;
    assert!(
        !bad.ok && bad.stderr.contains("The request is invalid"),
        "a failing JSON patch is a 422: {}",
        bad.stderr
    );
    let web2 = get_json(&k, &["pod", "web"]).await;
    assert_eq!(
        web2["metadata"]["labels"],
        json!({"app": "web", "tier": "front", "merged": "yes", "jsonpatched": "yes"})
    );
    assert_eq!(web2["metadata"]["annotations"]["note"], "hello");
    assert_eq!(
        web2["spec"]["containers"],
        json!([{"name": "web", "image": "nginx:3", "ports": [{"containerPort": 80}]}]),
        "strategic merge by name"
    );
    assert_eq!(web2["metadata"]["generation"], 3);
    k.ok(&[
        "patch",
        "pod",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"10.1.2.3"}}"#,
    ])
    .await;
    let web3 = get_json(&k, &["pod", "web"]).await;
    assert_eq!(
        web3["status"],
        json!({"phase": "Running", "podIP": "10.1.2.3"})
    );
    assert_eq!(
        web3["metadata"]["generation"], 3,
        "status changes do not bump generation"
    );
    let ignored = k
        .run(&[
            "patch",
            "pod",
            "web",
            "--type=merge",
            "-p",
            r#"{"status":{"podIP":"6.6.6.6"}}"#,
        ])
        .await;
    assert!(ignored.ok, "{}", ignored.stderr);
    assert_eq!(
        get_json(&k, &["pod", "web"]).await["status"]["podIP"],
        "10.1.2.3",
        "the main resource cannot change status"
    );

    // replace with a stale resourceVersion: Conflict.
    let stale = k.file("stale.json", &web2.to_string());
    let r = k.run(&["replace", "--validate=false", "-f", &stale]).await;
    assert!(!r.ok, "a stale replace must fail");
    assert!(
        r.stderr.contains("Conflict") && r.stderr.contains("the object has been modified"),
        "{}",
        r.stderr
    );
    let mut fresh = get_json(&k, &["pod", "web"]).await;
    fresh["metadata"]["labels"]["replaced"] = "yes".into();
    k.file("fresh.json", &fresh.to_string());
    assert_eq!(
        k.ok(&[
            "replace",
            "--validate=false",
            "-f",
            &k.file("fresh.json", &fresh.to_string())
        ])
        .await
        .trim(),
        "pod/web replaced"
    );

    // get --watch sees a change as it happens.
    let mut watch = k
        .command(&[
            "get",
            "pods",
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .spawn()
        .unwrap();
    let mut stdout = watch.stdout.take().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    k.ok(&["label", "pod", "db", "watched=yes"]).await;
    let events = read_json_stream(&mut stdout, |evs| {
        evs.iter().any(|e| e["type"] == "MODIFIED")
    })
    .await;
    watch.start_kill().unwrap();
    let added: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "ADDED")
        .filter_map(|e| e["object"]["metadata"]["name"].as_str())
        .collect();
    assert!(
        added.contains(&"web") && added.contains(&"db"),
        "{events:?}"
    );
    let m = events.iter().find(|e| e["type"] == "MODIFIED").unwrap();
    assert_eq!(m["object"]["metadata"]["labels"]["watched"], "yes");

    // Deletes.
    assert_eq!(
        k.ok(&["delete", "pod", "db"]).await.trim(),
        "pod \"db\" deleted"
    );
    let gone = k.run(&["get", "pod", "db"]).await;
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
    assert_eq!(
        k.ok(&[
            "get",
            "netpol",
            "deny",
            "-o",
            "jsonpath={.spec.policyTypes[0]}"
        ])
        .await,
        "Ingress"
    );
    k.ok(&["delete", "-f", &pool]).await;
    k.ok(&["delete", "-f", &crd]).await;
    assert_eq!(
        get(srv.addr(), "/apis/crd.projectcalico.org/v1/ippools")
            .await
            .code,
        404,
        "deleting the CRD stops serving it"
    );
    k.ok(&["delete", "namespace", "demo"]).await;
    assert_eq!(
        get(srv.addr(), "/api/v1/namespaces/demo/pods/web")
            .await
            .code,
        404,
        "deleting a namespace deletes its pods"
    );

    let reqs = requests(&srv);
    let kubectl_reqs: Vec<&Value> = reqs.iter().filter(|r| r["user"] != "test-user").collect();
    assert!(
        kubectl_reqs.len() > 50 && kubectl_reqs.iter().all(|r| r["user"] == "anonymous"),
        "client-go sends no token over http"
    );
    assert!(reqs
        .iter()
        .any(|r| r["verb"] == "patch" && r["subresource"] == "status"));
    assert!(reqs
        .iter()
        .any(|r| r["verb"] == "update" && r["code"] == 409));
    assert!(reqs
        .iter()
        .any(|r| r["verb"] == "watch" && r["resource"] == "pods"));
}

/// Reads concatenated JSON values until `done` says so (or 10 s pass).
async fn read_json_stream(
    out: &mut tokio::process::ChildStdout,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let evs: Vec<Value> = serde_json::Deserializer::from_slice(&buf)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .collect();
        if done(&evs) {
            return evs;
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, out.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => panic!(
                "kubectl --watch printed no matching event: {}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubectl_dispatcher_works_too() {
    let srv = start().await;
    let k = Kubectl::new(PathBuf::from(KUBECTL), &srv.url());
    let v = k.ok(&["version", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.33.0");
    let o = k.run_in(&["apply", "--validate=false", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: default}\ndata: {a: b}\n").await;
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "configmap/c created");
    assert_eq!(
        k.ok(&[
            "-n",
            "default",
            "get",
            "cm",
            "c",
            "-o",
            "jsonpath={.data.a}"
        ])
        .await,
        "b"
    );
}
