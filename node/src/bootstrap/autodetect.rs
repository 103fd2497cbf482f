//! Node address autodetection, as calico-node's `IP_AUTODETECTION_METHOD` /
//! `IP6_AUTODETECTION_METHOD` do it. The choice ([`Method::select`]) is pure, over a list of
//! interfaces and their addresses; [`interfaces`] and [`source_for`] read them from the kernel
//! of the network namespace the daemon runs in.
//!
//! Methods (Calico's names):
//! - `first-found` (default): the first address, in interface order, of an interface that is not
//!   one of the usual virtual ones (Docker, libvirt, veths, our own `cali*`/tunnels, ...);
//! - `interface=REGEX[,REGEX...]`: the first address of an interface whose whole name matches;
//! - `skip-interface=REGEX[,REGEX...]`: as first-found, also skipping those interfaces;
//! - `can-reach=DEST`: the address the kernel would send from towards DEST (an IP or a name);
//! - `cidr=CIDR[,CIDR...]`: the first address inside one of the CIDRs;
//! - `kubernetes-internal-ip`: the Node's first `InternalIP` of the family.
//!
//! Loopback, link-local and multicast addresses are never chosen. The prefix length is the
//! interface's, so the Node's `ADDR/PREFIXLEN` annotation says which subnet it is on.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use ipnet::IpNet;
use regex::Regex;

/// Interfaces first-found never picks (calico-node's list, plus ours).
pub const DEFAULT_SKIP: &[&str] = &[
    "docker.*",
    "cbr.*",
    "dummy.*",
    "virbr.*",
    "lxcbr.*",
    "veth.*",
    "lo",
    "cali.*",
    "tunl.*",
    "flannel.*",
    "kube-ipvs.*",
    "cni.*",
    "vxlan.calico.*",
    "vxlan-v6.calico.*",
    "wireguard.cali.*",
    "wg-v6.cali.*",
    "nodelocaldns.*",
    "podman.*",
];

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn has(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// One interface and its addresses, in kernel order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub addrs: Vec<IpNet>,
}

/// An autodetection method.
#[derive(Clone, Debug)]
pub enum Method {
    FirstFound,
    Interface(Vec<Regex>),
    SkipInterface(Vec<Regex>),
    CanReach(String),
    Cidr(Vec<IpNet>),
    KubernetesInternalIp,
}

/// A whole-name regex, as Calico anchors them.
fn anchored(re: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("invalid regex {re:?}: {e}"))
}

impl std::str::FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Method, String> {
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        };
        let nonempty = |name: &str, v: Vec<String>| {
            if v.is_empty() {
                Err(format!("{name}= needs a value"))
            } else {
                Ok(v)
            }
        };
        match s.trim().split_once('=') {
            None if s.trim().is_empty() || s.trim() == "first-found" => Ok(Method::FirstFound),
            None if s.trim() == "kubernetes-internal-ip" => Ok(Method::KubernetesInternalIp),
            Some(("interface", v)) => Ok(Method::Interface(
                nonempty("interface", list(v))?
                    .iter()
                    .map(|r| anchored(r))
                    .collect::<Result<_, _>>()?,
            )),
            Some(("skip-interface", v)) => Ok(Method::SkipInterface(
                nonempty("skip-interface", list(v))?
                    .iter()
                    .map(|r| anchored(r))
                    .collect::<Result<_, _>>()?,
            )),
            Some(("can-reach", v)) if !v.trim().is_empty() => {
                Ok(Method::CanReach(v.trim().to_string()))
            }
            Some(("cidr", v)) => Ok(Method::Cidr(
                nonempty("cidr", list(v))?
                    .iter()
                    .map(|c| c.parse().map_err(|_| format!("cidr={c}: not a CIDR")))
                    .collect::<Result<_, _>>()?,
            )),
            _ => Err(format!(
                "{s:?}: want first-found, interface=REGEX, skip-interface=REGEX, can-reach=DEST, \
                 cidr=CIDR or kubernetes-internal-ip"
            )),
        }
    }
}

