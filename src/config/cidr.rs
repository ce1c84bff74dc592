//! An address block as written in the config (`"192.0.2.0/24"`, `"2001:db8::/32"`, or one address), for the
//! allow-lists.

use std::net::IpAddr;

/// An IPv4 or IPv6 prefix. An IPv4 block also matches the IPv4-mapped IPv6 form of its addresses (a dual-stack
/// listener sees IPv4 clients that way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.trim().parse().map_err(|_| format!("`{s}` is not an address or address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l.trim().parse::<u8>().ok().filter(|l| *l <= max).ok_or(format!("`{s}`: prefix over {max}"))?,
            None => max,
        };
        Ok(Cidr { addr, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.len),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.len),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let (whole, rest) = (usize::from(len / 8), len % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

#[cfg(test)]
mod tests {
    use super::Cidr;

    #[test]
    fn blocks_match_their_addresses_only() {
        let net: Cidr = "192.0.2.0/25".parse().unwrap();
        assert!(net.contains("192.0.2.127".parse().unwrap()));
        assert!(!net.contains("192.0.2.128".parse().unwrap()));
        assert!(net.contains("::ffff:192.0.2.1".parse().unwrap()), "IPv4-mapped");
        let one: Cidr = "2001:db8::7".parse().unwrap();
        assert_eq!(one.len, 128);
        assert!(one.contains("2001:db8::7".parse().unwrap()) && !one.contains("2001:db8::8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("203.0.113.9".parse().unwrap()));
    }
}
