//! The ADD result in the caller's version: 0.3.x and 0.4.0 carry each IP's `version`, 1.x does
//! not; every version has interfaces (with `sandbox` for the container side), IPs with the index
//! of their interface, routes and DNS.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Value};

/// One interface of the result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub mac: String,
    pub sandbox: Option<String>,
}

/// What ADD made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddResult {
    pub interfaces: Vec<Iface>,
    /// Address and the index (into `interfaces`) of the interface that has it.
    pub ips: Vec<(IpNet, usize)>,
    /// Destination and gateway.
    pub routes: Vec<(IpNet, Option<IpAddr>)>,
    pub dns: Value,
}

impl AddResult {
    /// The result as JSON for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let old = cni_version.starts_with("0.");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = json!({"name": i.name, "mac": i.mac});
                if let Some(s) = &i.sandbox {
                    o["sandbox"] = json!(s);
                }
                o
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|(net, iface)| {
                let mut o = json!({"address": net.to_string(), "interface": iface});
                if old {
                    o["version"] = json!(if net.addr().is_ipv4() { "4" } else { "6" });
                }
                o
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|(dst, gw)| {
                let mut o = json!({"dst": dst.to_string()});
                if let Some(g) = gw {
                    o["gw"] = json!(g.to_string());
                }
                o
            })
            .collect();
        json!({
            "cniVersion": cni_version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns,
        })
    }
}

/// The VERSION answer.
pub fn version_json(cni_version: &str) -> Value {
    json!({"cniVersion": cni_version, "supportedVersions": super::config::SUPPORTED_VERSIONS})
}
