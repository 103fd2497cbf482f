//! The backends the contract runs against.

use std::sync::Arc;

use calico_node::datastore::{Datastore, FileDatastore, Snapshot};

/// A datastore the contract can change and read.
pub trait Backend {
    fn name(&self) -> &'static str;
    /// Creates or replaces the object(s) of `doc` under `key` (a file, or the objects it holds).
    fn put(&mut self, key: &str, doc: &str);
    /// Deletes what `key` holds.
    fn delete(&mut self, key: &str);
    /// The first snapshot for which `pred` holds.
    fn wait(&self, pred: &dyn Fn(&Snapshot) -> bool) -> Arc<Snapshot>;
}

/// A directory watched by [`FileDatastore`].
pub struct FileBackend {
    dir: tempfile::TempDir,
    ds: FileDatastore,
}

impl Default for FileBackend {
    fn default() -> FileBackend {
        let dir = tempfile::tempdir().unwrap();
        let ds = FileDatastore::open(dir.path()).unwrap();
        FileBackend { dir, ds }
    }
}

impl Backend for FileBackend {
    fn name(&self) -> &'static str {
        "file"
    }

    fn put(&mut self, key: &str, doc: &str) {
        let tmp = self.dir.path().join(format!(".{key}.tmp"));
        std::fs::write(&tmp, doc).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(format!("{key}.yaml"))).unwrap();
    }

    fn delete(&mut self, key: &str) {
        std::fs::remove_file(self.dir.path().join(format!("{key}.yaml"))).unwrap();
    }

    fn wait(&self, pred: &dyn Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        let rx = self.ds.watch();
        super::wait_for("file", &|| rx.borrow().clone(), pred)
    }
}

/// The Kubernetes backend: kube-rs watchers against the project's test API server, in-process
/// on 127.0.0.1, with the CRDs of `manifests/`.
pub struct KubeBackend {
    rt: tokio::runtime::Runtime,
    client: kube::Client,
    ds: calico_node::datastore::kubernetes::KubeDatastore,
    keys: std::collections::BTreeMap<String, (kube::api::ApiResource, Option<String>, String)>,
    _server: kube_test_server::ServerHandle,
}

fn resource_of(kind: &str) -> kube::api::ApiResource {
    calico_node::datastore::kubernetes::kinds::WATCHED
        .iter()
        .find(|k| k.kind == kind)
        .unwrap_or_else(|| panic!("{kind} is not watched"))
        .api_resource()
}

impl KubeBackend {
    pub fn start() -> KubeBackend {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (server, client) = rt.block_on(async {
            let server = kube_test_server::Server::start(Default::default())
                .await
                .unwrap();
            let cfg = kube::Config::new(server.url().parse().unwrap());
            let client = kube::Client::try_from(cfg).unwrap();
            (server, client)
        });
        KubeBackend {
            ds: rt.block_on(async {
                install(&client).await;
                calico_node::datastore::kubernetes::KubeDatastore::start_with(
                    client.clone(),
                    calico_node::datastore::kubernetes::KubeCfg {
                        namespace: "kube-system".into(),
                        kubeconfig: None,
                    },
                )
                .await
                .unwrap()
            }),
            rt,
            client,
            keys: Default::default(),
            _server: server,
        }
    }
}

/// The CRDs of `manifests/` (the server has the `default` namespace, as a cluster does).
pub async fn install(client: &kube::Client) {
    use kube::api::{Api, DynamicObject, PostParams};
    let crd = kube::api::ApiResource {
        group: "apiextensions.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiextensions.k8s.io/v1".into(),
        kind: "CustomResourceDefinition".into(),
        plural: "customresourcedefinitions".into(),
    };
    let crds: Api<DynamicObject> = Api::all_with(client.clone(), &crd);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("10-crd-")
        {
            continue;
        }
        let obj: DynamicObject =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        crds.create(&PostParams::default(), &obj).await.unwrap();
    }
}

impl Backend for KubeBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn put(&mut self, key: &str, doc: &str) {
        use kube::api::{Api, DynamicObject, PostParams};
        let doc = doc.replace(
            "apiVersion: projectcalico.org/v3",
            "apiVersion: crd.projectcalico.org/v1",
        );
        let mut obj: DynamicObject = serde_yaml_ng::from_str(&doc).unwrap();
        let kind = obj.types.as_ref().unwrap().kind.clone();
        let ar = resource_of(&kind);
        let ns = obj.metadata.namespace.clone();
        let name = obj.metadata.name.clone().unwrap();
        let client = self.client.clone();
        self.rt.block_on(async {
            let api: Api<DynamicObject> = match &ns {
                Some(ns) => Api::namespaced_with(client, ns, &ar),
                None => Api::all_with(client, &ar),
            };
            match api.get_opt(&name).await.unwrap() {
                Some(old) => {
                    obj.metadata.resource_version = old.metadata.resource_version;
                    api.replace(&name, &PostParams::default(), &obj)
                        .await
                        .unwrap();
                }
                None => {
                    api.create(&PostParams::default(), &obj).await.unwrap();
                }
            }
        });
        self.keys.insert(key.to_string(), (ar, ns, name));
    }

    fn delete(&mut self, key: &str) {
        use kube::api::{Api, DeleteParams, DynamicObject};
        let (ar, ns, name) = self.keys.remove(key).unwrap();
        let client = self.client.clone();
        self.rt.block_on(async {
            let api: Api<DynamicObject> = match &ns {
                Some(ns) => Api::namespaced_with(client, ns, &ar),
                None => Api::all_with(client, &ar),
            };
            api.delete(&name, &DeleteParams::default()).await.unwrap();
        });
    }

    fn wait(&self, pred: &dyn Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        let rx = self.ds.watch();
        super::wait_for("kubernetes", &|| rx.borrow().clone(), pred)
    }
}
