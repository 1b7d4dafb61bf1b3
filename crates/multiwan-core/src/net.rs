//! Small value types used by the config and the plan: IPv4 and IPv6 prefixes, the address
//! family, and port ranges.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// `ipv4` / `ipv6` (config, JSON, hooks, metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The IPv6 global unicast space, `2000::/3` (RFC 4291 §2.4): what lies beyond a gateway, as
/// opposed to link-local, unique local and multicast addresses.
pub const GLOBAL_UNICAST6: Ipv6Net = Ipv6Net {
    addr: Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0),
    prefix: 3,
};

/// An IPv6 address with a prefix length, e.g. `2001:db8::/32` or a host `2001:db8::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv6Net {
    addr: Ipv6Addr,
    prefix: u8,
}

impl Ipv6Net {
    /// Builds a prefix; host bits must be zero.
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Option<Self> {
        if prefix > 128 {
            return None;
        }
        let net = Self { addr, prefix };
        (u128::from(addr) & !net.mask() == 0).then_some(net)
    }

    /// The prefix of length `prefix` that holds `addr` (its host bits cleared): the network
    /// of an interface address such as `2001:db8:2::253/64`.
    pub fn holding(addr: Ipv6Addr, prefix: u8) -> Option<Self> {
        let prefix = prefix.min(128);
        let bits = Self { addr, prefix }.mask();
        Self::new(Ipv6Addr::from(u128::from(addr) & bits), prefix)
    }

    /// The network address.
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - self.prefix)
        }
    }

    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr)
    }

    /// Whether `other` lies wholly inside this prefix (itself included).
    pub fn covers(&self, other: &Self) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == 128 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl FromStr for Ipv6Net {
    type Err = NetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: Ipv6Addr = a.parse().map_err(|_| NetParseError::Addr(s.to_string()))?;
        let prefix: u8 = match p {
            None => 128,
            Some(p) => p
                .parse()
                .ok()
                .filter(|p| *p <= 128)
                .ok_or_else(|| NetParseError::Prefix6(s.to_string()))?,
        };
        Self::new(addr, prefix).ok_or_else(|| {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            NetParseError::HostBits {
                input: s.to_string(),
                suggestion: format!("{}/{}", Ipv6Addr::from(u128::from(addr) & mask), prefix),
            }
        })
    }
}

/// An IPv4 or IPv6 prefix, as a rule's `src`/`dst` take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpNet {
    /// An IPv4 prefix.
    V4(Ipv4Net),
    /// An IPv6 prefix.
    V6(Ipv6Net),
}

impl IpNet {
    /// The prefix of `addr`'s family; host bits must be zero.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        match addr {
            IpAddr::V4(a) => Ipv4Net::new(a, prefix).map(IpNet::V4),
            IpAddr::V6(a) => Ipv6Net::new(a, prefix).map(IpNet::V6),
        }
    }

    /// The prefix of length `prefix` that holds `addr` (its host bits cleared).
    pub fn holding(addr: IpAddr, prefix: u8) -> Option<Self> {
        match addr {
            IpAddr::V4(a) => Ipv4Net::holding(a, prefix).map(IpNet::V4),
            IpAddr::V6(a) => Ipv6Net::holding(a, prefix).map(IpNet::V6),
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        match self {
            IpNet::V4(n) => n.addr().into(),
            IpNet::V6(n) => n.addr().into(),
        }
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        match self {
            IpNet::V4(n) => n.prefix(),
            IpNet::V6(n) => n.prefix(),
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpNet::V4(n) => n.fmt(f),
            IpNet::V6(n) => n.fmt(f),
        }
    }
}

impl FromStr for IpNet {
    type Err = NetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            s.parse().map(IpNet::V6)
        } else {
            s.parse().map(IpNet::V4)
        }
    }
}

