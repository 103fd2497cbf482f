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
