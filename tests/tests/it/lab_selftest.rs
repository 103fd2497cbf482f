//! Self-tests of the lab library: namespaces, segments, cleanup, sweep, processes, `in_ns`.

use std::time::Duration;

use anyhow::Result;
use calico_lab::lab::{self, Lab};
use calico_lab::wait::eventually;

#[test]
fn segment_ping_v4_v6() -> Result<()> {
    let lab = Lab::new("ping")?;
    let lan = lab.segment("lan")?;
    let a = lab.netns("a")?;
    let b = lab.netns("b")?;
    lan.attach(&a, "eth0", &["10.0.0.1/24", "fd00::1/64"])?;
    lan.attach(&b, "eth0", &["10.0.0.2/24", "fd00::2/64"])?;
    a.run(&["ping", "-c1", "-W1", "10.0.0.2"])?;
    b.run(&["ping", "-c1", "-W1", "10.0.0.1"])?;
    a.run(&["ping", "-6", "-c1", "-W1", "fd00::2"])?;
    b.run(&["ping", "-6", "-c1", "-W1", "fd00::1"])?;
    Ok(())
}

#[test]
fn veth_pair_and_routing() -> Result<()> {
    let lab = Lab::new("veth")?;
    let a = lab.netns("a")?;
    let r = lab.netns("r")?;
    let b = lab.netns("b")?;
    r.forwarding()?;
    assert_eq!(r.sysctl_get("net.ipv4.ip_forward")?, "1");
    assert_eq!(a.sysctl_get("net.ipv4.ip_forward")?, "0");
    lab.veth((&a, "eth0"), (&r, "ra"))?;
    lab.veth((&r, "rb"), (&b, "eth0"))?;
    a.addr("eth0", "10.1.0.2/24")?;
    r.addr("ra", "10.1.0.1/24")?;
    r.addr("rb", "10.2.0.1/24")?;
    b.addr("eth0", "10.2.0.2/24")?;
    a.addr("eth0", "fd01::2/64")?;
    r.addr("ra", "fd01::1/64")?;
    r.addr("rb", "fd02::1/64")?;
    b.addr("eth0", "fd02::2/64")?;
    a.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
    b.ip(&["route", "add", "default", "via", "10.2.0.1"])?;
    a.ip(&["-6", "route", "add", "default", "via", "fd01::1"])?;
    b.ip(&["-6", "route", "add", "default", "via", "fd02::1"])?;
    a.run(&["ping", "-c1", "-W1", "10.2.0.2"])?;
    a.run(&["ping", "-c1", "-W1", "fd02::2"])?;
    // The error of a failing command names it and carries stderr.
    let e = a.run(&["ip", "route", "add", "bogus"]).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("ip route add bogus"), "{msg}");
    Ok(())
}

#[test]
fn drop_removes_namespaces_and_processes() -> Result<()> {
    let lab = Lab::new("drop")?;
    let a = lab.netns("a")?;
    let seg = lab.segment("s")?;
    let name = a.name().to_string();
    assert!(name.starts_with(&format!("crs{}-drop", std::process::id())));
    // A daemon that is not tracked by a Proc handle (backgrounded by sh) must die with the lab too.
    a.sh("sleep 1000 >/dev/null 2>&1 &")?;
    let pids = lab::list_netns(lab.prefix());
    assert_eq!(pids.len(), 2, "{pids:?}");
    let stray: Vec<String> =
        calico_lab::proc::run(&["ip", "netns", "pids", &name], Duration::from_secs(10))?
            .split_whitespace()
            .map(String::from)
            .collect();
    assert_eq!(stray.len(), 1);
    let dir = lab.dir().to_path_buf();
    assert!(dir.is_dir());
    drop(seg);
    drop(lab);
    assert!(!a.exists());
    assert!(lab::list_netns(&format!("crs{}-drop-", std::process::id())).is_empty());
    assert!(!dir.exists());
    eventually(Duration::from_secs(2), || {
        if std::path::Path::new(&format!("/proc/{}", stray[0])).exists() {
            // A zombie until init reaps it is fine.
            let st =
                std::fs::read_to_string(format!("/proc/{}/stat", stray[0])).unwrap_or_default();
            anyhow::ensure!(st.contains(") Z") || st.is_empty(), "still alive: {st}");
        }
        Ok(())
    })?;
    Ok(())
}

