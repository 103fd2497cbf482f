//! Real BGP peers for the lab: BIRD 2 ([`Bird`]), GoBGP ([`Gobgp`]) and FRR's bgpd ([`Frr`]), each
//! started from a config string inside a lab namespace and killed with it. The lab command's
//! top-of-rack router ([`crate::cmd::tor`]) is started and queried through the same modules
//! ([`bird`], [`gobgp`]), detached instead of owned.
//!
//! Files live in the lab's temp dir, named after the namespace (`{ns}-bird.{n}.conf|ctl|log`,
//! `{ns}-gobgp.{n}.toml|sock|log`, `{ns}-frr.{n}.conf|pid|log` and the vty socket directory
//! `{ns}-frr.{n}.vty/`). All three daemons run in the foreground so the [`Proc`](crate::proc::Proc)
//! is the daemon. Queries have deadlines: a SIGSTOPped daemon makes queries fail, not hang.
//!
//! # Configs that work (BIRD 2.0.12, GoBGP 3.10, FRR 8.4)
//!
//! BIRD, eBGP over IPv4 and over IPv6 (BIRD needs `protocol device` to find the neighbor's interface,
//! and explicit import/export on eBGP channels; a v4 session can carry IPv6 routes and vice versa):
//! ```text
//! router id 10.0.0.1;
//! protocol device {}
//! protocol static s4 { ipv4; route 10.99.0.0/26 blackhole; }
//! protocol static s6 { ipv6; route fd99::/64 blackhole; }
//! protocol bgp peer4 {
//!   local 10.0.0.1 as 65001; neighbor 10.0.0.2 as 65002;
//!   hold time 9;                          # faster failure detection in tests (keepalive = hold/3)
//!   graceful restart on; graceful restart time 60;    # RFC 4724
//!   password "s3cret";                    # TCP MD5 (RFC 2385); the peer must set the same
//!   ipv4 { import all; export all; };
//!   ipv6 { import all; export all; };     # optional: IPv6 NLRI over the IPv4 session
//! }
//! protocol bgp peer6 {
//!   local fd00::1 as 65001; neighbor fd00::2 as 65002;
//!   ipv6 { import all; export all; };
//! }
//! ```
//! BIRD iBGP template (route reflector client lines commented):
//! ```text
//! template bgp ibgp_peer {
//!   local as 64512; hold time 9; graceful restart on;
//!   direct;                                # peers on the same segment; else `multihop`
//!   # rr client; rr cluster id 1.1.1.1;
//!   ipv4 { import all; export all; next hop self; };
//!   ipv6 { import all; export all; next hop self; };
//! }
//! protocol bgp node2 from ibgp_peer { neighbor 10.0.0.2 as 64512; }
//! ```
//! Programming the namespace's kernel table from BIRD (only inside the lab namespace!):
//! `protocol kernel { ipv4 { export all; }; learn; }` (and the same with `ipv6`).
//!
//! GoBGP, eBGP to 10.0.0.1 with IPv4 and IPv6 unicast, graceful restart and MD5:
//! ```text
//! [global.config]
//!   as = 65002
//!   router-id = "10.0.0.2"
//!   # port = 1179                 # if something else in the namespace owns 179; -1 = do not listen
//! [[neighbors]]
//!   [neighbors.config]
//!     neighbor-address = "10.0.0.1"
//!     peer-as = 65001
//!     auth-password = "s3cret"    # TCP MD5
//!   [neighbors.timers.config]
//!     hold-time = 9
//!     keepalive-interval = 3
//!     connect-retry = 1           # default 120 s: a restarted peer would wait that long to reconnect
//!   [neighbors.graceful-restart.config]
//!     enabled = true
//!     restart-time = 60
//!   [[neighbors.afi-safis]]
//!     [neighbors.afi-safis.config]
//!       afi-safi-name = "ipv4-unicast"
//!     [neighbors.afi-safis.mp-graceful-restart.config]
//!       enabled = true
//!   [[neighbors.afi-safis]]
//!     [neighbors.afi-safis.config]
//!       afi-safi-name = "ipv6-unicast"
//!     [neighbors.afi-safis.mp-graceful-restart.config]
//!       enabled = true
//! ```
//! For iBGP set `peer-as` equal to `global.config.as`; for a route reflector add
//! `[neighbors.route-reflector.config] route-reflector-client = true` and `route-reflector-cluster-id`.
//!
//! FRR (`bgpd -Z`, no zebra): eBGP with an IPv4 and an IPv6 session, each carrying its own family.
//! FRR 8 sends and accepts nothing on eBGP without a policy unless `no bgp ebgp-requires-policy`, and
//! without zebra a `network` is only announced with `no bgp network import-check`. `frr defaults
//! traditional` activates every neighbor for IPv4 unicast: the IPv6 one is deactivated there.
//! `timers 3 9` are keepalive and hold time; `timers connect` defaults to 120 s. FRR
//! sends the graceful restart capability by default (helper mode).
//! ```text
//! frr defaults traditional
//! hostname frr-b
//! log stdout informational
//! router bgp 65002
//!  bgp router-id 10.0.0.2
//!  no bgp ebgp-requires-policy
//!  no bgp network import-check
//!  neighbor 10.0.0.1 remote-as 65001
//!  neighbor 10.0.0.1 timers 3 9
//!  neighbor 10.0.0.1 timers connect 1
//!  neighbor fd00::1 remote-as 65001
//!  address-family ipv4 unicast
//!   network 10.98.0.0/26
//!   no neighbor fd00::1 activate
//!  exit-address-family
//!  address-family ipv6 unicast
//!   network fd98::/64
//!   neighbor fd00::1 activate
//!  exit-address-family
//! ```
//! iBGP: the same with `remote-as` equal to the local AS.
//!
//! # Bulk routes into GoBGP
//! [`Gobgp::add_routes_bulk`] writes an MRT TABLE_DUMP_V2 file ([`crate::mrt`]) and runs
//! `gobgp mrt inject global FILE`; see that function and [`prefixes_v4`] / [`prefixes_v6`] for making
//! 100k distinct prefixes. `gobgp global rib add` per prefix costs a process and an RPC each (~10 ms:
//! 100k would take over 15 minutes). Measured on the shared 2-core VM: 100k /24s are in gobgpd's RIB
//! ~11 s after the call starts, and at a BIRD eBGP peer after ~24 s (gobgpd's export is the slow part).
//! If BIRD may be the injector, [`bird_static_routes`] makes a config that BIRD loads in ~0.1 s; the
//! 100k routes were at a GoBGP peer and at a BIRD peer ~6.5 s after BIRD started, session set-up
//! included (self-tests `bulk_inject_100k` and `bulk_static_bird`, `--ignored --nocapture`).

