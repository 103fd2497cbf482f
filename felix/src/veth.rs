//! The host side of a workload's veth, set up the way Calico does it.
//!
//! A pod's `eth0` is one end of a veth pair; the other end stays in the node's namespace and is named
//! by [`workload_iface_name`] (`cali` + 11 hex digits of SHA-1 of `NAMESPACE.PODNAME`), so the CNI
//! plugin, tests and this daemon agree on it without talking. Whoever creates the pair moves one end
//! into the pod; felix configures the host end as soon as it sees the link (netlink `RTM_NEWLINK`):
//!
//! - **MAC `ee:ee:ee:ee:ee:ee`** ([`HOST_SIDE_MAC`]). Every host end has the same MAC, so every pod
//!   sees the same gateway MAC, and the host end's IPv6 link-local address (EUI-64 of that MAC) is
//!   always [`IPV6_GATEWAY`] `fe80::ecee:eeff:feee:eeee`: the pod's IPv6 default route points there and
//!   the host answers neighbour solicitations for it as its own address, so no proxy NDP is needed.
//!   The CNI plugin normally sets the MAC when it creates the pair; felix sets it when it differs
//!   (veth allows a live MAC change, but only a MAC set before the link comes up gives the link-local
//!   address above, so it is applied together with "up").
//! - **No IPv4 address on the host end.** The pod's IPv4 default route is `169.254.1.1 dev eth0
//!   onlink` ([`IPV4_GATEWAY`]); nothing owns that address. `proxy_arp=1` makes the host answer the
//!   pod's ARP for it with the host end's MAC, and `neigh/<if>/proxy_delay=0` makes it answer at once
//!   instead of after a random delay of up to 0.8 s. Proxy ARP only answers for targets the host
//!   routes out of *another* interface, so the node needs a route covering 169.254.1.1 (its default
//!   route on a real node).
//! - **`forwarding=1`** on the interface (IPv4 checks forwarding on the ingress interface, and proxy
//!   ARP's route lookup needs it too) and, once per namespace, `net.ipv4.ip_forward=1` and
//!   `net.ipv6.conf.all.forwarding=1` (see [`GLOBAL_SYSCTLS`]; optional, on by default).
//! - **`rp_filter=1`**: strict reverse-path filtering, so a pod cannot send with a source address
//!   that is not routed back to its own interface (anti-spoofing, as Calico does).
//! - **IPv6 `accept_ra=0`, `accept_dad=0`**: a pod is not a router, and the link-local address above
//!   is the same on every `cali*` link by design, so duplicate address detection would only delay
//!   the pod's gateway by a second or more.
//! - **Link up.** Felix brings the host end up; a /32 route to a down interface is refused by the
//!   kernel, so the pod route follows right after.
//!
//! The sysctls are written under `/proc/sys`, which shows the network namespace of the *calling
//! thread*: run this on a thread inside the namespace being configured.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

/// Calico's host-side veth MAC.
pub const HOST_SIDE_MAC: [u8; 6] = [0xee; 6];

/// The IPv4 gateway every pod uses (`default via 169.254.1.1 dev eth0 onlink`), answered by proxy ARP.
pub const IPV4_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The IPv6 gateway every pod uses: the EUI-64 link-local address of [`HOST_SIDE_MAC`].
pub const IPV6_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// The prefix of every workload interface on the host side.
pub const WORKLOAD_IFACE_PREFIX: &str = "cali";

/// Linux's limit on an interface name (IFNAMSIZ - 1).
pub const MAX_IFACE_NAME: usize = 15;

/// Namespace-wide sysctls set once when the route manager starts (if enabled): the node routes
/// between its pods, its uplinks and other nodes.
pub const GLOBAL_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
];

/// Host-side interface name of a pod's veth: `cali` + the first 11 hex digits of
/// SHA-1(`"{namespace}.{pod}"`), 15 characters, as Calico's CNI plugin names it.
pub fn workload_iface_name(namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex = hex::encode(digest);
    format!("{WORKLOAD_IFACE_PREFIX}{}", &hex[..11])
}

/// Whether `name` is usable as a Linux interface name (1..=15 bytes, no `/`, no whitespace, not
/// `.` or `..`).
pub fn valid_iface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFACE_NAME
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
}

/// One sysctl of a workload interface: path relative to `/proc/sys`, and value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceSysctl {
    /// E.g. `net/ipv4/conf/cali1234567890a/proxy_arp`.
    pub path: String,
    /// The value written.
    pub value: &'static str,
    /// IPv6 settings are skipped (not failed) when the kernel has IPv6 off.
    pub ipv6: bool,
}

