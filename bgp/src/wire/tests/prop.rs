//! Property tests without extra dependencies: a deterministic xorshift PRNG generates valid
//! messages that must survive encode -> decode unchanged, and a mutation loop (bit flips, byte
//! sets, inserts, deletes, truncation, splices, with and without a fixed-up length field) checks
//! that decoding never panics, that whatever decodes cleanly re-encodes to something that
//! decodes to the same value, and that the framing consumes exactly what the header announces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BytesMut;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio_util::codec::Decoder;

use super::*;

/// xorshift64* (Vigna): tiny, fast, good enough to drive generators.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(super) fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn host_v4(rng: &mut Rng) -> Ipv4Addr {
    // 1.0.0.0 .. 223.255.255.254: never 0.0.0.0, multicast or broadcast.
    Ipv4Addr::from(0x0100_0000 + rng.u32() % (0xdf00_0000 - 1))
}

fn host_v6(rng: &mut Rng) -> Ipv6Addr {
    let mut o: [u8; 16] = rng.bytes(16).try_into().unwrap();
    o[0] = 0x20;
    Ipv6Addr::from(o)
}

fn v4_prefix(rng: &mut Rng) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(rng.u32()), rng.below(33) as u8)
        .unwrap()
        .trunc()
}

fn v6_prefix(rng: &mut Rng) -> Ipv6Net {
    let o: [u8; 16] = rng.bytes(16).try_into().unwrap();
    Ipv6Net::new(Ipv6Addr::from(o), rng.below(129) as u8)
        .unwrap()
        .trunc()
}

fn asn(rng: &mut Rng, small: bool) -> u32 {
    loop {
        let a = if small || rng.chance(2) {
            rng.u32() % 65536
        } else {
            rng.u32()
        };
        if a != u32::from(AS_TRANS) {
            return a;
        }
    }
}

fn as_path(rng: &mut Rng, caps: &SessionCaps) -> AsPath {
    let mut segments = Vec::new();
    // Confederation segments only lead, only on iBGP (RFC 5065); on 2-octet sessions they hold
    // 2-octet ASNs (AS4_PATH never carries them, RFC 6793 4.2.2).
    if !caps.ebgp && rng.chance(4) {
        let kind = if rng.chance(2) {
            SegmentKind::ConfedSequence
        } else {
            SegmentKind::ConfedSet
        };
        let n = 1 + rng.below(4);
        segments.push(AsSegment {
            kind,
            asns: (0..n).map(|_| asn(rng, !caps.four_octet_as)).collect(),
        });
    }
    for _ in 0..rng.below(4) {
        let kind = if rng.chance(4) {
            SegmentKind::Set
        } else {
            SegmentKind::Sequence
        };
        let n = if rng.chance(20) {
            1 + rng.below(255)
        } else {
            1 + rng.below(8)
        };
        segments.push(AsSegment {
            kind,
            asns: (0..n).map(|_| asn(rng, false)).collect(),
        });
    }
    AsPath { segments }
}

fn path_attrs(rng: &mut Rng, caps: &SessionCaps, need_next_hop: bool) -> PathAttrs {
    let mut a = PathAttrs {
        origin: Some([Origin::Igp, Origin::Egp, Origin::Incomplete][rng.below(3)]),
        as_path: as_path(rng, caps),
        ..PathAttrs::default()
    };
    if need_next_hop || rng.chance(3) {
        a.next_hop = Some(host_v4(rng));
    }
    if rng.chance(2) {
        a.med = Some(rng.u32());
    }
    if !caps.ebgp && rng.chance(2) {
        a.local_pref = Some(rng.u32());
    }
    a.atomic_aggregate = rng.chance(4);
    if rng.chance(4) {
        // On 2-octet sessions an aggregator with a 2-octet AS would make the receiver ignore
        // AS4_PATH (RFC 6793 4.2.3), so use a 4-octet one there.
        let asn = if caps.four_octet_as {
            asn(rng, false)
        } else {
            65536 + rng.u32() % 1_000_000
        };
        a.aggregator = Some((asn, host_v4(rng)));
    }
    a.communities = (0..rng.below(6)).map(|_| rng.u32()).collect();
    if !caps.ebgp && rng.chance(3) {
        a.originator_id = Some(host_v4(rng));
        a.cluster_list = (0..1 + rng.below(3)).map(|_| host_v4(rng)).collect();
    }
    a.large_communities = (0..rng.below(3))
        .map(|_| (rng.u32(), rng.u32(), rng.u32()))
        .collect();
    // Unknown optional transitive attributes, unique codes the codec does not interpret,
    // ascending (the order they come back in); sometimes long enough for Extended Length.
    let mut code = 40u8;
    for _ in 0..rng.below(3) {
        code = code.saturating_add(1 + rng.below(60) as u8);
        let len = if rng.chance(5) {
            256 + rng.below(200)
        } else {
            rng.below(20)
        };
        a.unknown.push(RawAttr {
            flags: 0xe0,
            code,
            value: rng.bytes(len),
        });
    }
    a
}

