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

/// Our result `ours` after the previous plugin's `prev` (we are not first in the chain): the
/// spec's rule for a plugin that adds an interface is to pass on everything before it and add
/// its own. Interfaces, IPs and routes are `prev`'s followed by ours, our IPs' interface
/// indices shifted past `prev`'s interfaces; DNS is ours unless ours is empty. A `prev` that is
/// not a result object, or an interface list that is not a list, is an error naming the field.
pub fn merge_prev(prev: &Value, mut ours: Value) -> Result<Value, String> {
    let prev = prev
        .as_object()
        .ok_or("prevResult: not an object (a CNI result)")?;
    let list = |key: &str| -> Result<Vec<Value>, String> {
        match prev.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => Ok(a.clone()),
            Some(_) => Err(format!("prevResult.{key}: not a list")),
        }
    };
    let (ifaces, ips, routes) = (list("interfaces")?, list("ips")?, list("routes")?);
    let shift = ifaces.len() as u64;
    let take = |v: &mut Value, key: &str| match v.get_mut(key).map(Value::take) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let mut our_ips = take(&mut ours, "ips");
    for ip in &mut our_ips {
        if let Some(i) = ip.get("interface").and_then(Value::as_u64) {
            ip["interface"] = json!(i + shift);
        }
    }
    let join = |mut a: Vec<Value>, b: Vec<Value>| {
        a.extend(b);
        Value::Array(a)
    };
    let our_ifaces = take(&mut ours, "interfaces");
    let our_routes = take(&mut ours, "routes");
    ours["interfaces"] = join(ifaces, our_ifaces);
    ours["ips"] = join(ips, our_ips);
    ours["routes"] = join(routes, our_routes);
    let empty = |d: &Value| d.as_object().is_none_or(|o| o.is_empty());
    if empty(&ours["dns"]) {
        if let Some(d) = prev.get("dns").filter(|d| !empty(d)) {
            ours["dns"] = d.clone();
        }
    }
    Ok(ours)
}

/// The VERSION answer.
pub fn version_json(cni_version: &str) -> Value {
    json!({"cniVersion": cni_version, "supportedVersions": super::config::SUPPORTED_VERSIONS})
}
