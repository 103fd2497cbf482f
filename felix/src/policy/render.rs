//! Rendering (pure): [`Ruleset`] -> `nft -f` script, whole or as the difference between two.
//!
//! **Full** script: `add table` + `delete table` + the whole table block. `nft -f` runs one file as
//! one netlink batch, which the kernel commits atomically, so a packet sees either the old table or
//! the new one, never an empty or half-built one (the `add` first makes the `delete` valid when the
//! table does not exist yet).
//!
//! **Incremental** script ([`render_diff`]), also one batch, in dependency order:
//! 1. new sets (declared with their elements); element deletes, then adds, for changed sets;
//! 2. new chains declared (so any rule may jump to any of them);
//! 3. changed chains flushed and refilled, new chains filled;
//! 4. dispatch-map elements removed, then added;
//! 5. removed chains flushed, then deleted (flush first: one removed chain may jump to another);
//! 6. removed sets deleted (no rule names them any more).
//!
//! A pod gaining or losing a label or an address therefore costs a few `add/delete element` lines;
//! a policy edit rewrites that policy's chain; a new pod adds its endpoint chains and map elements.
//!
//! The skeleton (base chains, map declarations, the table comment) is fixed and only written by the
//! full script. Base chains: `fwd-egress` (forward hook, priority `filter`) dispatches on `iifname`
//! to the sending workload's egress chain; `fwd-ingress` (priority `filter + 1`) dispatches on
//! `oifname` to the receiving workload's ingress chain. Two base chains instead of one is what makes
//! `accept` safe inside policy chains: `accept` ends only the current base chain, so a packet allowed
//! by the sender's egress policy still meets the receiver's ingress policy in the next one, with no
//! packet marks. Both accept `ct state established,related` first (replies and ongoing connections
//! of allowed flows; only new flows walk the policy chains) and drop `ct state invalid` from or to
//! workloads.
//!
//! `host-out` (output hook) accepts everything the node sends to its own workloads, whatever the
//! policies say: Kubernetes requires the node to reach its pods (kubelet probes). `host-in` (input
//! hook) handles packets from a workload to the node itself, as Calico's `cali-wl-to-host` does:
//! 1. `ct state established,related accept`: replies to connections the node opened (the probes'
//!    SYN-ACKs) and ongoing flows; `ct state invalid drop`;
//! 2. ICMPv6 MLD, router and neighbour solicitation and neighbour advertisement accepted, before
//!    any policy (as Calico does): without them a pod loses its IPv6 gateway
//!    (`fe80::ecee:eeff:feee:eeee`, see `crate::veth`), and with it all IPv6 connectivity;
//! 3. the workload's **egress policy**, through the same `@from-wl` map as `fwd-egress` (Calico
//!    applies egress policy to workload -> host traffic too). A denied packet gets the deny action;
//!    an allowed one is accepted by the policy chain, which ends `host-in`;
//! 4. the [`EndpointToHostAction`] ([`PolicyCfg::endpoint_to_host`]) for what is left (pods without
//!    egress policy; with Drop, everything new):
//!    - `Drop`: `iifname "cali*" drop`; step 3 is left out, since no policy verdict could change
//!      the outcome. Nothing a pod opens reaches the node: not the BGP port, health, metrics, the
//!      kubelet nor a host-networked pod behind a Service;
//!    - `Return`: `iifname "cali*" return`, which in a base chain means "apply the chain policy"
//!      (`accept`);
//!    - `Accept`: `iifname "cali*" accept`.
//!
//! **Return and Accept differ only in name here.** In iptables, Calico's Accept skips the rest of
//! the host's own `INPUT` chain, while Return goes back to it. nftables has no such verdict:
//! `accept` ends only the current base chain, and the packet still meets every other base chain on
//! the input hook (other tables such as a host firewall, iptables-nft and iptables-legacy rules),
//! any of which can still drop it. So with both values the host's own input rules decide, and a
//! packet allowed in step 3 takes the same path as one reaching step 4. The rendered rule differs
//! so that `nft list` shows which value is configured; nothing else does. Only a drop (or reject)
//! is final, whichever table it is in.
//!
//! Only local workloads (`iifname "cali*"`) are concerned: a pod on another node reaches this node
//! through an uplink, as any other host does (as in Calico). The felix `it` test binary checks all
//! of this in a kernel (`endpoint_to_host`).

use std::fmt::Write as _;

use super::error::CfgValueError;
use super::ir::{
    Chain, Dir, Elem, Match, Rule, Ruleset, SetDef, SetKind, Verdict, FROM_WL_MAP, TO_WL_MAP,
};
use super::netlink::ElemChange;
use super::PolicyCfg;

