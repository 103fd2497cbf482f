//! Replay tests of the speaker core: transcripts of inputs and the outputs they must cause.
//!
//! Each `*.txt` file here is a transcript. Lines starting with two spaces are expected outputs; `#`
//! lines are comments and blank lines separate steps (both kept as written); every other line is
//! one input, or several joined by ` ; ` (delivered in one burst: the export pass runs once, after
//! the last). The runner feeds the inputs into a [`SpeakerCore`] with no sockets and a clock it
//! moves itself, writes the outputs under each input line, and compares the result with the
//! file. `BGP_REPLAY_BLESS=1 cargo test -p bgp replay` rewrites the files with what the core does
//! now; review the diff against the RFCs before committing it.
//!
//! Inputs:
//! ```text
//! speaker {local_as: 65000, router_id: 10.0.0.1, ...}   SpeakerCfg as YAML; first
//! peer add {address: 10.0.0.2, remote_as: 65001, ...}   PeerCfg as YAML (API)
//! peer update {...} | peer remove ADDR                  (API)
//! originate P[,P] [attrs] | withdraw P[,P]              (API)
//! request-refresh ADDR                                  (API)
//! ADDR up [id=A] [local=A] [families=v4,v6] [gr=SECS[:v4,v6|:none]] [gr-notify] [as2]
//!                                   OpenConfirm -> Established, then Established
//! ADDR update [withdraw=P,..] [nlri=P,..] [attrs] [malformed=withdraw:CODE|discard:CODE]
//! ADDR eor v4|v6 | ADDR refresh v4|v6 | ADDR connect-failed TEXT
//! ADDR down lost|stopped|sent C/S|received C/S   Down, then Established -> Idle
//! ADDR state FROM TO
//! wait SECS                                      advance the clock, fire timers
//! status | routes                                peer counters | the Loc-RIB's best routes
//! ```
//! Outputs: `-> ADDR start|stop|announce|withdraw|end-of-rib|route-refresh|notification ...`
//! (what the peer's session is told), `route P ...|gone` (best-route changes), `event ...` (peer
//! state events), `error: ...` (a refused API call). Attributes: see [`text`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;

use super::api::{BestRoute, OriginAttrs, SpeakerEvent};
use super::core::{Input, Now, Output, SpeakerCore};
use crate::config::{PeerCfg, SpeakerCfg};
use crate::fsm::{DownReason, Negotiated, State};
use crate::rib::SourceId;
use crate::session::{FromSession, ToPeer};
use crate::wire::{AttrError, GracefulRestartCap, MpReach, MpUnreach, Notification, PathAttrs};
use crate::wire::{Treatment, Update};

mod text;

struct Replay {
    core: Option<(SpeakerCore, SpeakerCfg)>,
    start: Instant,
    elapsed: Duration,
    names: HashMap<SourceId, IpAddr>,
    epochs: HashMap<IpAddr, u64>,
    out: Vec<String>,
}

/// Run a transcript's inputs and return the transcript as the core answers it.
fn transcript(script: &str) -> String {
    let mut r = Replay {
        core: None,
        start: Instant::now(),
        elapsed: Duration::ZERO,
        names: HashMap::new(),
        epochs: HashMap::new(),
        out: Vec::new(),
    };
    for (n, line) in script.lines().enumerate() {
        if line.starts_with("  ") {
            continue;
        }
        r.out.push(line.to_string());
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Err(e) = r.line(line) {
            panic!("line {}: {line}: {e:#}", n + 1);
        }
    }
    let mut s = r.out.join("\n");
    s.push('\n');
    s
}

impl Replay {
    fn now(&self) -> Now {
        Now {
            mono: self.start + self.elapsed,
            wall: UNIX_EPOCH + Duration::from_secs(1_700_000_000) + self.elapsed,
        }
    }

    fn core(&mut self) -> Result<&mut SpeakerCore> {
        self.core
            .as_mut()
            .map(|(c, _)| c)
            .ok_or_else(|| anyhow!("no `speaker` line yet"))
    }

    fn line(&mut self, line: &str) -> Result<()> {
        for part in line.split(" ; ") {
            for input in self.inputs(part.trim())? {
                self.feed(input)?;
            }
        }
        if self.core.is_some() {
            self.feed(Input::Flush {
                route_changes: true,
            })?;
        }
        Ok(())
    }