/// Whether an address may be a node address.
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !a.is_loopback() && !a.is_link_local() && !a.is_multicast() && !a.is_unspecified()
        }
        IpAddr::V6(a) => {
            !a.is_loopback()
                && !a.is_multicast()
                && !a.is_unspecified()
                && (a.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

fn first_of<'a>(ifaces: impl Iterator<Item = &'a Iface>, family: Family) -> Option<IpNet> {
    ifaces
        .flat_map(|i| i.addrs.iter())
        .find(|a| family.has(a.addr()) && usable(a.addr()))
        .copied()
}

impl Method {
    /// The address this method picks from `ifaces`; `internal_ips` are the Node's InternalIPs
    /// and `reach` answers "which source address towards DEST" (see [`source_for`]).
    pub fn select(
        &self,
        family: Family,
        ifaces: &[Iface],
        internal_ips: &[IpAddr],
        reach: &dyn Fn(&str, Family) -> Option<IpAddr>,
    ) -> Option<IpNet> {
        let skip_default = |i: &&Iface| {
            !DEFAULT_SKIP
                .iter()
                .any(|re| anchored(re).is_ok_and(|r| r.is_match(&i.name)))
        };
        // The interface's own prefix for an address, else a host prefix.
        let with_prefix = |ip: IpAddr| {
            ifaces
                .iter()
                .flat_map(|i| i.addrs.iter())
                .find(|a| a.addr() == ip)
                .copied()
                .unwrap_or_else(|| IpNet::from(ip))
        };
        match self {
            Method::FirstFound => first_of(ifaces.iter().filter(skip_default), family),
            Method::Interface(res) => first_of(
                ifaces
                    .iter()
                    .filter(|i| res.iter().any(|r| r.is_match(&i.name))),
                family,
            ),
            Method::SkipInterface(res) => first_of(
                ifaces
                    .iter()
                    .filter(skip_default)
                    .filter(|i| !res.iter().any(|r| r.is_match(&i.name))),
                family,
            ),
            Method::CanReach(dest) => reach(dest, family)
                .filter(|ip| usable(*ip))
                .map(with_prefix),
            Method::Cidr(cidrs) => ifaces
                .iter()
                .flat_map(|i| i.addrs.iter())
                .find(|a| {
                    family.has(a.addr())
                        && usable(a.addr())
                        && cidrs.iter().any(|c| c.contains(&a.addr()))
                })
                .copied(),
            Method::KubernetesInternalIp => internal_ips
                .iter()
                .find(|ip| family.has(**ip) && usable(**ip))
                .map(|ip| with_prefix(*ip)),
        }
    }
}

/// The interfaces of this network namespace that are up, with their addresses.
pub fn interfaces() -> Vec<Iface> {
    use nix::net::if_::InterfaceFlags;
    let mut out: Vec<Iface> = Vec::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return out;
    };
    for a in addrs {
        if !a.flags.contains(InterfaceFlags::IFF_UP) {
            continue;
        }
        let ip_and_len = (|| {
            let addr = a.address.as_ref()?;
            let mask = a.netmask.as_ref()?;
            if let (Some(ip), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                let len = u32::from(m.ip()).count_ones() as u8;
                return IpNet::new(IpAddr::V4(ip.ip()), len).ok();
            }
            if let (Some(ip), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                let len = u128::from(m.ip()).count_ones() as u8;
                return IpNet::new(IpAddr::V6(ip.ip()), len).ok();
            }
            None
        })();
        let entry = match out.iter_mut().find(|i| i.name == a.interface_name) {
            Some(e) => e,
            None => {
                out.push(Iface {
                    name: a.interface_name.clone(),
                    addrs: Vec::new(),
                });
                out.last_mut().expect("just pushed")
            }
        };
        if let Some(n) = ip_and_len {
            entry.addrs.push(n);
        }
    }
    out
}

/// The source address the kernel picks towards `dest` (an address or a host name): a UDP
/// socket is connected (no packet is sent) and asked for its local address.
pub fn source_for(dest: &str, family: Family) -> Option<IpAddr> {
    let target: SocketAddr = match dest.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, 53),
        Err(_) => {
            use std::net::ToSocketAddrs;
            (dest, 53)
                .to_socket_addrs()
                .ok()?
                .find(|a| family.has(a.ip()))?
        }
    };
    if !family.has(target.ip()) {
        return None;
    }
    let bind: SocketAddr = match family {
        Family::V4 => "0.0.0.0:0".parse().ok()?,
        Family::V6 => "[::]:0".parse().ok()?,
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(target).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}