/// Comment on the base chain rule the drift probe looks for.
pub const MARKER: &str = "calico-rs policy dispatch";
/// The base chain holding [`MARKER`].
pub const FWD_EGRESS: &str = "fwd-egress";
/// Number of rules [`FWD_EGRESS`] has.
pub const FWD_EGRESS_RULES: usize = 3;

/// What a deny verdict does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DenyAction {
    /// Silently drop (Calico's default).
    #[default]
    Drop,
    /// Reject: TCP reset / ICMP administratively prohibited (fails fast for clients).
    Reject,
}

impl DenyAction {
    fn nft(self) -> &'static str {
        match self {
            DenyAction::Drop => "drop",
            DenyAction::Reject => "reject with icmpx admin-prohibited",
        }
    }
}

/// What happens to a new flow from a local workload to the node itself, once the workload's egress
/// policy has allowed it: Calico's `defaultEndpointToHostAction`. Traffic the node sends to its
/// workloads, and replies to it, is never affected (kubelet probes). See the module doc for the
/// rules each value renders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EndpointToHostAction {
    /// Drop it (Calico felix's own default when nothing configures it). Pods reach none of the
    /// node's services (BGP, health, metrics, the kubelet, host-networked pods) except as replies
    /// to connections the node opened; IPv6 neighbour discovery and MLD to the gateway still pass.
    Drop,
    /// End our chain without a verdict: the host's own input rules (other nftables tables,
    /// iptables) decide. In nftables this lets the packet through our table exactly as `Accept`
    /// does; see the module doc.
    Return,
    /// Accept it in our table (what Calico's `calico.yaml` manifest configures; our default).
    #[default]
    Accept,
}

impl EndpointToHostAction {
    /// Every value, in Calico's spelling order.
    pub const ALL: [EndpointToHostAction; 3] = [
        EndpointToHostAction::Drop,
        EndpointToHostAction::Return,
        EndpointToHostAction::Accept,
    ];

    /// Calico's spelling (`Drop`, `Return`, `Accept`).
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointToHostAction::Drop => "Drop",
            EndpointToHostAction::Return => "Return",
            EndpointToHostAction::Accept => "Accept",
        }
    }
}

impl std::fmt::Display for EndpointToHostAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EndpointToHostAction {
    type Err = CfgValueError;

    /// Calico's spellings, case-insensitive (`Drop`, `RETURN`, `accept`); nothing else.
    fn from_str(s: &str) -> Result<Self, CfgValueError> {
        EndpointToHostAction::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| CfgValueError {
                setting: "defaultEndpointToHostAction",
                value: s.to_string(),
                accepted: "Drop, Return, Accept",
            })
    }
}

/// Sanitise a comment: printable ASCII without quotes, at most 120 bytes (nft allows 128).
fn comment(s: &str) -> String {
    let mut c: String = s
        .chars()
        .map(|ch| {
            if ch == '"' || ch == '\\' || !(' '..='~').contains(&ch) {
                '_'
            } else {
                ch
            }
        })
        .collect();
    c.truncate(120);
    c
}

fn set_type(kind: SetKind) -> (&'static str, bool) {
    use super::ir::Family::*;
    match kind {
        SetKind::Addr(V4) => ("ipv4_addr", false),
        SetKind::Addr(V6) => ("ipv6_addr", false),
        SetKind::Net(V4) => ("ipv4_addr", true),
        SetKind::Net(V6) => ("ipv6_addr", true),
        SetKind::Ports => ("inet_service", true),
        SetKind::AddrPort(V4) => ("ipv4_addr . inet_service", false),
        SetKind::AddrPort(V6) => ("ipv6_addr . inet_service", false),
    }
}

fn elements<'a>(it: impl IntoIterator<Item = &'a Elem>) -> String {
    let mut s = String::new();
    for (i, e) in it.into_iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{e}");
    }
    s
}

/// One rule in nft syntax.
pub fn rule_text(cfg: &PolicyCfg, r: &Rule) -> String {
    let mut s = String::new();
    for m in &r.matches {
        match m {
            Match::AddrIn { family, dir, set } => {
                let d = if *dir == Dir::Src { "saddr" } else { "daddr" };
                let _ = write!(s, "{} {d} @{set} ", family.nft());
            }
            Match::Proto(p) => {
                let _ = write!(s, "meta l4proto {p} ");
            }
            Match::Port(p, a, b) if a == b => {
                let _ = write!(s, "{p} dport {a} ");
            }
            Match::Port(p, a, b) => {
                let _ = write!(s, "{p} dport {a}-{b} ");
            }
            Match::PortIn(p, set) => {
                let _ = write!(s, "{p} dport @{set} ");
            }
            Match::NamedPort { family, proto, set } => {
                let _ = write!(s, "{} daddr . {proto} dport @{set} ", family.nft());
            }
        }
    }
    match &r.verdict {
        Verdict::Accept => s.push_str("accept"),
        Verdict::Deny => s.push_str(cfg.deny.nft()),
        Verdict::Jump(c) => {
            let _ = write!(s, "jump {c}");
        }
    }
    if let Some(c) = &r.comment {
        let _ = write!(s, " comment \"{}\"", comment(c));
    }
    s
}

