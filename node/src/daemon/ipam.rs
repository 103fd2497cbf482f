//! IPAM as the daemon uses it, whichever backend stores it: a watch of every block with its use
//! (to originate and blackhole this node's blocks and show them in the status), and releasing
//! the blocks of a node that was deleted (see [`super::release`]), and allocation for the CNI
//! plugin's socket (see [`super::cni`]); the daemon loop itself never allocates.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::watch;

use crate::datastore::{IpFamily, IpPool};
use crate::ipam::kdd::watch::KddIpamWatch;
use crate::ipam::kdd::KddIpam;
use crate::ipam::watch::{IpamView, IpamWatch};
use crate::ipam::{Ipam, IpamError};

/// What the daemon needs from IPAM.
pub trait NodeIpam: Send + Sync {
    /// Every block with its use, now and after every change.
    fn subscribe(&self) -> watch::Receiver<Arc<IpamView>>;

    /// Releases the blocks affine to `node` except those holding an address for which
    /// `in_use(address, handle)` is true; returns the released blocks.
    fn release_node(
        &self,
        node: &str,
        in_use: &dyn Fn(IpAddr, &str) -> bool,
    ) -> Result<Vec<IpNet>, IpamError>;

    /// Releases every address of `handle` (a leaked allocation, see [`super::gc`]; a CNI DEL).
    fn release(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError>;

    /// An address of `family` for `handle` on `node` from `pools` (a CNI ADD, see [`super::cni`]).
    fn allocate(
        &self,
        node: &str,
        handle: &str,
        family: IpFamily,
        pools: &[IpPool],
    ) -> Result<IpAddr, IpamError>;

    /// The addresses `handle` holds.
    fn addresses_of(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError>;
}

/// IPAM in the file datastore's directory (`DIR/ipam/`).
pub struct FileIpam {
    ipam: Ipam,
    watch: IpamWatch,
}

impl FileIpam {
    pub fn open(dir: &Path) -> Result<FileIpam, IpamError> {
        Ok(FileIpam {
            ipam: Ipam::new(dir)?,
            watch: IpamWatch::start(dir, Duration::from_secs(10))?,
        })
    }
}

impl NodeIpam for FileIpam {
    fn subscribe(&self) -> watch::Receiver<Arc<IpamView>> {
        self.watch.subscribe()
    }

    fn release_node(
        &self,
        node: &str,
        in_use: &dyn Fn(IpAddr, &str) -> bool,
    ) -> Result<Vec<IpNet>, IpamError> {
        self.ipam.release_node(node, in_use)
    }

    fn release(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        self.ipam.release(handle)
    }

    fn allocate(
        &self,
        node: &str,
        handle: &str,
        family: IpFamily,
        pools: &[IpPool],
    ) -> Result<IpAddr, IpamError> {
        self.ipam.allocate(node, handle, family, pools)
    }

    fn addresses_of(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        self.ipam.addresses_of(handle)
    }
}

/// IPAM in Calico's Kubernetes objects (`IPAMBlock`, `BlockAffinity`, `IPAMHandle`), with
/// optimistic concurrency only (see [`crate::ipam::kdd`]).
pub struct KubeIpam {
    ipam: KddIpam,
    watch: KddIpamWatch,
}

impl KubeIpam {
    /// Starts the IPAMBlock watch on `client` (made on the daemon's runtime).
    pub fn start(client: kube::Client) -> KubeIpam {
        KubeIpam {
            ipam: KddIpam::kubernetes(client.clone(), tokio::runtime::Handle::current()),
            watch: KddIpamWatch::start(client),
        }
    }
}

impl NodeIpam for KubeIpam {
    fn subscribe(&self) -> watch::Receiver<Arc<IpamView>> {
        self.watch.subscribe()
    }

    fn release_node(
        &self,
        node: &str,
        in_use: &dyn Fn(IpAddr, &str) -> bool,
    ) -> Result<Vec<IpNet>, IpamError> {
        // block_in_place inside: the loop's task waits for the API, other tasks go on.
        self.ipam.release_node(node, in_use)
    }

    fn release(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        self.ipam.release(handle)
    }

    fn allocate(
        &self,
        node: &str,
        handle: &str,
        family: IpFamily,
        pools: &[IpPool],
    ) -> Result<IpAddr, IpamError> {
        self.ipam.allocate(node, handle, family, pools)
    }

    fn addresses_of(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        self.ipam.addresses_of(handle)
    }
}
