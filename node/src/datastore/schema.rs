//! Strict field validation: every key of a document we decode must be a field of its kind.
//!
//! The Kubernetes API server rejects unknown fields under strict field validation
//! (`kubectl apply --validate=strict`); a typo must never change meaning silently (a
//! NetworkPolicy rule with `form:` instead of `from:` would otherwise allow every source). The
//! field decoders in [`super::resources`] read only the fields they act on, so this module walks
//! the whole document against a schema of the kind first:
//! - [`S::Map`]: the known keys, each with the schema of its value;
//! - [`S::Any`]: a value whose content is not ours to check (labels, status we do not read, the
//!   many Pod fields that are the runtime's business);
//! - [`S::Unsupported`]: a field of the real API that calico-rs does not act on. Parsing it and
//!   doing nothing would be a silent no-op, so it is refused with the reason.
//!
//! Field lists follow the Kubernetes 1.33 API reference and Calico v3.30's resource definitions.

use serde_yaml_ng::Value;

use super::fields::{type_name, FieldError};

/// The shape of a value.
pub enum S {
    /// Anything.
    Any,
    /// A map with these keys (others are unknown).
    Map(&'static [(&'static str, &'static S)]),
    /// A list whose items have this shape.
    List(&'static S),
    /// A real field that calico-rs does not implement; the text says what to do instead.
    Unsupported(&'static str),
}

/// Where a document comes from, which decides what an unknown field means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fields {
    /// Written by a user (the file datastore): an unknown field is an error.
    Strict,
    /// Served by the Kubernetes API server, which has validated it against its schema already and
    /// may add fields of a newer API version: unknown fields are ignored, but a real field that
    /// calico-rs does not act on is still refused.
    Served,
}

/// Checks `value` against `schema`; the first unknown or unsupported field is the error.
pub fn check(value: &Value, schema: &S, fields: Fields) -> Result<(), FieldError> {
    walk(value, schema, "", fields)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(value: &Value, schema: &S, path: &str, fields_mode: Fields) -> Result<(), FieldError> {
    match (schema, value) {
        (_, Value::Null) | (S::Any, _) => Ok(()),
        (S::Unsupported(why), _) => Err(FieldError {
            field: path.to_string(),
            message: format!("not supported by calico-rs: {why}"),
        }),
        (S::Map(fields), Value::Mapping(map)) => {
            for (k, v) in map {
                let Some(k) = k.as_str() else {
                    return Err(FieldError {
                        field: path.to_string(),
                        message: format!("keys must be strings, got {}", type_name(k)),
                    });
                };
                match fields.iter().find(|(name, _)| *name == k) {
                    Some((_, s)) => walk(v, s, &join(path, k), fields_mode)?,
                    None if fields_mode == Fields::Served => {}
                    None => {
                        let mut message = format!("unknown field {k:?}");
                        if let Some(close) = closest(k, fields) {
                            message += &format!(" (did you mean {close:?}?)");
                        }
                        return Err(FieldError {
                            field: join(path, k),
                            message,
                        });
                    }
                }
            }
            Ok(())
        }
        (S::List(item), Value::Sequence(items)) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, item, &format!("{path}[{i}]"), fields_mode)?;
            }
            Ok(())
        }
        // Wrong types are the field decoders' to report, with the expected type.
        _ => Ok(()),
    }
}

/// A known key one or two edits away (`form` -> `from`), for the message.
fn closest(key: &str, fields: &[(&'static str, &'static S)]) -> Option<&'static str> {
    fields
        .iter()
        .map(|(f, _)| (*f, edit_distance(key, f)))
        .filter(|(_, d)| *d <= 2)
        .min_by_key(|(_, d)| *d)
        .map(|(f, _)| f)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

use S::{Any, Unsupported};

/// `map!["key" => schema, ...]`: a [`S::Map`].
macro_rules! map {
    ($($k:literal => $v:expr),* $(,)?) => { S::Map(&[$(($k, &$v)),*]) };
}

