//! Self-tests of the connectivity checker: echo servers, TCP/UDP probes over IPv4 and IPv6, ping
//! expectations, and a matrix with an nftables drop in one pod.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use calico_lab::check::{
    self, expect_none, expect_some, probe_all, reachability, EchoServer, Matrix, Outcome, Proto,
    Tcp, Udp, PROBE_TIMEOUT,
};
use calico_lab::lab::{Lab, Netns};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn tcp_udp_ping_v4_v6() -> Result<()> {
    let lab = Lab::new("chk")?;
    let lan = lab.segment("lan")?;
    let a = lab.netns("a")?;
    let b = lab.netns("b")?;
    lan.attach(&a, "eth0", &["10.0.0.1/24", "fd00::1/64"])?;
    lan.attach(&b, "eth0", &["10.0.0.2/24", "fd00::2/64"])?;
    let _srv = EchoServer::start(&b, "b", &[80, 81])?;
    // Let neighbour discovery settle first: the probes below use short timeouts, and a loaded
    // machine can take longer than one of them to resolve the first ARP / NDP entry.
    calico_lab::wait::eventually(Duration::from_secs(10), || expect_some(&a, "10.0.0.2"))?;
    calico_lab::wait::eventually(Duration::from_secs(10), || expect_some(&a, "fd00::2"))?;

    assert_eq!(
        check::tcp(&a, sa("10.0.0.2:80"), PROBE_TIMEOUT)?,
        Outcome::Ok("b".into())
    );
    assert_eq!(
        check::udp(&a, sa("10.0.0.2:81"), PROBE_TIMEOUT)?,
        Outcome::Ok("b".into())
    );
    assert_eq!(
        check::tcp(&a, sa("[fd00::2]:81"), PROBE_TIMEOUT)?,
        Outcome::Ok("b".into())
    );
    assert_eq!(
        check::udp(&a, sa("[fd00::2]:80"), PROBE_TIMEOUT)?,
        Outcome::Ok("b".into())
    );
    // No server on 82: TCP is refused, UDP gets ICMP port unreachable.
    assert_eq!(
        check::tcp(&a, sa("10.0.0.2:82"), PROBE_TIMEOUT)?,
        Outcome::Refused
    );
    assert!(!check::udp(&a, sa("10.0.0.2:82"), PROBE_TIMEOUT)?.ok());
    expect_some(&a, "10.0.0.2")?;
    expect_some(&a, "fd00::2")?;
    expect_some(&a, Tcp(sa("10.0.0.2:80")))?;
    expect_some(&a, Udp(sa("[fd00::2]:81")))?;
    expect_none(&a, "10.0.0.3")?;
    expect_none(&a, Tcp(sa("10.0.0.2:82")))?;
    assert!(expect_none(&a, "10.0.0.2").is_err());
    assert!(expect_some(&a, Udp(sa("10.0.0.2:82"))).is_err());

    // A silent drop (nft inside b) times out.
    b.run_stdin(
        &["nft", "-f", "-"],
        b"table inet t {\n chain in {\n type filter hook input priority 0;\n tcp dport 81 drop\n udp dport 81 drop\n }\n}\n",
    )?;
    let t = Instant::now();
    assert_eq!(
        check::tcp(&a, sa("10.0.0.2:81"), PROBE_TIMEOUT)?,
        Outcome::Timeout
    );
    assert_eq!(
        check::udp(&a, sa("10.0.0.2:81"), PROBE_TIMEOUT)?,
        Outcome::Timeout
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    Ok(())
}

/// Nine pods on one segment, servers on 80 and 81, pod `p4` drops TCP 81 from everyone: the matrix
/// shows exactly that, and all 324 probes (TCP+UDP, 2 ports) take about one timeout.
#[test]
fn nine_by_nine_matrix() -> Result<()> {
    let lab = Lab::new("chk9")?;
    let lan = lab.segment("lan")?;
    let mut pods: Vec<(String, Netns, EchoServer)> = Vec::new();
    for i in 0..9 {
        let name = format!("p{i}");
        let ns = lab.netns(&name)?;
        lan.attach(&ns, "eth0", &[&format!("10.0.0.{}/24", i + 1)])?;
        let srv = EchoServer::start(&ns, &name, &[80, 81])?;
        pods.push((name, ns, srv));
    }
    pods[4].1.run_stdin(
        &["nft", "-f", "-"],
        b"table inet t {\n chain in {\n type filter hook input priority 0;\n tcp dport 81 drop\n }\n}\n",
    )?;
    let names: Vec<&str> = pods.iter().map(|p| p.0.as_str()).collect();
    let sources: Vec<(&str, &Netns)> = pods.iter().map(|p| (p.0.as_str(), &p.1)).collect();
    let targets = |port: u16| -> Vec<(&str, SocketAddr)> {
        pods.iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    p.0.as_str(),
                    SocketAddr::from(([10, 0, 0, i as u8 + 1], port)),
                )
            })
            .collect()
    };

    let t = Instant::now();
    let mut all = Vec::new();
    for port in [80, 81] {
        for proto in [Proto::Tcp, Proto::Udp] {
            for (_, ns) in &sources {
                for (_, to) in targets(port) {
                    all.push((*ns, proto, to));
                }
            }
        }
    }
    let out = probe_all(&all, PROBE_TIMEOUT)?;
    let took = t.elapsed();
    eprintln!("check: {} probes in {took:.2?}", out.len());
    assert_eq!(out.len(), 324);
    assert_eq!(out.iter().filter(|o| !o.ok()).count(), 9, "{out:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    let open = Matrix::from_fn(&names, &names, |_, _| true);
    open.expect(&reachability(
        &sources,
        &targets(80),
        Proto::Tcp,
        PROBE_TIMEOUT,
    )?)?;
    let want81 = Matrix::from_fn(&names, &names, |_, to| to != "p4");
    let got81 = reachability(&sources, &targets(81), Proto::Tcp, PROBE_TIMEOUT)?;
    want81.expect(&got81)?;
    // And a wrong expectation is reported with the grid.
    let e = open.expect(&got81).unwrap_err().to_string();
    assert!(e.contains("9 of 81 cells differ"), "{e}");
    assert!(
        e.contains("p0 -> p4: expected reachable, got blocked"),
        "{e}"
    );
    Ok(())
}