#[test]
fn sweep_removes_leftovers_of_dead_pids() -> Result<()> {
    // A pid that can never be alive (above PID_MAX_LIMIT, 2^22) and unique to this test process, so
    // parallel runs of this test do not share it.
    let dead = 5_000_000 + std::process::id();
    let name = format!("crs{dead}-old-n1");
    // Protect it with a keep marker while setting it up, so a concurrent sweep (another test
    // process) cannot delete it half-made.
    let old_dir = std::env::temp_dir().join(format!("crs{dead}-old"));
    std::fs::create_dir_all(&old_dir)?;
    std::fs::write(old_dir.join(lab::KEEP_MARKER), "")?;
    calico_lab::proc::run(&["ip", "netns", "add", &name], Duration::from_secs(10))?;
    calico_lab::proc::run(
        &[
            "ip",
            "netns",
            "exec",
            &name,
            "sh",
            "-c",
            "sleep 1000 >/dev/null 2>&1 &",
        ],
        Duration::from_secs(10),
    )?;
    let pids = calico_lab::proc::run(&["ip", "netns", "pids", &name], Duration::from_secs(10))?;
    assert!(!pids.trim().is_empty());
    std::fs::remove_file(old_dir.join(lab::KEEP_MARKER))?;
    // A kept lab of a dead process survives the sweep until its marker is removed.
    let kept = format!("crs{dead}-kept-n1");
    let kept_dir = std::env::temp_dir().join(format!("crs{dead}-kept"));
    std::fs::create_dir_all(&kept_dir)?;
    std::fs::write(kept_dir.join(lab::KEEP_MARKER), "")?;
    calico_lab::proc::run(&["ip", "netns", "add", &kept], Duration::from_secs(10))?;
    // A namespace of a live process (ours) must survive the sweep.
    let lab = Lab::new("sweep")?;
    let mine = lab.netns("n1")?;
    assert!(!std::path::Path::new(&format!("/run/netns/{name}")).exists());
    assert!(!old_dir.exists());
    lab::sweep()?;
    assert!(mine.exists());
    assert!(std::path::Path::new(&format!("/run/netns/{kept}")).exists());
    std::fs::remove_file(kept_dir.join(lab::KEEP_MARKER))?;
    lab::sweep()?;
    assert!(!std::path::Path::new(&format!("/run/netns/{kept}")).exists());
    assert!(!kept_dir.exists());
    for pid in pids.split_whitespace() {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            st.is_empty() || st.contains(") Z"),
            "leftover process alive: {st}"
        );
    }
    Ok(())
}

#[test]
fn same_tag_twice_does_not_clash() -> Result<()> {
    let l1 = Lab::new("twice")?;
    let l2 = Lab::new("twice")?;
    assert_ne!(l1.prefix(), l2.prefix());
    l1.netns("a")?;
    l2.netns("a")?;
    Ok(())
}

#[test]
fn spawn_log_kill_and_stop_cont() -> Result<()> {
    let lab = Lab::new("proc")?;
    let a = lab.netns("a")?;
    let mut p = a.spawn(&["sh", "-c", "echo hello; echo oops >&2; exec sleep 1000"])?;
    eventually(Duration::from_secs(5), || {
        let log = p.log();
        anyhow::ensure!(
            log.contains("hello") && log.contains("oops"),
            "log: {log:?}"
        );
        Ok(())
    })?;
    // The pid is the command's own (ip netns exec execs it) and it lives in the namespace.
    let pids = a.run(&["ip", "netns", "pids", a.name()])?;
    assert!(
        pids.split_whitespace().any(|x| x == p.pid().to_string()),
        "{pids}"
    );
    p.stop()?;
    eventually(Duration::from_secs(2), || {
        let st = std::fs::read_to_string(format!("/proc/{}/stat", p.pid()))?;
        anyhow::ensure!(st.contains(") T"), "not stopped: {st}");
        Ok(())
    })?;
    p.cont()?;
    assert!(p.is_running());
    p.kill()?;
    assert!(!p.is_running());
    // A command that overruns its deadline is killed and reported.
    let e = a
        .run_timeout(&["sleep", "10"], Duration::from_millis(200))
        .unwrap_err();
    assert!(format!("{e}").contains("timed out"), "{e}");
    Ok(())
}

#[test]
fn in_ns_sees_the_namespace() -> Result<()> {
    let lab = Lab::new("inns")?;
    let a = lab.netns("a")?;
    // Sockets made on the namespace thread live in the namespace: bind an address only it has.
    a.addr("lo", "10.77.0.1/32")?;
    let bound = a.in_ns(|| std::net::UdpSocket::bind("10.77.0.1:0").map(|_| ()))?;
    bound?;
    let outside = std::net::UdpSocket::bind("10.77.0.1:0");
    assert!(
        outside.is_err(),
        "10.77.0.1 must not exist outside the namespace"
    );
    // An async runtime inside the namespace.
    let port = a.block_on(|| async {
        let l = tokio::net::TcpListener::bind("10.77.0.1:0").await?;
        let port = l.local_addr()?.port();
        let accept = tokio::spawn(async move { l.accept().await.map(|_| ()) });
        tokio::net::TcpStream::connect(("10.77.0.1", port)).await?;
        accept.await??;
        anyhow::Ok(port)
    })??;
    assert!(port > 0);
    Ok(())
}