fn set_block(out: &mut String, name: &str, def: &SetDef) {
    let (ty, interval) = set_type(def.kind);
    let _ = writeln!(out, "\tset {name} {{\n\t\ttype {ty}");
    if interval {
        out.push_str("\t\tflags interval\n");
    }
    let _ = writeln!(out, "\t\tcomment \"{}\"", comment(&def.comment));
    if !def.elements.is_empty() {
        let _ = writeln!(
            out,
            "\t\telements = {{ {} }}",
            elements(def.elements.iter())
        );
    }
    out.push_str("\t}\n");
}

fn map_block(out: &mut String, name: &str, elems: &std::collections::BTreeMap<String, String>) {
    let _ = writeln!(out, "\tmap {name} {{\n\t\ttype ifname : verdict");
    if !elems.is_empty() {
        let list: Vec<String> = elems
            .iter()
            .map(|(iface, chain)| format!("\"{iface}\" : goto {chain}"))
            .collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
    }
    out.push_str("\t}\n");
}

fn chain_block(out: &mut String, cfg: &PolicyCfg, name: &str, c: &Chain) {
    let _ = writeln!(out, "\tchain {name} {{");
    if !c.comment.is_empty() {
        let _ = writeln!(out, "\t\tcomment \"{}\"", comment(&c.comment));
    }
    for r in &c.rules {
        let _ = writeln!(out, "\t\t{}", rule_text(cfg, r));
    }
    out.push_str("\t}\n");
}

/// ICMPv6 a pod must be able to send to its gateway, whatever its egress policy and the
/// [`EndpointToHostAction`]: MLD query / report / done (130-132), router solicitation (133),
/// neighbour solicitation / advertisement (135, 136). The set Calico accepts in `cali-wl-to-host`.
const POD_ICMPV6: &str = "mld-listener-query, mld-listener-report, mld-listener-done, \
                          nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert";

fn base_chains(out: &mut String, cfg: &PolicyCfg) {
    let wl = format!("\"{}*\"", cfg.iface_prefix);
    let probes = "node -> own pods always allowed (kubelet probes)";
    let _ = write!(
        out,
        "\tchain fwd-egress {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tiifname {wl} ct state invalid drop\n\
         \t\tiifname vmap @{FROM_WL_MAP} comment \"{MARKER}\"\n\
         \t}}\n\
         \tchain fwd-ingress {{\n\
         \t\ttype filter hook forward priority filter + 1; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\toifname {wl} ct state invalid drop\n\
         \t\toifname vmap @{TO_WL_MAP}\n\
         \t}}\n\
         \tchain host-in {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname {wl} ct state established,related accept comment \"replies to the node, ongoing flows\"\n\
         \t\tiifname {wl} ct state invalid drop\n\
         \t\tiifname {wl} icmpv6 type {{ {POD_ICMPV6} }} accept comment \"pod IPv6 ND and MLD to its gateway\"\n"
    );
    let action = cfg.endpoint_to_host;
    let verdict = match action {
        EndpointToHostAction::Drop => "drop",
        EndpointToHostAction::Return => "return",
        EndpointToHostAction::Accept => "accept",
    };
    if action != EndpointToHostAction::Drop {
        // With Drop the egress policy cannot change the outcome (an allowed packet is dropped
        // next), so it is only walked for the other two.
        let _ = writeln!(
            out,
            "\t\tiifname vmap @{FROM_WL_MAP} comment \"pod egress policy, pod -> node\""
        );
    }
    let _ = write!(
        out,
        "\t\tiifname {wl} {verdict} comment \"defaultEndpointToHostAction {action}\"\n\
         \t}}\n\
         \tchain host-out {{\n\
         \t\ttype filter hook output priority filter; policy accept;\n\
         \t\toifname {wl} accept comment \"{probes}\"\n\
         \t}}\n"
    );
}

