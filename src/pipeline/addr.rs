//! Which network addresses a caller-supplied URL may reach: shared by the
//! Verify URL policy and the git source policy, so a deploy daemon cannot be
//! made a probe into the network it runs in (SSRF).

use std::net::IpAddr;

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
