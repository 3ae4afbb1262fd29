//! Which peers may tell the ingress how a request reached them: a load balancer or TLS
//! terminator in front says `X-Forwarded-Proto: https`, and the app must hear it, while
//! anyone else saying so would be lying.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address or a CIDR block (`10.0.0.0/8`, `::1`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Why a text is not an [`IpRange`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an IP address or a CIDR block such as 10.0.0.0/8: {why}")]
pub struct IpRangeError {
    text: String,
    why: &'static str,
}

impl FromStr for IpRange {
    type Err = IpRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |why| IpRangeError { text: text.to_owned(), why };
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err("the address is malformed"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= bits => prefix,
                _ if addr.is_ipv4() => return Err(err("the prefix length must be 0 to 32")),
                _ => return Err(err("the prefix length must be 0 to 128")),
            },
        };
        Ok(IpRange { addr, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> IpRange {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn ranges_contain_what_their_prefix_covers() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.200.3.4", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.168.1.7", "192.168.1.7", true),
            ("192.168.1.7", "192.168.1.8", false),
            ("192.168.1.7/31", "192.168.1.6", true),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("127.0.0.1", "::ffff:127.0.0.1", true),
            ("127.0.0.0/8", "::1", false),
            ("fd00::/8", "fd12::1", true),
            ("fd00::/8", "fe80::1", false),
            ("::1", "::1", true),
            ("::/0", "10.0.0.1", false),
        ];
        for &(net, ip, inside) in cases {
            assert_eq!(range(net).contains(ip.parse().expect("ip")), inside, "{ip} in {net}");
        }
    }

    #[test]
    fn malformed_ranges_say_why() {
        let cases: &[(&str, &str)] = &[
            ("10.0.0.0/33", "0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("10.0.0/8", "malformed"),
            ("10.0.0.0/", "0 to 32"),
            ("10.0.0.0/x", "0 to 32"),
            ("lb.internal", "malformed"),
            ("", "malformed"),
        ];
        for &(text, why) in cases {
            let err = text.parse::<IpRange>().expect_err(text).to_string();
            assert!(err.contains(why) && err.contains(&format!("{text:?}")), "{text}: {err}");
        }
        assert_eq!(range("10.1.2.3/8").to_string(), "10.1.2.3/8");
    }
}