const ENCAP: &str = "IPIP and VXLAN encapsulation are not implemented yet; use mode Never";

pub static OBJECT_META: S = map![
    "name" => Any, "generateName" => Any, "namespace" => Any, "selfLink" => Any, "uid" => Any,
    "resourceVersion" => Any, "generation" => Any, "creationTimestamp" => Any,
    "deletionTimestamp" => Any, "deletionGracePeriodSeconds" => Any, "labels" => Any,
    "annotations" => Any, "ownerReferences" => Any, "finalizers" => Any, "managedFields" => Any,
];

static CONTAINER_PORT: S = map![
    "name" => Any, "hostPort" => Any, "containerPort" => Any, "protocol" => Any, "hostIP" => Any,
];

static CONTAINER: S = map![
    "name" => Any, "image" => Any, "command" => Any, "args" => Any, "workingDir" => Any,
    "ports" => S::List(&CONTAINER_PORT), "envFrom" => Any, "env" => Any, "resources" => Any,
    "resizePolicy" => Any, "restartPolicy" => Any, "restartPolicyRules" => Any,
    "volumeMounts" => Any, "volumeDevices" => Any, "livenessProbe" => Any,
    "readinessProbe" => Any, "startupProbe" => Any, "lifecycle" => Any,
    "terminationMessagePath" => Any, "terminationMessagePolicy" => Any,
    "imagePullPolicy" => Any, "securityContext" => Any, "stdin" => Any, "stdinOnce" => Any,
    "tty" => Any,
];

static POD_SPEC: S = map![
    "volumes" => Any, "initContainers" => Any, "containers" => S::List(&CONTAINER),
    "ephemeralContainers" => Any, "restartPolicy" => Any, "terminationGracePeriodSeconds" => Any,
    "activeDeadlineSeconds" => Any, "dnsPolicy" => Any, "nodeSelector" => Any,
    "serviceAccountName" => Any, "serviceAccount" => Any,
    "automountServiceAccountToken" => Any, "nodeName" => Any, "hostNetwork" => Any,
    "hostPID" => Any, "hostIPC" => Any, "shareProcessNamespace" => Any,
    "securityContext" => Any, "imagePullSecrets" => Any, "hostname" => Any, "subdomain" => Any,
    "affinity" => Any, "schedulerName" => Any, "tolerations" => Any, "hostAliases" => Any,
    "priorityClassName" => Any, "priority" => Any, "dnsConfig" => Any, "readinessGates" => Any,
    "runtimeClassName" => Any, "enableServiceLinks" => Any, "preemptionPolicy" => Any,
    "overhead" => Any, "topologySpreadConstraints" => Any, "setHostnameAsFQDN" => Any,
    "os" => Any, "hostUsers" => Any, "schedulingGates" => Any, "resourceClaims" => Any,
    "resources" => Any,
];

static POD_IP: S = map!["ip" => Any];

static POD_STATUS: S = map![
    "phase" => Any, "conditions" => Any, "message" => Any, "reason" => Any,
    "nominatedNodeName" => Any, "hostIP" => Any, "hostIPs" => Any, "podIP" => Any,
    "podIPs" => S::List(&POD_IP), "startTime" => Any, "initContainerStatuses" => Any,
    "containerStatuses" => Any, "qosClass" => Any, "ephemeralContainerStatuses" => Any,
    "resize" => Any, "resourceClaimStatuses" => Any, "observedGeneration" => Any,
];

/// Core `v1` Pod.
pub static POD: S = map![
    "apiVersion" => Any, "kind" => Any, "metadata" => OBJECT_META, "spec" => POD_SPEC,
    "status" => POD_STATUS,
];

/// Core `v1` Namespace.
pub static NAMESPACE: S = map![
    "apiVersion" => Any, "kind" => Any, "metadata" => OBJECT_META,
    "spec" => map!["finalizers" => Any], "status" => Any,
];