pub(super) fn gen_update(rng: &mut Rng, caps: &SessionCaps) -> Update {
    let mut u = Update {
        withdrawn: (0..rng.below(5)).map(|_| v4_prefix(rng)).collect(),
        ..Update::default()
    };
    if rng.chance(3) {
        let family = if rng.chance(3) {
            Family::Ipv4Unicast
        } else {
            Family::Ipv6Unicast
        };
        let withdrawn = (0..rng.below(5))
            .map(|_| match family {
                Family::Ipv4Unicast => IpNet::V4(v4_prefix(rng)),
                Family::Ipv6Unicast => IpNet::V6(v6_prefix(rng)),
            })
            .collect();
        u.mp_unreach = Some(MpUnreach { family, withdrawn });
    }
    if rng.chance(4) {
        return u; // withdraw-only: no attributes
    }
    u.nlri = (0..rng.below(6)).map(|_| v4_prefix(rng)).collect();
    u.attrs = path_attrs(rng, caps, !u.nlri.is_empty());
    if rng.chance(2) {
        let (family, next_hops, nlri) = if rng.chance(4) {
            let nlri = (0..rng.below(5))
                .map(|_| IpNet::V4(v4_prefix(rng)))
                .collect();
            (Family::Ipv4Unicast, vec![IpAddr::V4(host_v4(rng))], nlri)
        } else {
            let mut nh = vec![IpAddr::V6(host_v6(rng))];
            if rng.chance(2) {
                nh.push(IpAddr::V6(Ipv6Addr::new(
                    0xfe80,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    rng.u32() as u16,
                )));
            }
            let nlri = (0..rng.below(5))
                .map(|_| IpNet::V6(v6_prefix(rng)))
                .collect();
            (Family::Ipv6Unicast, nh, nlri)
        };
        u.mp_reach = Some(MpReach {
            family,
            next_hops,
            nlri,
        });
    }
    u
}

fn gen_open(rng: &mut Rng) -> Open {
    let mut capabilities = Vec::new();
    for _ in 0..rng.below(12) {
        capabilities.push(match rng.below(7) {
            0 => Capability::Multiprotocol(Family::ALL[rng.below(2)]),
            1 => Capability::RouteRefresh,
            2 => Capability::EnhancedRouteRefresh,
            3 => Capability::FourOctetAs(rng.u32()),
            4 => Capability::GracefulRestart(GracefulRestartCap {
                restarting: rng.chance(2),
                notification: rng.chance(2),
                restart_time: (rng.u32() % 4096) as u16,
                families: (0..rng.below(3))
                    .map(|_| (Family::ALL[rng.below(2)], rng.chance(2)))
                    .collect(),
            }),
            5 => {
                let code = [3, 5, 6, 9, 69, 71, 73, 128, 200][rng.below(9)];
                let len = if rng.chance(10) { 255 } else { rng.below(10) };
                Capability::Unknown {
                    code,
                    value: rng.bytes(len),
                }
            }
            _ => Capability::Unknown {
                code: 1,
                value: vec![0, 25, 0, 70],
            },
        });
    }
    let hold_time = match rng.u32() as u16 {
        1 | 2 => 3,
        h => h,
    };
    Open {
        version: 4,
        my_as: rng.u32() as u16,
        hold_time,
        bgp_id: Ipv4Addr::from(rng.u32() | 1),
        capabilities,
    }
}

