//! Which network addresses howk may connect to on a tenant's behalf — the SSRF rule shared by
//! the Lua `http` module and endpoint delivery (SPEC §4, §5).
//!
//! Refused unless an explicit allowed CIDR covers them: loopback, private (RFC 1918, RFC 4193),
//! link-local (which holds cloud metadata, 169.254.169.254), carrier-grade NAT, unspecified,
//! broadcast, multicast and documentation ranges, and IPv6 forms that embed an IPv4 address.
//!
//! [`CheckedResolver`] applies the rule inside an HTTP client's DNS resolution, so the client
//! can only connect to an address that was checked — no window for DNS rebinding.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The set of addresses that may be connected to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Ranges allowed even though they are otherwise refused (tests allow loopback this way).
    allowed: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressPolicyError {
    #[error("invalid CIDR {0:?}")]
    InvalidCidr(String),
}

impl AddressPolicy {
    /// A policy allowing the given CIDRs (`127.0.0.0/8`, `::1/128`) beyond the public internet.
    pub fn with_allowed<S: AsRef<str>>(cidrs: &[S]) -> Result<Self, AddressPolicyError> {
        let allowed = cidrs
            .iter()
            .map(|cidr| {
                let cidr = cidr.as_ref().trim();
                cidr.parse::<IpNet>()
                    .or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| AddressPolicyError::InvalidCidr(cidr.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// `None` when `address` may be connected to, else the reason it may not.
    pub fn refusal(&self, address: IpAddr) -> Option<&'static str> {
        let reason = special_purpose(address)?;
        if self.allowed.iter().any(|net| net.contains(&address)) {
            return None;
        }
        Some(reason)
    }
}

/// Why an address is not a public internet address, if it is not.
fn special_purpose(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return special_v4(v4).or(Some("IPv4-mapped address"));
            }
            let segments = v6.segments();
            if v6.is_loopback() {
                Some("loopback address")
            } else if v6.is_unspecified() {
                Some("unspecified address")
            } else if (segments[0] & 0xfe00) == 0xfc00 {
                Some("private address")
            } else if (segments[0] & 0xffc0) == 0xfe80 {
                Some("link-local address")
            } else if v6.is_multicast() {
                Some("multicast address")
            } else if segments[0] == 0x64 && segments[1] == 0xff9b {
                Some("NAT64 address")
            } else if segments[0] == 0x2002 {
                Some("6to4 address")
            } else if segments[0] == 0x2001 && segments[1] == 0 {
                Some("Teredo address")
            } else if segments[0] == 0x2001 && segments[1] == 0xdb8 {
                Some("documentation address")
            } else if (segments[0] & 0xffc0) == 0xfec0 {
                // Deprecated (RFC 3879) but still routed as site-local by some stacks.
                Some("site-local address")
            } else if segments[..6] == [0; 6] {
                // ::a.b.c.d (deprecated IPv4-compatible); :: and ::1 were caught above.
                Some("IPv4-compatible address")
            } else if segments[..6] == [0, 0, 0, 0, 0xffff, 0] {
                // ::ffff:0:a.b.c.d, SIIT's IPv4-translated form (RFC 6145).
                Some("IPv4-translated address")
            } else if v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0) {
                Some("unspecified address")
            } else {
                None
            }
        }
    }
}

fn special_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = v4.octets();
    if v4.is_loopback() {
        Some("loopback address")
    } else if v4.is_private() {
        Some("private address")
    } else if v4.is_link_local() {
        Some("link-local address (cloud metadata lives here)")
    } else if v4.is_unspecified() || a == 0 {
        Some("unspecified address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("carrier-grade NAT address")
    } else if v4.is_broadcast() || v4.is_multicast() || a >= 240 {
        Some("broadcast, multicast or reserved address")
    } else if v4.is_documentation() || (a == 198 && (18..20).contains(&b)) {
        Some("documentation or benchmarking address")
    } else {
        None
    }
}

/// A name resolved only to addresses the policy refuses; found in a request error's source chain
/// by [`refused_address`], so delivery can tell a refusal (unrecoverable) from a transport error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RefusedAddress(pub String);

/// The refusal behind `error`, if an address check caused it.
pub fn refused_address<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a RefusedAddress> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(refused) = error.downcast_ref::<RefusedAddress>() {
            return Some(refused);
        }
        current = error.source();
    }
    None
}

/// Resolves names and keeps only addresses the policy allows, so the connection can only go to
/// a checked address.
pub struct CheckedResolver {
    policy: AddressPolicy,
}

impl CheckedResolver {
    pub fn new(policy: AddressPolicy) -> Self {
        Self { policy }
    }
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
                .into_iter()
                .partition(|addr| policy.refusal(addr.ip()).is_none());
            if allowed.is_empty() {
                let reasons: Vec<String> = refused
                    .iter()
                    .map(|addr| {
                        format!(
                            "{} ({})",
                            addr.ip(),
                            policy.refusal(addr.ip()).unwrap_or("refused")
                        )
                    })
                    .collect();
                return Err(Box::new(RefusedAddress(format!(
                    "{host} resolves only to refused addresses: {}",
                    reasons.join(", ")
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &AddressPolicy, address: &str) -> bool {
        policy.refusal(address.parse().unwrap()).is_some()
    }

    #[test]
    fn special_addresses_are_refused_by_default() {
        let policy = AddressPolicy::default();
        for address in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(refused(&policy, address), "{address} must be refused");
        }
    }

    #[test]
    fn ipv4_embedded_in_old_ipv6_forms_and_site_local_are_refused() {
        let policy = AddressPolicy::default();
        for (address, reason) in [
            ("::127.0.0.1", "IPv4-compatible"),
            ("::169.254.169.254", "IPv4-compatible"),
            ("::10.0.0.1", "IPv4-compatible"),
            ("::ffff:0:127.0.0.1", "IPv4-translated"),
            ("::ffff:0:a9fe:a9fe", "IPv4-translated"),
            ("fec0::1", "site-local"),
            ("feff:ffff::1", "site-local"),
        ] {
            let refusal = policy.refusal(address.parse().unwrap());
            assert!(
                refusal.is_some_and(|r| r.contains(reason)),
                "{address}: {refusal:?}"
            );
        }
        // A public address beside them stays allowed.
        assert!(!refused(&policy, "2606:4700::6810:84e5"));
    }

    #[test]
    fn public_addresses_are_allowed() {
        let policy = AddressPolicy::default();
        for address in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(!refused(&policy, address), "{address} must be allowed");
        }
    }

    #[test]
    fn explicit_cidrs_allow_what_they_cover() {
        let policy = AddressPolicy::with_allowed(&["127.0.0.0/8", "::1"]).unwrap();
        assert!(!refused(&policy, "127.0.0.1"));
        assert!(!refused(&policy, "::1"));
        assert!(refused(&policy, "10.0.0.1"));
        assert!(AddressPolicy::with_allowed(&["nonsense"]).is_err());
    }
}