static NODE_ADDRESS: S = map!["type" => Any, "address" => Any];

/// Core `v1` Node.
pub static NODE_V1: S = map![
    "apiVersion" => Any, "kind" => Any, "metadata" => OBJECT_META,
    "spec" => map![
        "podCIDR" => Any, "podCIDRs" => Any, "providerID" => Any, "unschedulable" => Any,
        "taints" => Any, "configSource" => Any, "externalID" => Any,
    ],
    "status" => map![
        "capacity" => Any, "allocatable" => Any, "phase" => Any, "conditions" => Any,
        "addresses" => S::List(&NODE_ADDRESS), "daemonEndpoints" => Any, "nodeInfo" => Any,
        "images" => Any, "volumesInUse" => Any, "volumesAttached" => Any, "config" => Any,
        "runtimeHandlers" => Any, "features" => Any, "declaredFeatures" => Any,
    ],
];

/// `projectcalico.org/v3` Node.
pub static NODE_V3: S = map![
    "apiVersion" => Any, "kind" => Any, "metadata" => OBJECT_META,
    "spec" => map![
        "bgp" => map![
            "ipv4Address" => Any, "ipv6Address" => Any, "asNumber" => Any,
            "routeReflectorClusterID" => Any, "ipv4IPIPTunnelAddr" => Unsupported(ENCAP),
        ],
        "ipv4VXLANTunnelAddr" => Unsupported(ENCAP), "vxlanTunnelMACAddr" => Unsupported(ENCAP),
        "ipv6VXLANTunnelAddr" => Unsupported(ENCAP),
        "vxlanTunnelMACAddrV6" => Unsupported(ENCAP), "orchRefs" => Any, "addresses" => Any,
        "wireguard" => Unsupported("WireGuard is not implemented"),
    ],
    "status" => Any,
];

static LABEL_SELECTOR: S = map![
    "matchLabels" => Any,
    "matchExpressions" => S::List(&map!["key" => Any, "operator" => Any, "values" => Any]),
];

static NP_PEER: S = map![
    "podSelector" => LABEL_SELECTOR, "namespaceSelector" => LABEL_SELECTOR,
    "ipBlock" => map!["cidr" => Any, "except" => Any],
];

static NP_PORT: S = map!["protocol" => Any, "port" => Any, "endPort" => Any];

/// `networking.k8s.io/v1` NetworkPolicy.
pub static NETWORK_POLICY: S = map![
    "apiVersion" => Any, "kind" => Any, "metadata" => OBJECT_META,
    "spec" => map![
        "podSelector" => LABEL_SELECTOR, "policyTypes" => Any,
        "ingress" => S::List(&map!["from" => S::List(&NP_PEER), "ports" => S::List(&NP_PORT)]),
        "egress" => S::List(&map!["to" => S::List(&NP_PEER), "ports" => S::List(&NP_PORT)]),
    ],
    "status" => Any,
];

/// `projectcalico.org/v3` BGPConfiguration.
pub static BGP_CONFIGURATION: S = map![
    "apiVersion" => Any, "kind" => Any, "metadata" => OBJECT_META,
    "spec" => map![
        "asNumber" => Any, "nodeToNodeMeshEnabled" => Any, "listenPort" => Any,
        "logSeverityScreen" => Any,
        "serviceClusterIPs" => Unsupported("service address advertisement is not implemented"),
        "serviceExternalIPs" => Unsupported("service address advertisement is not implemented"),
        "serviceLoadBalancerIPs" =>
            Unsupported("service address advertisement is not implemented"),
        "nodeMeshPassword" => Unsupported("mesh passwords are not implemented"),
        "nodeMeshMaxRestartTime" =>
            Unsupported("the graceful restart time is fixed at 120 s"),
        "communities" => Unsupported("community advertisement is not implemented"),
        "prefixAdvertisements" => Unsupported("community advertisement is not implemented"),
        "bindMode" => Unsupported("the speaker listens on every address"),
        "ignoredInterfaces" => Unsupported("interface filtering is not implemented"),
        "localWorkloadPeeringIPV4" => Unsupported("local workload peering is not implemented"),
        "localWorkloadPeeringIPV6" => Unsupported("local workload peering is not implemented"),
        "programClusterRoutes" => Unsupported("cluster routes are always programmed"),
    ],
];