pub mod bird;
pub mod frr;
pub mod gobgp;

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use crate::mrt::MrtAttrs;
pub use bird::{parse_routes, Bird, BirdRoute, BIRDC_TIMEOUT};
pub use frr::{Frr, FrrRoute, VTYSH_TIMEOUT};
pub use gobgp::{parse_rib, session_state_name, Gobgp, RibEntry};

/// `count` consecutive IPv4 prefixes of length `len` starting at `start` (e.g. 100k /24s from
/// 100.64.0.0 cover 100.64.0.0 - 101.198.159.0). Errors if they would run past 255.255.255.255.
pub fn prefixes_v4(start: Ipv4Addr, len: u8, count: usize) -> Result<Vec<IpNet>> {
    if !(1..=32).contains(&len) {
        bail!("prefix length {len}");
    }
    let step = 1u64 << (32 - len);
    let base = u64::from(u32::from(start)) & !(step - 1);
    if base + step * count as u64 > 1 << 32 {
        bail!("{count} /{len} prefixes from {start} overflow the IPv4 space");
    }
    (0..count as u64)
        .map(|i| {
            Ok(IpNet::V4(Ipv4Net::new(
                Ipv4Addr::from((base + i * step) as u32),
                len,
            )?))
        })
        .collect()
}

/// `count` consecutive IPv6 prefixes of length `len` starting at `start`.
pub fn prefixes_v6(start: Ipv6Addr, len: u8, count: usize) -> Result<Vec<IpNet>> {
    if !(1..=128).contains(&len) {
        bail!("prefix length {len}");
    }
    let step = 1u128 << (128 - len);
    let base = u128::from(start) & !(step - 1);
    (0..count as u128)
        .map(|i| {
            let a = base
                .checked_add(i * step)
                .ok_or_else(|| anyhow::anyhow!("prefixes overflow the IPv6 space"))?;
            Ok(IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), len)?))
        })
        .collect()
}

/// A BIRD `protocol static` named `name` holding `prefixes` as blackhole routes (one channel per
/// family present), e.g. to make BIRD originate a large table: BIRD parses and exports 100k static
/// routes within seconds, an alternative to [`Gobgp::add_routes_bulk`] when the injector may be BIRD.
pub fn bird_static_routes(name: &str, prefixes: &[IpNet]) -> String {
    let mut out = String::with_capacity(prefixes.len() * 40 + 128);
    for (suffix, v6) in [("4", false), ("6", true)] {
        let fam: Vec<&IpNet> = prefixes
            .iter()
            .filter(|p| matches!(p, IpNet::V6(_)) == v6)
            .collect();
        if fam.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "protocol static {name}{suffix} {{\n  ipv{suffix};\n"
        ));
        for p in fam {
            out.push_str(&format!("  route {p} blackhole;\n"));
        }
        out.push_str("}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_generators() {
        let p = prefixes_v4("100.64.0.0".parse().unwrap(), 24, 100_000).unwrap();
        assert_eq!(p.len(), 100_000);
        assert_eq!(p[1].to_string(), "100.64.1.0/24");
        assert_eq!(p[99_999].to_string(), "101.198.159.0/24");
        assert!(prefixes_v4("255.255.255.0".parse().unwrap(), 24, 2).is_err());
        let p = prefixes_v6("fd10::".parse().unwrap(), 64, 3).unwrap();
        assert_eq!(p[2].to_string(), "fd10:0:0:2::/64");
    }

    #[test]
    fn static_routes_config() {
        let p = vec!["10.1.0.0/24".parse().unwrap(), "fd01::/64".parse().unwrap()];
        let c = bird_static_routes("bulk", &p);
        assert_eq!(
            c,
            "protocol static bulk4 {\n  ipv4;\n  route 10.1.0.0/24 blackhole;\n}\n\
             protocol static bulk6 {\n  ipv6;\n  route fd01::/64 blackhole;\n}\n"
        );
    }
}
