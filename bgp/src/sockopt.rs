//! Socket options the standard library and tokio do not offer: TCP MD5 signatures (RFC 2385),
//! GTSM's minimum TTL (RFC 5082), unicast TTL/hop limit and IPV6_V6ONLY.
//!
//! This is the crate's one use of `unsafe`: `setsockopt(2)` with a plain-old-data value on a file
//! descriptor the caller owns. Each call checks the return code; nothing is retained.
#![allow(unsafe_code)]

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;

fn setsockopt<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` points to a live, initialised `T` of `len` bytes for the duration of the call;
    // the kernel copies it and keeps no reference.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Longest key the kernel accepts (TCP_MD5SIG_MAXKEYLEN).
pub const MD5_MAX_KEY_LEN: usize = 80;

/// Layout of `struct tcp_md5sig` (linux/tcp.h).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MD5_MAX_KEY_LEN],
}

/// Install (or with `None`, remove) the TCP MD5 key for `peer` on `fd` (a listener or a socket
/// before connect). `ipv6_socket`: the socket is AF_INET6, so IPv4 peers are keyed as v4-mapped.
pub fn set_md5(
    fd: &impl AsRawFd,
    peer: IpAddr,
    key: Option<&[u8]>,
    ipv6_socket: bool,
) -> io::Result<()> {
    let key = key.unwrap_or(&[]);
    if key.len() > MD5_MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TCP MD5 password longer than {MD5_MAX_KEY_LEN} bytes"),
        ));
    }
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (AF_UNSPEC) value.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let as_v6 = match peer {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(a) if ipv6_socket => Some(a.to_ipv6_mapped()),
        IpAddr::V4(_) => None,
    };
    match (as_v6, peer) {
        (Some(v6), _) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            unsafe { std::ptr::write((&mut addr as *mut libc::sockaddr_storage).cast(), sin6) };
        }
        (None, IpAddr::V4(v4)) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut addr as *mut libc::sockaddr_storage).cast(), sin) };
        }
        (None, IpAddr::V6(_)) => unreachable!("IPv6 peers always take the first arm"),
    }
    let mut sig = TcpMd5Sig {
        addr,
        flags: 0,
        prefixlen: 0,
        keylen: key.len() as u16,
        ifindex: 0,
        key: [0; MD5_MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig)
}

/// GTSM (RFC 5082): the smallest TTL / hop limit a packet from a peer `hops` hops away arrives
/// with when it was sent with 255 (each router on the way takes one off): `256 - hops`.
/// `hops` is 1..=254 (validated with the config); 0 is treated as 1.
pub fn gtsm_min_ttl(hops: u8) -> u8 {
    // 256 - h for h in 1..=255 is 1..=255: it fits.
    u8::try_from(256 - u16::from(hops.max(1))).unwrap_or(u8::MAX)
}

/// GTSM (RFC 5082) on a socket for a peer `hops` hops away: send with TTL / hop limit 255, and
/// have the kernel drop every segment that arrives with less than [`gtsm_min_ttl`]. For a socket
/// we connect, call it before `connect`; for an accepted one, before reading from it.
pub fn set_gtsm(fd: &impl AsRawFd, ipv6: bool, hops: u8) -> io::Result<()> {
    set_ttl(fd, ipv6, 255)?;
    set_min_ttl(fd, ipv6, gtsm_min_ttl(hops))
}

/// GTSM (RFC 5082): drop segments arriving with a TTL / hop limit below `min`.
fn set_min_ttl(fd: &impl AsRawFd, ipv6: bool, min: u8) -> io::Result<()> {
    let v = libc::c_int::from(min);
    if ipv6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &v)
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_MINTTL, &v)
    }
}

/// TTL / hop limit of packets we send.
fn set_ttl(fd: &impl AsRawFd, ipv6: bool, ttl: u8) -> io::Result<()> {
    let v = libc::c_int::from(ttl);
    if ipv6 {
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &v)
    } else {
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &v)
    }
}

/// Make an AF_INET6 listener accept IPv6 only, so an IPv4 listener can share its port.
pub fn set_v6_only(fd: &impl AsRawFd) -> io::Result<()> {
    let v: libc::c_int = 1;
    setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtsm_minimum_ttl_is_256_minus_hops() {
        assert_eq!(
            gtsm_min_ttl(1),
            255,
            "directly connected: only TTL 255 passes"
        );
        assert_eq!(gtsm_min_ttl(2), 254);
        assert_eq!(gtsm_min_ttl(254), 2);
        assert_eq!(gtsm_min_ttl(0), 255);
    }

    /// Read back an int option (test only: production code never reads options).
    fn get_int(fd: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> io::Result<i32> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are live locals of the sizes the kernel is told.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&mut v as *mut libc::c_int).cast::<libc::c_void>(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(v)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[test]
    fn gtsm_sets_ttl_255_and_the_minimum() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
        set_gtsm(&s, false, 2).expect("set_gtsm");
        assert_eq!(get_int(&s, libc::IPPROTO_IP, libc::IP_TTL).unwrap(), 255);
        assert_eq!(get_int(&s, libc::IPPROTO_IP, libc::IP_MINTTL).unwrap(), 254);
    }

    #[test]
    fn gtsm_on_an_ipv6_socket_sets_the_hop_limits() {
        let s = tokio::net::TcpSocket::new_v6().expect("AF_INET6 socket");
        set_gtsm(&s, true, 1).expect("set_gtsm");
        let hops = get_int(&s, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS).unwrap();
        assert_eq!(hops, 255);
        let min = get_int(&s, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT).unwrap();
        assert_eq!(min, 255);
    }

    #[test]
    fn gtsm_of_the_wrong_family_is_an_error_not_ignored() {
        // An IPv6 option on an IPv4 socket: the kernel refuses, and the caller must hear of it.
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        assert!(set_gtsm(&s, true, 1).is_err());
    }
}