    fn feed(&mut self, input: Input) -> Result<()> {
        let now = self.now();
        match self.core()?.handle(input, now) {
            Ok(outputs) => outputs.into_iter().for_each(|o| self.print(o)),
            Err(e) => self.out.push(format!("  error: {e}")),
        }
        Ok(())
    }

    /// The inputs one command stands for (queries print and return none).
    fn inputs(&mut self, cmd: &str) -> Result<Vec<Input>> {
        let (verb, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
        let words: Vec<&str> = rest.split_whitespace().collect();
        Ok(match verb {
            "speaker" => {
                let cfg: SpeakerCfg = serde_yaml_ng::from_str(rest)?;
                self.core = Some((SpeakerCore::new(cfg.clone()), cfg));
                vec![]
            }
            "peer" => {
                let (what, arg) = rest.split_once(' ').unwrap_or((rest, ""));
                match what {
                    "add" => vec![Input::AddPeer(serde_yaml_ng::from_str(arg)?)],
                    "update" => vec![Input::UpdatePeer(serde_yaml_ng::from_str(arg)?)],
                    "remove" => vec![Input::RemovePeer(arg.trim().parse()?)],
                    _ => bail!("peer add|update|remove"),
                }
            }
            "originate" => vec![originate(&words)?],
            "withdraw" => vec![Input::Withdraw(text::prefixes(rest.trim())?)],
            "request-refresh" => vec![Input::RequestRefresh(rest.trim().parse()?)],
            "wait" => {
                let secs: u64 = rest.trim().trim_end_matches('s').parse()?;
                self.elapsed += Duration::from_secs(secs);
                vec![Input::Tick]
            }
            "status" => {
                self.status()?;
                vec![]
            }
            "routes" => {
                let mut routes = self.core()?.routes();
                routes.sort_by_key(|r| r.prefix);
                for b in routes {
                    self.out.push(format!("  best {}", route_text(&b)));
                }
                vec![]
            }
            addr => {
                let addr: IpAddr = addr
                    .parse()
                    .with_context(|| format!("unknown input {verb:?}"))?;
                self.session_inputs(addr, &words)?
            }
        })
    }

    fn session_inputs(&mut self, addr: IpAddr, words: &[&str]) -> Result<Vec<Input>> {
        let (id, cfg) = self
            .core()?
            .peer(addr)
            .map(|(id, c)| (id, c.clone()))
            .ok_or_else(|| anyhow!("no peer {addr}"))?;
        let arg = words.get(1).copied().unwrap_or("");
        let m = match words.first().copied().unwrap_or("") {
            "up" => return self.up(id, &cfg, &words[1..]),
            "down" => {
                let reason = down_reason(&words[1..])?;
                return Ok(vec![
                    Input::Session(id, FromSession::Down { reason }),
                    Input::Session(id, state(State::Established, State::Idle)),
                ]);
            }
            "state" => state(parse_state(arg)?, parse_state(words.get(2).unwrap_or(&""))?),
            "update" => FromSession::Update(update(&words[1..])?),
            "eor" => FromSession::Update(Update::end_of_rib(text::family(arg)?)),
            "refresh" => FromSession::RouteRefresh(text::family(arg)?),
            "connect-failed" => FromSession::ConnectFailed(words[1..].join(" ")),
            w => bail!("unknown session event {w:?}"),
        };
        Ok(vec![Input::Session(id, m)])
    }

    /// The session reached Established: its state change, then the negotiated capabilities.
    fn up(&mut self, id: SourceId, cfg: &PeerCfg, words: &[&str]) -> Result<Vec<Input>> {
        let speaker = &self.core.as_ref().ok_or_else(|| anyhow!("no speaker"))?.1;
        let mut n = Negotiated {
            peer_as: cfg.remote_as,
            peer_id: match cfg.address {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            },
            hold_time: 90,
            keepalive: 30,
            four_octet_as: true,
            route_refresh: true,
            families: cfg.families.clone(),
            peer_gr: None,
            local_gr: speaker.graceful_restart.is_some(),
            local_gr_notification: false,
            ebgp: cfg.remote_as != speaker.local_as,
        };
        let mut local = IpAddr::V4(speaker.router_id);
        let mut gr: Option<(u16, Option<&str>)> = None;
        let mut gr_notify = false;
        for w in words {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            match k {
                "id" => n.peer_id = v.parse()?,
                "local" => local = v.parse()?,
                "families" => n.families = text::families(v)?,
                "gr" => {
                    let (t, f) = v.split_once(':').map_or((v, None), |(t, f)| (t, Some(f)));
                    gr = Some((t.parse()?, f));
                }
                "gr-notify" => gr_notify = true,
                "as2" => n.four_octet_as = false,
                _ => bail!("up: unknown word {w:?}"),
            }
        }
        if let Some((restart_time, fams)) = gr {
            let fams = match fams {
                None => n.families.clone(),
                Some("none") => vec![],
                Some(f) => text::families(f)?,
            };
            n.peer_gr = Some(GracefulRestartCap {
                restarting: false,
                notification: gr_notify,
                restart_time,
                families: fams.into_iter().map(|f| (f, true)).collect(),
            });
        }
        let epoch = self.epochs.entry(cfg.address).or_default();
        *epoch += 1;
        let established = FromSession::Established {
            epoch: *epoch,
            negotiated: n,
            local: SocketAddr::new(local, 179),
        };
        Ok(vec![
            Input::Session(id, state(State::OpenConfirm, State::Established)),
            Input::Session(id, established),
        ])
    }

    fn status(&mut self) -> Result<()> {
        let s = self.core()?.status();
        for p in s.peers {
            let mut l = format!(
                "  peer {} {} received={} accepted={} advertised={}",
                p.address, p.state, p.prefixes_received, p.prefixes_accepted, p.prefixes_advertised
            );
            if p.gr_stale {
                l.push_str(" stale");
            }
            if p.end_of_rib {
                l.push_str(" eor");
            }
            if let Some(e) = p.last_error {
                l.push_str(&format!(" error={e:?}"));
            }
            self.out.push(l);
        }
        self.out.push(format!("  loc-rib {}", s.loc_rib_prefixes));
        Ok(())
    }

    fn print(&mut self, o: Output) {
        let name = |r: &Replay, id: SourceId| {
            r.names
                .get(&id)
                .map_or_else(|| format!("peer#{id}"), |a| a.to_string())
        };
        let line = match o {
            Output::Start { id, cfg, .. } => {
                self.names.insert(id, cfg.address);
                format!("-> {} start", cfg.address)
            }
            Output::Stop { id, notification } => {
                format!(
                    "-> {} stop {}",
                    name(self, id),
                    notification_text(&notification)
                )
            }
            Output::Send(id, m) => {
                let addr = name(self, id);
                let current = self.epochs.get(&self.names[&id]).copied().unwrap_or(0);
                let (text, epoch) = peer_msg_text(m);
                match epoch.filter(|e| *e != current) {
                    Some(e) => format!("-> {addr} {text} (old epoch {e})"),
                    None => format!("-> {addr} {text}"),
                }
            }
            Output::Routes(mut list) => {
                list.sort_by_key(|c| c.prefix);
                for c in list {
                    self.out.push(match c.best {
                        Some(b) => format!("  route {}", route_text(&b)),
                        None => format!("  route {} gone", c.prefix),
                    });
                }
                return;
            }
            Output::Event(SpeakerEvent::PeerState {
                address,
                from,
                to,
                reason,
            }) => match reason {
                Some(r) => format!("event {address} {from} -> {to} ({r})"),
                None => format!("event {address} {from} -> {to}"),
            },
        };
        self.out.push(format!("  {line}"));
    }
}

fn state(from: State, to: State) -> FromSession {
    FromSession::State { from, to }
}

fn parse_state(s: &str) -> Result<State> {
    use State::*;
    [Idle, Connect, Active, OpenSent, OpenConfirm, Established]
        .into_iter()
        .find(|st| st.to_string() == s)
        .ok_or_else(|| anyhow!("state {s:?}"))
}

fn notification(s: &str) -> Result<Notification> {
    let (c, sc) = s
        .split_once('/')
        .ok_or_else(|| anyhow!("NOTIFICATION {s:?}: CODE/SUBCODE"))?;
    Ok(Notification::new(c.parse()?, sc.parse()?))
}

fn down_reason(words: &[&str]) -> Result<DownReason> {
    let arg = words.get(1).copied().unwrap_or("");
    Ok(match words.first().copied().unwrap_or("") {
        "lost" => DownReason::ConnectionLost,
        "stopped" => DownReason::Stopped,
        "sent" => DownReason::NotificationSent(notification(arg)?),
        "received" => DownReason::NotificationReceived(notification(arg)?),
        w => bail!("down: lost|stopped|sent C/S|received C/S, not {w:?}"),
    })
}

fn originate(words: &[&str]) -> Result<Input> {
    let prefixes = text::prefixes(words.first().copied().unwrap_or(""))?;
    let mut a = PathAttrs::default();
    let mut hops = Vec::new();
    for w in &words[1..] {
        let (k, v) = w.split_once('=').unwrap_or((w, ""));
        if !text::attr(&mut a, &mut hops, k, v)? {
            bail!("originate: unknown word {w:?}");
        }
    }
    let o = OriginAttrs {
        origin: a.origin.unwrap_or_default(),
        med: a.med,
        local_pref: a.local_pref,
        communities: a.communities,
        large_communities: a.large_communities,
        next_hop: hops.first().copied(),
    };
    Ok(Input::Originate(
        prefixes.into_iter().map(|p| (p, o.clone())).collect(),
    ))
}

fn update(words: &[&str]) -> Result<Update> {
    let mut a = PathAttrs::default();
    let mut hops = Vec::new();
    let (mut nlri, mut withdrawn, mut errors) = (vec![], vec![], vec![]);
    for w in words {
        let (k, v) = w.split_once('=').unwrap_or((w, ""));
        match k {
            "nlri" => nlri = text::prefixes(v)?,
            "withdraw" => withdrawn = text::prefixes(v)?,
            "malformed" => {
                let (t, code) = v
                    .split_once(':')
                    .ok_or_else(|| anyhow!("malformed={v:?}"))?;
                let treatment = match t {
                    "withdraw" => Treatment::TreatAsWithdraw,
                    "discard" => Treatment::AttributeDiscard,
                    _ => bail!("malformed=withdraw:CODE|discard:CODE"),
                };
                let reason = "malformed in replay".into();
                errors.push(AttrError {
                    code: code.parse()?,
                    treatment,
                    reason,
                });
            }
            _ if text::attr(&mut a, &mut hops, k, v)? => {}
            _ => bail!("update: unknown word {w:?}"),
        }
    }
    if !nlri.is_empty() && a.origin.is_none() {
        a.origin = Some(Default::default());
    }
    a.next_hop = hops.iter().find_map(|h| match h {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) = nlri.into_iter().partition(|p| p.addr().is_ipv4());
    let (w4, w6): (Vec<IpNet>, Vec<IpNet>) =
        withdrawn.into_iter().partition(|p| p.addr().is_ipv4());
    let v4only = |v: Vec<IpNet>| -> Vec<ipnet::Ipv4Net> {
        v.into_iter()
            .filter_map(|p| match p {
                IpNet::V4(n) => Some(n),
                IpNet::V6(_) => None,
            })
            .collect()
    };
    Ok(Update {
        withdrawn: v4only(w4),
        attrs: a,
        nlri: v4only(v4),
        mp_reach: (!v6.is_empty()).then(|| MpReach {
            family: crate::wire::Family::Ipv6Unicast,
            next_hops: hops.iter().copied().filter(IpAddr::is_ipv6).collect(),
            nlri: v6,
        }),
        mp_unreach: (!w6.is_empty()).then_some(MpUnreach {
            family: crate::wire::Family::Ipv6Unicast,
            withdrawn: w6,
        }),
        errors,
    })
}

fn notification_text(n: &Notification) -> String {
    let mut s = format!("{}/{} \"{n}\"", n.code, n.subcode);
    if !n.data.is_empty() {
        let hex: String = n.data.iter().map(|b| format!("{b:02x}")).collect();
        s.push_str(&format!(" data={hex}"));
    }
    s
}

/// A routing message's words, and the epoch it is for.
fn peer_msg_text(m: ToPeer) -> (String, Option<u64>) {
    match m {
        ToPeer::Announce {
            epoch,
            attrs,
            prefixes,
        } => (
            format!(
                "announce {} {}",
                text::prefix_list(&prefixes),
                text::attrs_text(&attrs)
            ),
            Some(epoch),
        ),
        ToPeer::Withdraw {
            epoch,
            mut prefixes,
        } => {
            prefixes.sort_unstable();
            (
                format!("withdraw {}", text::prefix_list(&prefixes)),
                Some(epoch),
            )
        }
        ToPeer::EndOfRib { epoch, family } => (
            format!("end-of-rib {}", text::family_name(family)),
            Some(epoch),
        ),
        ToPeer::RequestRefresh(f) => (format!("route-refresh {}", text::family_name(f)), None),
        ToPeer::Notify(n) => (format!("notification {}", notification_text(&n)), None),
    }
}

fn route_text(b: &BestRoute) -> String {
    let hops: Vec<String> = b.next_hops.iter().map(|h| h.to_string()).collect();
    let from = b
        .peer
        .map_or_else(|| "local".to_string(), |p| p.to_string());
    let path: Vec<String> = b.as_path.iter().map(|a| a.to_string()).collect();
    let mut s = format!(
        "{} via {} from {from} path={}",
        b.prefix,
        hops.join(","),
        path.join(",")
    );
    if let Some(l) = b.local_pref {
        s.push_str(&format!(" lp={l}"));
    }
    if let Some(m) = b.med {
        s.push_str(&format!(" med={m}"));
    }
    if !b.communities.is_empty() {
        let c: Vec<String> = b
            .communities
            .iter()
            .map(|c| text::community_text(*c))
            .collect();
        s.push_str(&format!(" comm={}", c.join(",")));
    }
    if b.stale {
        s.push_str(" stale");
    }
    s
}

/// A line diff of `want` against `got`: `-` lines only in the file, `+` lines only in the replay,
/// with two lines of context and the file's line numbers.
fn diff(want: &str, got: &str) -> String {
    let a: Vec<&str> = want.lines().collect();
    let b: Vec<&str> = got.lines().collect();
    // Longest common subsequence table, from the end.
    let mut l = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            l[i][j] = if a[i] == b[j] {
                l[i + 1][j + 1] + 1
            } else {
                l[i + 1][j].max(l[i][j + 1])
            };
        }
    }
    // (line number in the file, mark, text)
    let mut ops: Vec<(usize, char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((i + 1, ' ', a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || l[i + 1][j] >= l[i][j + 1]) {
            ops.push((i + 1, '-', a[i]));
            i += 1;
        } else {
            ops.push((i + 1, '+', b[j]));
            j += 1;
        }
    }
    let near = |k: usize| {
        ops[k.saturating_sub(2)..(k + 3).min(ops.len())]
            .iter()
            .any(|o| o.1 != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, (n, mark, line)) in ops.iter().enumerate() {
        if near(k) {
            if skipped {
                out.push_str("...\n");
                skipped = false;
            }
            out.push_str(&format!("{n:4} {mark}{line}\n"));
        } else {
            skipped = true;
        }
    }
    out
}

fn dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/speaker/replay")
}

fn check(name: &str) {
    let path = dir().join(format!("{name}.txt"));
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let got = transcript(&want);
    if std::env::var_os("BGP_REPLAY_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        return;
    }
    if got != want {
        panic!(
            "replay {name}.txt differs (- file, + core now); if the change is right, rerun \
             with BGP_REPLAY_BLESS=1 and review the diff:\n{}",
            diff(&want, &got)
        );
    }
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { check(stringify!($name)) })*
        const SCENARIOS: &[&str] = &[$(stringify!($name)),*];
    };
}

scenarios!(
    ebgp_ibgp,
    reflection,
    split_horizon,
    max_prefix,
    graceful_restart,
    policy,
    malformed,
);

#[test]
fn every_transcript_is_run() {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .expect("replay dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            Some(name.strip_suffix(".txt")?.to_string())
        })
        .collect();
    files.sort();
    let mut listed: Vec<String> = SCENARIOS.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed, "list every replay/*.txt in scenarios!()");
}

#[test]
fn the_diff_shows_what_changed() {
    assert_eq!(
        diff("a\nb\nc\nd\ne\nf\n", "a\nb\nc\nd\ne\nx\n"),
        "...\n   4  d\n   5  e\n   6 -f\n   7 +x\n"
    );
}