fn gen_message(rng: &mut Rng, caps: &SessionCaps) -> Message {
    match rng.below(10) {
        0 => Message::Keepalive,
        1 => Message::Open(gen_open(rng)),
        2 => {
            let (code, subcode, len) = (rng.u32() as u8, rng.u32() as u8, rng.below(40));
            Message::Notification(Notification::with_data(code, subcode, rng.bytes(len)))
        }
        3 => Message::RouteRefresh(RouteRefresh {
            family: Family::ALL[rng.below(2)],
        }),
        _ => Message::Update(gen_update(rng, caps)),
    }
}

const ALL_CAPS: [SessionCaps; 4] = [
    IBGP4,
    EBGP4,
    EBGP2,
    SessionCaps {
        four_octet_as: false,
        ebgp: false,
    },
];

#[test]
fn random_messages_round_trip() {
    let mut rng = Rng::new(1);
    let mut checked = 0;
    for i in 0..20_000 {
        let caps = ALL_CAPS[i % 4];
        let msg = gen_message(&mut rng, &caps);
        let mut out = BytesMut::new();
        match encode_message(&msg, &caps, &mut out) {
            Ok(()) => {}
            Err(EncodeError::TooLong { .. }) => continue,
            Err(e) => panic!("{e}: {msg:?}"),
        }
        assert!(out.len() <= MAX_MESSAGE_LEN);
        let back = decode_message(&out, &caps).unwrap_or_else(|e| panic!("{e:?}\n{msg:?}"));
        assert_eq!(back, msg, "caps {caps:?}");
        checked += 1;
    }
    assert!(checked > 19_000, "{checked}");
}

/// One random mutation of `buf`.
fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, donors: &[Vec<u8>]) {
    let len = buf.len();
    match rng.below(8) {
        0 if len > 0 => {
            let i = rng.below(len);
            buf[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            buf[i] = [0, 1, 0x7f, 0x80, 0xff, rng.next() as u8][rng.below(6)];
        }
        2 => {
            let i = rng.below(len + 1);
            buf.insert(i, rng.next() as u8);
        }
        3 if len > 0 => {
            buf.remove(rng.below(len));
        }
        4 => buf.truncate(rng.below(len + 1)),
        5 if len > 0 => {
            // Splice in a run of another message (attributes into attributes, ...).
            let d = &donors[rng.below(donors.len())];
            if d.is_empty() {
                return;
            }
            let from = rng.below(d.len());
            let n = 1 + rng.below((d.len() - from).min(64));
            let at = rng.below(len);
            buf.splice(at..at, d[from..from + n].iter().copied());
        }
        6 if len > 1 => {
            // Overwrite a 2-byte length-looking field.
            let i = rng.below(len - 1);
            let v = [0u16, 1, 3, 4, 255, 256, 0x7fff, 0xffff][rng.below(8)].to_be_bytes();
            buf[i..i + 2].copy_from_slice(&v);
        }
        _ => {
            let i = rng.below(len.max(1));
            buf.truncate(i);
            let n = rng.below(8);
            buf.extend(rng.bytes(n));
        }
    }
}

fn fix_length(buf: &mut [u8]) {
    if buf.len() >= 19 {
        let len = (buf.len().min(0xffff) as u16).to_be_bytes();
        buf[16..18].copy_from_slice(&len);
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(7);
    let mut seeds = Vec::new();
    while seeds.len() < 200 {
        let caps = ALL_CAPS[seeds.len() % 4];
        let msg = gen_message(&mut rng, &caps);
        let mut out = BytesMut::new();
        if encode_message(&msg, &caps, &mut out).is_ok() {
            seeds.push(out.to_vec());
        }
    }
    seeds
}

/// What RFC 6793 cannot carry to a 2-octet peer: a 2-octet AGGREGATOR makes the receiver ignore
/// AS4_PATH (4.2.3), and AS4_PATH drops confederation segments, which only come back when
/// they lead the path.
fn as4_lossless(a: &PathAttrs) -> bool {
    let confed =
        |s: &&AsSegment| matches!(s.kind, SegmentKind::ConfedSequence | SegmentKind::ConfedSet);
    a.aggregator.is_none_or(|(asn, _)| asn > 0xffff)
        && !a
            .as_path
            .segments
            .iter()
            .skip_while(confed)
            .any(|s| confed(&s))
}

/// Decodes `input`, and whatever decodes cleanly must survive a re-encode.
pub(super) fn check_one(input: &[u8], caps: &SessionCaps) {
    let Ok(msg) = decode_message(input, caps) else {
        return;
    };
    if let Message::Update(u) = &msg {
        if !u.errors.is_empty() {
            return;
        }
        if !caps.four_octet_as && !as4_lossless(&u.attrs) {
            return;
        }
    }
    let mut out = BytesMut::new();
    if encode_message(&msg, caps, &mut out).is_ok() {
        let again = decode_message(&out, caps).unwrap_or_else(|e| panic!("{e:?}: {input:02x?}"));
        assert_eq!(
            again, msg,
            "re-encode changed the message; input {input:02x?}"
        );
    }
}

#[test]
fn mutation_fuzz_never_panics() {
    let seeds = seeds();
    let mut rng = Rng::new(42);
    let mut decoded_ok = 0;
    for i in 0..200_000 {
        let caps = ALL_CAPS[i % 4];
        let mut buf = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut buf, &seeds);
        }
        // Mostly keep the header consistent so the body parsers get exercised.
        if !rng.chance(8) {
            fix_length(&mut buf);
        }
        if decode_message(&buf, &caps).is_ok() {
            decoded_ok += 1;
        }
        check_one(&buf, &caps);
    }
    // The mutations must leave a good share decodable, or the fuzz only tests the header.
    assert!(decoded_ok > 10_000, "{decoded_ok}");
}

