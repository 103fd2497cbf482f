//! The file [`BlockStore`]: IPAM state on disk under `DIR/ipam/`, shared by every node process
//! on the machine.
//!
//! A transaction holds `flock(DIR/ipam/.lock)` from its load to its last commit (exclusive to
//! change, shared to read), reads all of `DIR/ipam/blocks/`, and replaces each changed block file
//! by write-temp + fsync + rename + fsync(dir). A reader therefore always sees whole files, a
//! crash leaves either the old or the new file, and two claimers can never both see a block as
//! free: the lock makes every transaction serial, so a commit never conflicts and the version
//! of a block is `()`.
//!
//! A block file that cannot be used is *corrupt*: it is skipped with an error naming it, never
//! rewritten, and the CIDR its file name stands for stays taken, so its addresses are never
//! handed out a second time. A file whose name is not a CIDR cannot collide with a block we
//! would create, and is only reported.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::block::Block;
use super::core::{BlockStore, BlockTxn, Change, Commit, Corrupt, Loaded, Origin, Versioned};
use super::IpamError;

const LOCK_FILE: &str = ".lock";
const BLOCKS_DIR: &str = "blocks";

/// Paths of one IPAM directory.
#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    blocks: PathBuf,
}

/// The lock, held until dropped (closing the file releases the flock).
pub struct Locked<'a> {
    store: &'a FileStore,
    _file: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl FileStore {
    /// Creates `DIR/ipam/blocks/` if needed.
    pub fn open(datastore_dir: &Path) -> Result<FileStore, IpamError> {
        let root = datastore_dir.join(crate::datastore::file::IPAM_SUBDIR);
        let blocks = root.join(BLOCKS_DIR);
        std::fs::create_dir_all(&blocks).map_err(io_err(&blocks))?;
        Ok(FileStore { root, blocks })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `DIR/ipam/blocks`, where the block files live.
    pub fn blocks_dir(&self) -> &Path {
        &self.blocks
    }

    pub fn lock(&self, exclusive: bool) -> Result<Locked<'_>, IpamError> {
        let path = self.root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if exclusive {
            file.lock().map_err(io_err(&path))?;
        } else {
            file.lock_shared().map_err(io_err(&path))?;
        }
        Ok(Locked {
            store: self,
            _file: file,
        })
    }
}

impl Locked<'_> {
    fn block_path(&self, cidr: &IpNet) -> PathBuf {
        self.store.blocks.join(Block::file_name(cidr))
    }

    /// Reads every block; only I/O failures of the directory itself are errors.
    pub fn load(&self) -> Result<Loaded<()>, IpamError> {
        let dir = &self.store.blocks;
        let mut out = Loaded::default();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let mut corrupt = |cidr: Option<IpNet>, message: String| {
                out.corrupt.push(Corrupt {
                    origin: Origin::File(path.clone()),
                    cidr,
                    message,
                })
            };
            let Some(named) = Block::parse_file_name(&name) else {
                corrupt(
                    None,
                    "file name is not a block CIDR (e.g. 10-244-0-64-26.yaml)".into(),
                );
                continue;
            };
            // Keep the whole named range taken even if the name has host bits.
            let taken = named.trunc();
            let text = match std::fs::read(&path) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(t) => t,
                    Err(_) => {
                        corrupt(Some(taken), "not UTF-8 text".into());
                        continue;
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    corrupt(Some(taken), format!("cannot read: {e}"));
                    continue;
                }
            };
            match Block::from_yaml(&text, &named) {
                Ok(block) => {
                    out.blocks
                        .insert(block.cidr, Versioned { block, version: () });
                }
                Err(m) => corrupt(Some(taken), m),
            }
        }
        out.corrupt.sort_by(|a, b| a.origin.cmp(&b.origin));
        Ok(out)
    }

    /// Atomically replaces a block's file.
    pub fn write(&self, block: &Block) -> Result<(), IpamError> {
        let path = self.block_path(&block.cidr);
        let tmp = self
            .store
            .blocks
            .join(format!(".{}.tmp", Block::file_name(&block.cidr)));
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(block.to_yaml().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.sync_dir()
    }

    pub fn remove(&self, cidr: &IpNet) -> Result<(), IpamError> {
        let path = self.block_path(cidr);
        match std::fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn sync_dir(&self) -> Result<(), IpamError> {
        let dir = &self.store.blocks;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    }
}

impl BlockStore for FileStore {
    type Version = ();
    type Txn<'a> = Locked<'a>;

    fn begin(&self, write: bool) -> Result<Locked<'_>, IpamError> {
        self.lock(write)
    }
}

impl BlockTxn for Locked<'_> {
    type Version = ();

    fn load(&mut self) -> Result<Loaded<()>, IpamError> {
        Locked::load(self)
    }

    fn commit(&mut self, change: Change<()>) -> Result<(), Commit> {
        match change {
            Change::Create(b) | Change::Update(b, ()) => self.write(&b)?,
            Change::Delete(cidr, ()) => self.remove(&cidr)?,
        }
        Ok(())
    }
}