/// The whole table as one atomic script (replaces whatever table of that name exists).
pub fn render_full(cfg: &PolicyCfg, rs: &Ruleset) -> String {
    let t = &cfg.table;
    let mut out = String::with_capacity(4096 + rs.element_count() * 24 + rs.rule_count() * 96);
    let _ = writeln!(
        out,
        "add table inet {t}\ndelete table inet {t}\ntable inet {t} {{"
    );
    let _ = writeln!(
        out,
        "\tcomment \"calico-rs felix: Kubernetes NetworkPolicy; managed, edits are reverted\""
    );
    for (name, def) in &rs.sets {
        set_block(&mut out, name, def);
    }
    map_block(&mut out, FROM_WL_MAP, &rs.from_wl);
    map_block(&mut out, TO_WL_MAP, &rs.to_wl);
    for (name, c) in &rs.chains {
        chain_block(&mut out, cfg, name, c);
    }
    base_chains(&mut out, cfg);
    out.push_str("}\n");
    out
}

/// Why an incremental script cannot express a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeedsFull(pub String);

/// Size of an incremental change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Sets created / deleted.
    pub sets_added: usize,
    /// See `sets_added`.
    pub sets_removed: usize,
    /// Set elements added / removed in sets that stay.
    pub elements_added: usize,
    /// See `elements_added`.
    pub elements_removed: usize,
    /// Chains created / rewritten / deleted.
    pub chains_added: usize,
    /// See `chains_added`.
    pub chains_changed: usize,
    /// See `chains_added`.
    pub chains_removed: usize,
    /// Dispatch map elements added / removed.
    pub map_added: usize,
    /// See `map_added`.
    pub map_removed: usize,
}

impl DiffStats {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == DiffStats::default()
    }
}

/// If `old` and `new` differ only in elements of plain address sets (the common case of a pod
/// changing labels or addresses), those changes; `None` otherwise.
pub fn element_changes(old: &Ruleset, new: &Ruleset) -> Option<Vec<ElemChange>> {
    if old.chains != new.chains
        || old.from_wl != new.from_wl
        || old.to_wl != new.to_wl
        || old.sets.len() != new.sets.len()
    {
        return None;
    }
    let mut out = Vec::new();
    for ((n1, a), (n2, b)) in old.sets.iter().zip(&new.sets) {
        if n1 != n2 || a.kind != b.kind || a.comment != b.comment {
            return None;
        }
        if a.elements == b.elements {
            continue;
        }
        if !matches!(a.kind, SetKind::Addr(_) | SetKind::AddrPort(_)) {
            return None;
        }
        out.push(ElemChange {
            set: n1.clone(),
            del: a.elements.difference(&b.elements).cloned().collect(),
            add: b.elements.difference(&a.elements).cloned().collect(),
        });
    }
    Some(out)
}

/// The script turning `old` (what the kernel has) into `new`, or `Ok(None)` when they are equal.
pub fn render_diff(
    cfg: &PolicyCfg,
    old: &Ruleset,
    new: &Ruleset,
) -> Result<Option<(String, DiffStats)>, NeedsFull> {
    let mut d = Diff {
        t: &cfg.table,
        out: String::new(),
        st: DiffStats::default(),
    };
    // The steps of the module docs, in that order.
    d.sets(old, new)?;
    d.declare_chains(old, new)?;
    d.fill_chains(cfg, old, new);
    d.dispatch_maps(old, new);
    d.removed_chains(old, new);
    d.removed_sets(old, new);
    if d.st.is_empty() {
        Ok(None)
    } else {
        Ok(Some((d.out, d.st)))
    }
}

/// An incremental script being written for table `t`, with its counts.
struct Diff<'a> {
    t: &'a str,
    out: String,
    st: DiffStats,
}