#[test]
fn framing_consumes_exactly_what_the_header_says() {
    let seeds = seeds();
    let mut rng = Rng::new(99);
    for i in 0..20_000 {
        let mut codec = BgpCodec::new(ALL_CAPS[i % 4]);
        let mut stream = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let mut m = seeds[rng.below(seeds.len())].clone();
            if rng.chance(3) {
                mutate(&mut rng, &mut m, &seeds);
                if rng.chance(2) {
                    fix_length(&mut m);
                }
            }
            stream.extend(m);
        }
        // Feed it in random pieces.
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut consumed = 0;
        'feed: while fed < stream.len() {
            let n = (1 + rng.below(300)).min(stream.len() - fed);
            buf.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            loop {
                let before = buf.len();
                let declared =
                    (before >= 18).then(|| usize::from(u16::from_be_bytes([buf[16], buf[17]])));
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => {
                        let used = before - buf.len();
                        // Exactly the declared frame (plus any ignorable frames skipped before).
                        assert!(
                            used >= declared.unwrap(),
                            "used {used} declared {declared:?}"
                        );
                        consumed += used;
                    }
                    Ok(None) => {
                        consumed += before - buf.len();
                        break;
                    }
                    Err(_) => break 'feed,
                }
                assert!(consumed <= fed);
            }
        }
        assert!(consumed <= stream.len());
    }
}

/// The cargo-fuzz seed corpus (`bgp/fuzz/README.md`): each file is the capabilities byte the
/// fuzz target reads (bit 0 four-octet AS, bit 1 eBGP), then one encoded message, which must decode
/// under exactly those capabilities. Written to `BGP_FUZZ_CORPUS=DIR` when that is set.
#[test]
fn fuzz_corpus() {
    let files: Vec<Vec<u8>> = seeds()
        .iter()
        .enumerate()
        .map(|(i, seed)| {
            // seeds() cycles through ALL_CAPS: IBGP4, EBGP4, EBGP2, iBGP 2-octet.
            let sel = [1u8, 3, 2, 0][i % 4];
            let caps = ALL_CAPS[i % 4];
            assert_eq!(
                (sel & 1 != 0, sel & 2 != 0),
                (caps.four_octet_as, caps.ebgp),
                "seed {i}: selector byte {sel} does not name its capabilities"
            );
            let msg = decode_message(seed, &caps);
            assert!(msg.is_ok(), "seed {i} does not decode: {msg:?}");
            let mut file = vec![sel];
            file.extend_from_slice(seed);
            file
        })
        .collect();
    assert_eq!(files.len(), 200);
    if let Ok(dir) = std::env::var("BGP_FUZZ_CORPUS") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, file) in files.iter().enumerate() {
            std::fs::write(format!("{dir}/seed-{i:03}"), file).unwrap();
        }
    }
}
