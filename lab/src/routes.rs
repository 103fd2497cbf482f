//! The daemon's kernel routes as the lab reads them: every route of the daemon's route protocol
//! ([`ROUTE_PROTOCOL`]) in a namespace, from `ip -j route show proto N`. The lab command judges
//! convergence by them, the tests compare them with what the datastore calls for.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use anyhow::{Context, Result};
use ipnet::IpNet;

use crate::netns;

/// Route protocol the daemon's felix marks its routes with (its default).
pub const ROUTE_PROTOCOL: u8 = felix::routes::DEFAULT_ROUTE_PROTOCOL;

/// One route of [`ROUTE_PROTOCOL`] in a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRoute {
    pub dst: IpNet,
    /// `unicast`, `blackhole`, ...
    pub kind: String,
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
}

/// Routes from `ip -j route show proto N` (host routes are printed without a prefix length;
/// ECMP routes carry `nexthops`).
pub fn parse_ip_routes(v: &serde_json::Value) -> Vec<NodeRoute> {
    let mut out = Vec::new();
    for r in v.as_array().into_iter().flatten() {
        let Some(dst) = r["dst"].as_str() else {
            continue;
        };
        let dst = if dst == "default" {
            continue;
        } else if dst.contains('/') {
            dst.parse().ok()
        } else {
            dst.parse::<IpAddr>().ok().map(IpNet::from)
        };
        let Some(dst) = dst else {
            continue;
        };
        let first_hop = &r["nexthops"][0];
        let gateway = r["gateway"]
            .as_str()
            .or_else(|| first_hop["gateway"].as_str())
            .and_then(|g| g.parse().ok());
        let dev = r["dev"]
            .as_str()
            .or_else(|| first_hop["dev"].as_str())
            .map(str::to_string);
        out.push(NodeRoute {
            dst,
            kind: r["type"].as_str().unwrap_or("unicast").to_string(),
            gateway,
            dev,
        });
    }
    out
}

/// The daemon's routes (both families) in namespace `ns`, by destination.
pub fn node_routes(ns: &str) -> Result<BTreeMap<IpNet, NodeRoute>> {
    let proto = ROUTE_PROTOCOL.to_string();
    let mut out = BTreeMap::new();
    for family in ["-4", "-6"] {
        let text = netns::ip(ns, &["-j", family, "route", "show", "proto", &proto])?;
        let v: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Array(Vec::new())
        } else {
            serde_json::from_str(&text).context("`ip -j route`: not JSON")?
        };
        out.extend(parse_ip_routes(&v).into_iter().map(|r| (r.dst, r)));
    }
    Ok(out)
}

/// The destinations of the daemon's routes in `ns`, of every kind, v4 and v6 (`/32` and `/128`
/// spelled out).
pub fn prefixes(ns: &str) -> Result<BTreeSet<String>> {
    Ok(node_routes(ns)?.keys().map(IpNet::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_json_routes() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let v = serde_json::json!([
            {"type": "blackhole", "dst": "10.244.0.0/26", "protocol": "80", "flags": []},
            {"dst": "10.244.0.64/26", "gateway": "10.200.0.12", "dev": "eth0", "protocol": "80"},
            {"dst": "10.244.0.3", "dev": "cali1234567890a", "scope": "link"},
            {"dst": "fd00:244::40/122", "nexthops": [{"gateway": "fd00:200::12", "dev": "eth0"}]},
            {"dst": "default", "gateway": "10.200.0.1"}
        ]);
        let r = parse_ip_routes(&v);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].kind, "blackhole");
        assert_eq!(r[1].gateway, Some("10.200.0.12".parse().unwrap()));
        assert_eq!(r[2].dst, net("10.244.0.3/32"));
        assert_eq!(r[2].dev.as_deref(), Some("cali1234567890a"));
        assert_eq!(r[3].gateway, Some("fd00:200::12".parse().unwrap()));
        assert_eq!(r[3].kind, "unicast");
    }
}