/// `projectcalico.org/v3` BGPPeer.
pub static BGP_PEER: S = map![
    "apiVersion" => Any, "kind" => Any, "metadata" => OBJECT_META,
    "spec" => map![
        "node" => Any, "peerIP" => Any, "asNumber" => Any, "nodeSelector" => Any,
        "peerSelector" => Any, "keepOriginalNextHop" => Any, "password" => Any,
        "sourceAddress" => Any, "ttlSecurity" => Any,
        "maxRestartTime" => Unsupported("the graceful restart time is fixed at 120 s"),
        "keepaliveTime" => Unsupported("keepalives follow the hold time (a third of it)"),
        "failureDetectionMode" => Unsupported("BFD is not implemented"),
        "restartMode" => Unsupported("graceful restart is always on"),
        "birdGatewayMode" => Unsupported("next hops are always recursive"),
        "numAllowedLocalASNumbers" => Unsupported("AS path loops are always refused"),
        "filters" => Unsupported("BGPFilter is not implemented"),
        "reachableBy" => Unsupported("reachableBy is not implemented"),
        "localWorkloadSelector" => Unsupported("local workload peering is not implemented"),
        "nextHopMode" => Unsupported("next hop modes are not implemented"),
        "localASNumber" => Unsupported("a per-peer local AS is not implemented"),
    ],
];

/// `projectcalico.org/v3` IPPool.
pub static IP_POOL: S = map![
    "apiVersion" => Any, "kind" => Any, "metadata" => OBJECT_META,
    "spec" => map![
        "cidr" => Any, "blockSize" => Any, "nodeSelector" => Any, "disabled" => Any,
        "ipipMode" => Any, "vxlanMode" => Any, "natOutgoing" => Any, "disableBGPExport" => Any,
        "allowedUses" => Any, "assignmentMode" => Any,
        "ipip" => Unsupported("deprecated v1 field; use ipipMode"),
        "nat-outgoing" => Unsupported("deprecated v1 field; use natOutgoing"),
    ],
];

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str, schema: &S) -> Result<(), FieldError> {
        check(
            &serde_yaml_ng::from_str(yaml).unwrap(),
            schema,
            Fields::Strict,
        )
    }

    #[test]
    fn a_typo_is_named_with_a_suggestion() {
        let e = run(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\n\
             spec:\n  podSelector: {}\n  ingress:\n  - form:\n    - podSelector: {}\n",
            &NETWORK_POLICY,
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.ingress[0].form");
        assert_eq!(e.message, "unknown field \"form\" (did you mean \"from\"?)");
    }

    #[test]
    fn unsupported_fields_say_why_and_known_ones_pass() {
        let e = run(
            "spec: {peerIP: 10.0.0.1, asNumber: 1, maxRestartTime: 10s}\n",
            &BGP_PEER,
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.maxRestartTime");
        assert!(e.message.starts_with("not supported by calico-rs"), "{e:?}");
        run(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, uid: x, labels: {anything: goes}}\n\
             spec:\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox\n\
             \x20   ports: [{containerPort: 80, hostIP: 1.2.3.4}]\n\
             status: {podIPs: [{ip: 10.0.0.1}], qosClass: BestEffort}\n",
            &POD,
        )
        .unwrap();
        let e = run(
            "spec: {containers: [{ports: [{contanerPort: 80}]}]}\n",
            &POD,
        )
        .unwrap_err();
        assert_eq!(e.field, "spec.containers[0].ports[0].contanerPort");
    }
}
