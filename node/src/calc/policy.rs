//! felix's policy input: local endpoints, every pod, every namespace, every policy.

use std::collections::BTreeMap;

use felix::policy::model as pm;

use super::{CalcError, LocalPod};
use crate::datastore::ClusterState;

fn labels(l: &BTreeMap<String, String>) -> pm::Labels {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn policy_pod(p: &crate::datastore::Pod) -> pm::Pod {
    pm::Pod {
        namespace: p.namespace().to_string(),
        name: p.metadata.name.clone(),
        ips: p.pod_ips.clone(),
        labels: labels(&p.metadata.labels),
        ports: p
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .filter_map(|cp| {
                cp.name.as_ref().map(|n| pm::NamedPort {
                    name: n.clone(),
                    protocol: format!("{:?}", cp.protocol).to_uppercase(),
                    port: cp.container_port,
                })
            })
            .collect(),
    }
}

/// felix's policy input: local endpoints, every pod, every namespace, every policy.
pub(super) fn policy_input(
    state: &ClusterState,
    local: &[LocalPod],
    errors: &mut Vec<CalcError>,
) -> pm::PolicyInput {
    let pods: Vec<pm::Pod> = state
        .pods
        .values()
        .filter(|p| !p.host_network)
        .map(|p| policy_pod(p))
        .collect();
    let endpoints = local
        .iter()
        .filter_map(|lp| {
            let pod = state.pods.get(&(lp.namespace.clone(), lp.name.clone()))?;
            Some(pm::WorkloadEndpoint {
                iface: lp.iface.clone(),
                pod: policy_pod(pod),
            })
        })
        .collect();
    let namespaces = state
        .namespaces
        .values()
        .map(|n| pm::Namespace {
            name: n.metadata.name.clone(),
            labels: labels(&n.metadata.labels),
        })
        .collect();
    let mut policies = Vec::new();
    for ((ns, name), np) in &state.network_policies {
        match &np.policy {
            Ok(p) => policies.push(p.clone()),
            Err(e) => {
                // The document does not even have NetworkPolicy's shape. Fail closed: a policy
                // with the same name that selects every pod of its namespace and allows nothing.
                errors.push(CalcError::new(
                    "NetworkPolicy",
                    format!("{ns}/{name}"),
                    None,
                    e.as_str(),
                ));
                let mut deny = pm::NetworkPolicy::default();
                deny.metadata.namespace = Some(ns.clone());
                deny.metadata.name = name.clone();
                deny.spec.policy_types = Some(vec!["Ingress".into(), "Egress".into()]);
                policies.push(deny);
            }
        }
    }
    pm::PolicyInput {
        endpoints,
        pods,
        namespaces,
        policies,
    }
}
