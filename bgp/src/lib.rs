//! A BGP-4 speaker for calico-rs: the protocol, with no Linux and no Kubernetes in it.
//!
//! RFCs covered: 4271 (BGP-4: FSM, messages, decision process), 4760 (multiprotocol: IPv4 and IPv6
//! unicast), 6793 (4-octet AS numbers, AS4_PATH toward 2-octet peers), 2918 (route refresh), 4724
//! (graceful restart, helper and restarting speaker), 4456 (route reflection), 7606 (revised UPDATE
//! error handling), 2385 (TCP MD5 signatures), 5082 (GTSM), 1997 and 8092 (communities, large
//! communities), 4486 (Cease subcodes), 6608 (FSM error subcodes), 5492 (capabilities).
//!
//! Layout: `wire` (the codec: the only module that sees bytes), `fsm` (pure per-connection state
//! machine), `rib` (Loc-RIB and decision process, pure), `policy` (import/export rules, pure),
//! `session` (one task per peer: socket, timers, FSM), `speaker` (the owner task, a thin shell
//! around a pure core holding the routes and peers; import and export decisions are pure functions,
//! tested by replaying transcripts), `sockopt` (the setsockopt calls std lacks).

pub mod config;
pub mod fsm;
pub mod policy;
pub mod prefix_map;
pub mod rib;
mod session;
mod sockopt;
pub mod speaker;
pub mod wire;

pub use config::{ConfigError, GracefulRestartCfg, PeerCfg, SpeakerCfg};
pub use fsm::State;
pub use policy::Policy;
pub use speaker::{
    start, BestRoute, OriginAttrs, PeerStatus, RouteChange, RouteChanges, SpeakerError,
    SpeakerEvent, SpeakerHandle, SpeakerStatus,
};
pub use wire::Family;