impl Diff<'_> {
    /// Step 1: new sets with their elements; element deletes, then adds, for changed sets. A set
    /// whose type or comment changed cannot be altered in place.
    fn sets(&mut self, old: &Ruleset, new: &Ruleset) -> Result<(), NeedsFull> {
        let (t, out, st) = (self.t, &mut self.out, &mut self.st);
        for (name, def) in &new.sets {
            match old.sets.get(name) {
                None => {
                    st.sets_added += 1;
                    let (ty, interval) = set_type(def.kind);
                    let flags = if interval { " flags interval;" } else { "" };
                    let _ = writeln!(
                        out,
                        "add set inet {t} {name} {{ type {ty};{flags} comment \"{}\"; }}",
                        comment(&def.comment)
                    );
                    if !def.elements.is_empty() {
                        let _ = writeln!(
                            out,
                            "add element inet {t} {name} {{ {} }}",
                            elements(def.elements.iter())
                        );
                    }
                }
                Some(o) if o.kind != def.kind || o.comment != def.comment => {
                    return Err(NeedsFull(format!("set {name} changed type")));
                }
                Some(o) if o.elements == def.elements => {}
                Some(o) => {
                    let gone: Vec<&Elem> = o.elements.difference(&def.elements).collect();
                    let added: Vec<&Elem> = def.elements.difference(&o.elements).collect();
                    if !gone.is_empty() {
                        st.elements_removed += gone.len();
                        let _ = writeln!(
                            out,
                            "delete element inet {t} {name} {{ {} }}",
                            elements(gone)
                        );
                    }
                    if !added.is_empty() {
                        st.elements_added += added.len();
                        let _ =
                            writeln!(out, "add element inet {t} {name} {{ {} }}", elements(added));
                    }
                }
            }
        }
        Ok(())
    }

    /// Step 2: declare every new chain before any rule is written, so any rule may jump to any
    /// of them. A chain comment cannot be changed in place.
    fn declare_chains(&mut self, old: &Ruleset, new: &Ruleset) -> Result<(), NeedsFull> {
        let (t, out, st) = (self.t, &mut self.out, &mut self.st);
        for (name, c) in &new.chains {
            match old.chains.get(name) {
                None => {
                    st.chains_added += 1;
                    if c.comment.is_empty() {
                        let _ = writeln!(out, "add chain inet {t} {name}");
                    } else {
                        let _ = writeln!(
                            out,
                            "add chain inet {t} {name} {{ comment \"{}\"; }}",
                            comment(&c.comment)
                        );
                    }
                }
                Some(o) if o.comment != c.comment => {
                    return Err(NeedsFull(format!("chain {name} changed comment")));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Step 3: fill new chains; flush and refill changed ones.
    fn fill_chains(&mut self, cfg: &PolicyCfg, old: &Ruleset, new: &Ruleset) {
        let (t, out, st) = (self.t, &mut self.out, &mut self.st);
        for (name, c) in &new.chains {
            let old_c = old.chains.get(name);
            if old_c == Some(c) {
                continue;
            }
            if old_c.is_some() {
                st.chains_changed += 1;
                let _ = writeln!(out, "flush chain inet {t} {name}");
            }
            for r in &c.rules {
                let _ = writeln!(out, "add rule inet {t} {name} {}", rule_text(cfg, r));
            }
        }
    }

    /// Step 4: dispatch-map elements removed (or changed), then added.
    fn dispatch_maps(&mut self, old: &Ruleset, new: &Ruleset) {
        let (t, out, st) = (self.t, &mut self.out, &mut self.st);
        for (map, o, n) in [
            (FROM_WL_MAP, &old.from_wl, &new.from_wl),
            (TO_WL_MAP, &old.to_wl, &new.to_wl),
        ] {
            let gone: Vec<String> = o
                .iter()
                .filter(|(k, v)| n.get(*k) != Some(*v))
                .map(|(k, _)| format!("\"{k}\""))
                .collect();
            let added: Vec<String> = n
                .iter()
                .filter(|(k, v)| o.get(*k) != Some(*v))
                .map(|(k, v)| format!("\"{k}\" : goto {v}"))
                .collect();
            if !gone.is_empty() {
                st.map_removed += gone.len();
                let _ = writeln!(
                    out,
                    "delete element inet {t} {map} {{ {} }}",
                    gone.join(", ")
                );
            }
            if !added.is_empty() {
                st.map_added += added.len();
                let _ = writeln!(out, "add element inet {t} {map} {{ {} }}", added.join(", "));
            }
        }
    }

    /// Step 5: removed chains, all flushed before any is deleted (one may jump to another).
    fn removed_chains(&mut self, old: &Ruleset, new: &Ruleset) {
        let (t, out, st) = (self.t, &mut self.out, &mut self.st);
        let removed: Vec<&String> = old
            .chains
            .keys()
            .filter(|k| !new.chains.contains_key(*k))
            .collect();
        for name in &removed {
            let _ = writeln!(out, "flush chain inet {t} {name}");
        }
        for name in &removed {
            st.chains_removed += 1;
            let _ = writeln!(out, "delete chain inet {t} {name}");
        }
    }

    /// Step 6: removed sets, once no rule names them.
    fn removed_sets(&mut self, old: &Ruleset, new: &Ruleset) {
        let (t, out, st) = (self.t, &mut self.out, &mut self.st);
        for name in old.sets.keys().filter(|k| !new.sets.contains_key(*k)) {
            st.sets_removed += 1;
            let _ = writeln!(out, "delete set inet {t} {name}");
        }
    }
}