/// An IPv4 address with a prefix length, e.g. `192.168.0.0/24` or a host `10.0.0.1/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// Builds a prefix; host bits must be zero.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        if prefix > 32 {
            return None;
        }
        let net = Self { addr, prefix };
        (u32::from(addr) & !net.mask() == 0).then_some(net)
    }

    /// The prefix of length `prefix` that holds `addr` (its host bits cleared): the network
    /// of an interface address such as `10.37.1.2/24`.
    pub fn holding(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        let prefix = prefix.min(32);
        let bits = Self { addr, prefix }.mask();
        Self::new(Ipv4Addr::from(u32::from(addr) & bits), prefix)
    }

    /// The subnet's broadcast address (all host bits set), when it has one: not for a /31
    /// (two hosts, RFC 3021) or a /32.
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        (self.prefix <= 30).then(|| Ipv4Addr::from(u32::from(self.addr) | !self.mask()))
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether `other` lies wholly inside this prefix (itself included).
    pub fn covers(&self, other: &Self) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == 32 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// Why a prefix did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetParseError {
    /// The address part is not an IP address of the expected family.
    #[error("invalid address {0:?}")]
    Addr(String),
    /// An IPv4 prefix length is not a number in 0..=32.
    #[error("invalid prefix length in {0:?} (expected 0..=32)")]
    Prefix(String),
    /// An IPv6 prefix length is not a number in 0..=128.
    #[error("invalid prefix length in {0:?} (expected 0..=128)")]
    Prefix6(String),
    /// Bits beyond the prefix are set (`10.0.0.1/8`).
    #[error("{input:?} has host bits set; did you mean {suggestion}?")]
    HostBits {
        /// What was written.
        input: String,
        /// The network it probably means.
        suggestion: String,
    },
}

impl FromStr for Ipv4Net {
    type Err = NetParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: Ipv4Addr = a.parse().map_err(|_| NetParseError::Addr(s.to_string()))?;
        let prefix: u8 = match p {
            None => 32,
            Some(p) => p
                .parse()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| NetParseError::Prefix(s.to_string()))?,
        };
        Self::new(addr, prefix).ok_or_else(|| {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            NetParseError::HostBits {
                input: s.to_string(),
                suggestion: format!("{}/{}", Ipv4Addr::from(u32::from(addr) & mask), prefix),
            }
        })
    }
}

/// An inclusive port range; a single port has `lo == hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (inclusive).
    pub hi: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("invalid port {s:?}: expected 1..=65535 or a range such as \"8000-8080\"");
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0);
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (port(a).ok_or_else(bad)?, port(b).ok_or_else(bad)?),
            None => {
                let p = port(s).ok_or_else(bad)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("invalid port range {s:?}: start is above end"));
        }
        Ok(Self { lo, hi })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_family_prefix_from_an_address_and_a_length() {
        let a: IpAddr = "2001:db8:1::253".parse().unwrap();
        let n = IpNet::holding(a, 64).unwrap();
        assert_eq!((n.to_string(), n.prefix()), ("2001:db8:1::/64".into(), 64));
        assert_eq!(IpNet::new(n.addr(), n.prefix()), Some(n));
        assert_eq!(IpNet::new(a, 64), None, "host bits set");
        let v4 = IpNet::holding("10.37.1.253".parse().unwrap(), 24).unwrap();
        assert_eq!(v4, "10.37.1.0/24".parse().unwrap());
        assert_eq!(v4.addr(), "10.37.1.0".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn prefixes() {
        let n: Ipv4Net = "192.168.0.0/24".parse().unwrap();
        assert!(n.contains("192.168.0.7".parse().unwrap()));
        assert!(!n.contains("192.168.1.7".parse().unwrap()));
        assert_eq!(n.to_string(), "192.168.0.0/24");
        let h: Ipv4Net = "10.0.0.1".parse().unwrap();
        assert_eq!(h.prefix(), 32);
        assert_eq!(h.to_string(), "10.0.0.1");
        assert!(matches!(
            "10.0.0.1/24".parse::<Ipv4Net>(),
            Err(NetParseError::HostBits { .. })
        ));
        assert!("10.0.0/24".parse::<Ipv4Net>().is_err());
        assert!("10.0.0.0/33".parse::<Ipv4Net>().is_err());
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn the_prefix_holding_an_interface_address() {
        let a: Ipv6Addr = "2001:db8:2::253".parse().unwrap();
        let n = Ipv6Net::holding(a, 64).unwrap();
        assert_eq!(n.to_string(), "2001:db8:2::/64");
        assert!(n.contains("2001:db8:2::1".parse().unwrap()));
        assert!(!n.contains("2001:db8:99::1".parse().unwrap()));
        let host = Ipv6Net::holding(a, 128).unwrap();
        assert!(host.contains(a) && !host.contains("2001:db8:2::1".parse().unwrap()));
        assert!(Ipv6Net::holding(a, 0)
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert_eq!(
            Ipv6Net::holding(a, 200),
            Some(host),
            "beyond 128: the host itself"
        );
    }

    #[test]
    fn ports() {
        assert_eq!("80".parse::<PortRange>(), Ok(PortRange { lo: 80, hi: 80 }));
        assert_eq!(
            "8000-8080".parse::<PortRange>(),
            Ok(PortRange { lo: 8000, hi: 8080 })
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("90-80".parse::<PortRange>().is_err());
        assert!("65536".parse::<PortRange>().is_err());
        assert!("http".parse::<PortRange>().is_err());
    }
}