/// The per-interface sysctls for the host end of a workload veth (see the module docs for why).
/// They are set before the link is brought up, so `accept_dad` applies to its first address.
pub fn iface_sysctls(iface: &str) -> Vec<IfaceSysctl> {
    let v4 = |key: &str, value| IfaceSysctl {
        path: format!("net/ipv4/conf/{iface}/{key}"),
        value,
        ipv6: false,
    };
    let v6 = |key: &str, value| IfaceSysctl {
        path: format!("net/ipv6/conf/{iface}/{key}"),
        value,
        ipv6: true,
    };
    vec![
        v4("forwarding", "1"),
        v4("rp_filter", "1"),
        v4("proxy_arp", "1"),
        IfaceSysctl {
            path: format!("net/ipv4/neigh/{iface}/proxy_delay"),
            value: "0",
            ipv6: false,
        },
        v6("accept_ra", "0"),
        v6("accept_dad", "0"),
        v6("forwarding", "1"),
    ]
}

/// Write `value` to `/proc/sys/{path}` unless it already holds it. Returns whether it wrote.
pub fn write_sysctl(path: &str, value: &str) -> io::Result<bool> {
    write_sysctl_under(Path::new("/proc/sys"), path, value)
}

fn write_sysctl_under(root: &Path, path: &str, value: &str) -> io::Result<bool> {
    let full: PathBuf = root.join(path);
    if let Ok(cur) = std::fs::read_to_string(&full) {
        if cur.trim() == value {
            return Ok(false);
        }
    }
    std::fs::write(&full, value)?;
    Ok(true)
}

/// Apply [`iface_sysctls`] for `iface`. IPv6 keys are skipped when `/proc/sys/net/ipv6` is absent
/// (IPv6 disabled); any other failure (typically: the interface vanished) is returned with its path.
pub fn configure_iface_sysctls(iface: &str) -> Result<(), (String, io::Error)> {
    let ipv6 = Path::new("/proc/sys/net/ipv6/conf").exists();
    for s in iface_sysctls(iface) {
        if s.ipv6 && !ipv6 {
            continue;
        }
        write_sysctl(&s.path, s.value).map_err(|e| (s.path.clone(), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iface_name_matches_calico_rule() {
        // printf 'default.nginx' | sha1sum  -> c440f455693b69cdd48a37aa5ecd78038f50413d
        assert_eq!(workload_iface_name("default", "nginx"), "calic440f455693");
        // printf 'kube-system.coredns-abc' | sha1sum -> 3d5d6ab04b5152ac04d8dae168ae9bf78b243ba0
        assert_eq!(
            workload_iface_name("kube-system", "coredns-abc"),
            "cali3d5d6ab04b5"
        );
        let n = workload_iface_name("a-very-long-namespace-name", "and-a-long-pod-name-0");
        assert_eq!(n.len(), MAX_IFACE_NAME);
        assert!(valid_iface_name(&n));
    }

    #[test]
    fn iface_name_validity() {
        assert!(valid_iface_name("eth0"));
        assert!(!valid_iface_name(""));
        assert!(!valid_iface_name("sixteen-chars-xx"));
        assert!(!valid_iface_name("a/b"));
        assert!(!valid_iface_name("a b"));
        assert!(!valid_iface_name(".."));
    }

    #[test]
    fn ipv6_gateway_is_eui64_of_host_mac() {
        let mut eui = [0u8; 8];
        eui[..3].copy_from_slice(&HOST_SIDE_MAC[..3]);
        eui[3] = 0xff;
        eui[4] = 0xfe;
        eui[5..].copy_from_slice(&HOST_SIDE_MAC[3..]);
        eui[0] ^= 0x02; // universal/local bit
        let seg = IPV6_GATEWAY.segments();
        for i in 0..4 {
            assert_eq!(seg[4 + i], u16::from_be_bytes([eui[2 * i], eui[2 * i + 1]]));
        }
        assert_eq!(seg[0], 0xfe80);
    }

    #[test]
    fn sysctl_set_covers_proxy_arp_and_forwarding() {
        let s = iface_sysctls("calic440f455693");
        let get = |p: &str| s.iter().find(|x| x.path == p).map(|x| x.value);
        assert_eq!(get("net/ipv4/conf/calic440f455693/proxy_arp"), Some("1"));
        assert_eq!(get("net/ipv4/neigh/calic440f455693/proxy_delay"), Some("0"));
        assert_eq!(get("net/ipv4/conf/calic440f455693/forwarding"), Some("1"));
        assert_eq!(get("net/ipv6/conf/calic440f455693/accept_ra"), Some("0"));
    }

    #[test]
    fn write_sysctl_skips_unchanged_values() {
        let dir = std::env::temp_dir().join(format!("felix-sysctl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net")).unwrap();
        std::fs::write(dir.join("net/x"), "0\n").unwrap();
        assert!(write_sysctl_under(&dir, "net/x", "1").unwrap());
        assert!(!write_sysctl_under(&dir, "net/x", "1").unwrap());
        assert!(write_sysctl_under(&dir, "net/missing/y", "1").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
