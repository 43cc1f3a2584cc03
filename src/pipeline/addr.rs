//! Which network addresses a caller-supplied URL may reach: shared by the
//! Verify URL policy and the git source policy, so a deploy daemon cannot be
//! made a probe into the network it runs in (SSRF).

use std::net::{IpAddr, SocketAddr};

/// `*.example.com` matches subdomains; anything else matches the host
/// exactly (case-insensitively).
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Addresses no caller-supplied URL may reach, whatever the allow-list says.
pub fn always_forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some("a link-local address (the metadata server lives there)")
        }
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("a link-local address"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => {
            Some("not a unicast address")
        }
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => Some("not a unicast address"),
        _ => None,
    }
}

/// Loopback, private, shared (CGNAT) and unique-local ranges.
pub fn private_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_private() => Some("a private address"),
        IpAddr::V4(v4) if v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 => {
            Some("a shared (CGNAT) address")
        }
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("a 'this network' address"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => Some("a unique-local address"),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .and_then(|v4| private_kind(IpAddr::V4(v4)).or(always_forbidden(IpAddr::V4(v4)))),
        _ => None,
    }
}

/// Whether `host` may be reached at every one of `addrs`: never at a
/// link-local or non-unicast address, and at a loopback or private one only
/// when `private_ok`. `Err` says which address and why.
pub fn check_addresses(host: &str, addrs: &[SocketAddr], private_ok: bool) -> Result<(), String> {
    for a in addrs {
        let kind = always_forbidden(a.ip()).or(if private_ok {
            None
        } else {
            private_kind(a.ip())
        });
        if let Some(kind) = kind {
            return Err(format!("{host} resolves to {}, {kind}", a.ip()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(always_forbidden(ip("169.254.169.254")).is_some());
        assert!(always_forbidden(ip("fe80::1")).is_some());
        assert!(private_kind(ip("127.0.0.1")).is_some());
        assert!(private_kind(ip("10.1.2.3")).is_some());
        assert!(private_kind(ip("172.16.0.1")).is_some());
        assert!(private_kind(ip("192.168.1.1")).is_some());
        assert!(private_kind(ip("100.64.0.1")).is_some());
        assert!(private_kind(ip("::1")).is_some());
        assert!(private_kind(ip("fd00::1")).is_some());
        assert!(private_kind(ip("::ffff:10.0.0.1")).is_some());
        assert!(private_kind(ip("::ffff:169.254.169.254")).is_some());
        assert!(private_kind(ip("142.250.1.1")).is_none());
        assert!(always_forbidden(ip("142.250.1.1")).is_none());
    }

    #[test]
    fn every_address_must_pass() {
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let public = [a("142.250.1.1:443")];
        let mixed = [a("142.250.1.1:443"), a("10.0.0.1:443")];
        assert!(check_addresses("h", &public, false).is_ok());
        let e = check_addresses("h", &mixed, false).expect_err("private");
        assert_eq!(e, "h resolves to 10.0.0.1, a private address");
        assert!(check_addresses("h", &mixed, true).is_ok());
        assert!(check_addresses("h", &[a("169.254.169.254:80")], true).is_err());
    }
}
