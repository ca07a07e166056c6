//! Where `fetch` tasks may connect: the `--fetch-allow` allow-list.
//!
//! Secure by default: with no entries, no destination is allowed. An entry is
//! `IP:PORT`, `[IPv6]:PORT`, `CIDR:PORT` (`10.0.0.0/8:80`, `[fd00::/8]:443`) or
//! `HOSTNAME:PORT` (a name the operator trusts, resolved when matching); the
//! port may be `*` for any port.
//!
//! Addresses are checked after resolution, and the caller connects to the
//! very address checked (see [`crate::kinds::Fetch`]), so neither DNS
//! rebinding nor spelling tricks (`2130706433`, `::ffff:127.0.0.1`) get past
//! the list. Loopback, link-local, unspecified, broadcast and multicast
//! addresses are reachable only through an entry that names them explicitly:
//! such an address matches an address entry only if the entry's whole network
//! lies inside the same special range, so `0.0.0.0/0:*` does not allow
//! `127.0.0.1` or `169.254.169.254`, while `127.0.0.1:8080` or
//! `127.0.0.0/8:*` does allow loopback.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

/// How long resolving one host name may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The flag this policy comes from, for messages.
pub const FLAG: &str = "--fetch-allow";

/// An IP network: an address with its first `prefix` bits significant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// The network of `addr/prefix` (host bits cleared). IPv4-mapped IPv6
    /// networks (`::ffff:0:0/96` and narrower) become the IPv4 network.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Net, String> {
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 && v6.to_ipv4_mapped().is_some() => (
                IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
                prefix - 96,
            ),
            other => (other, prefix),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max} bits"));
        }
        Ok(Net {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// One address (`/32` or `/128`), canonicalised.
    pub fn host(addr: IpAddr) -> Net {
        let addr = addr.to_canonical();
        Net {
            addr,
            prefix: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }

    /// Whether all of this network lies inside `other`.
    pub fn within(&self, other: &Net) -> bool {
        self.prefix >= other.prefix && other.contains(self.addr)
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        match (self.addr, self.prefix == full) {
            (IpAddr::V4(a), true) => write!(f, "{a}"),
            (IpAddr::V4(a), false) => write!(f, "{a}/{}", self.prefix),
            (IpAddr::V6(a), true) => write!(f, "[{a}]"),
            (IpAddr::V6(a), false) => write!(f, "[{a}/{}]", self.prefix),
        }
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// The ranges reachable only through an entry that names them explicitly.
fn special_ranges() -> [Net; 9] {
    let v4 = |a: [u8; 4], p| Net {
        addr: IpAddr::V4(Ipv4Addr::from(a)),
        prefix: p,
    };
    let v6 = |a: u128, p| Net {
        addr: IpAddr::V6(Ipv6Addr::from(a)),
        prefix: p,
    };
    [
        v4([0, 0, 0, 0], 8),          // "this network", unspecified (0.0.0.0 reaches this host)
        v4([127, 0, 0, 0], 8),        // loopback
        v4([169, 254, 0, 0], 16),     // link-local (cloud metadata lives here)
        v4([224, 0, 0, 0], 4),        // multicast
        v4([255, 255, 255, 255], 32), // limited broadcast
        v6(0, 128),                   // :: unspecified
        v6(1, 128),                   // ::1 loopback
        v6(0xfe80 << 112, 10),        // fe80::/10 link-local
        v6(0xff00 << 112, 8),         // ff00::/8 multicast
    ]
}

/// The special range `ip` falls in, if any.
pub fn special_range(ip: IpAddr) -> Option<Net> {
    special_ranges().into_iter().find(|r| r.contains(ip))
}

/// `localhost`, `*.localhost` (with or without the final dot): loopback by
/// definition (RFC 6761), whatever a resolver says.
pub fn is_localhost_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    Any,
    One(u16),
}

impl Port {
    fn matches(self, port: u16) -> bool {
        match self {
            Port::Any => true,
            Port::One(p) => p == port,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Net(Net),
    /// A host name of the operator's, resolved when matching.
    Name(String),
}

/// One `--fetch-allow` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowEntry {
    pub target: Target,
    pub port: Port,
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Net(n) => write!(f, "{n}")?,
            Target::Name(n) => write!(f, "{n}")?,
        }
        match self.port {
            Port::Any => write!(f, ":*"),
            Port::One(p) => write!(f, ":{p}"),
        }
    }
}

impl AllowEntry {
    /// Whether this entry, as an address entry, allows `ip:port`. Host-name
    /// entries never match here (they need resolving; see
    /// [`FetchPolicy::allows_resolved`]).
    fn allows(&self, ip: IpAddr, port: u16) -> bool {
        let Target::Net(net) = &self.target else {
            return false;
        };
        let ip = ip.to_canonical();
        self.port.matches(port) && net.contains(ip) && special_range(ip).is_none_or(|range| net.within(&range))
    }
}

/// Parses one entry: `IP:PORT`, `[IPv6]:PORT`, `CIDR:PORT`, `[IPv6/N]:PORT`
/// or `HOSTNAME:PORT`; PORT is 1-65535 or `*`.
pub fn parse_entry(s: &str) -> Result<AllowEntry, String> {
    const EXPECTED: &str = "expected IP:PORT, [IPv6]:PORT, CIDR:PORT or HOSTNAME:PORT (PORT may be *)";
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("empty entry; {EXPECTED}"));
    }
    let (host, port, bracketed) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: no closing ']'; {EXPECTED}"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{s:?}: no port; {EXPECTED}"))?;
        (inside, port, true)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: no port; {EXPECTED}"))?;
        if host.contains(':') {
            return Err(format!("{s:?}: put IPv6 addresses in brackets, e.g. [fd00::1]:443"));
        }
        (host, port, false)
    };
    let port = match port {
        "*" => Port::Any,
        p => match p.parse::<u16>() {
            Ok(p) if p > 0 => Port::One(p),
            _ => return Err(format!("{s:?}: port {p:?} is not 1-65535 or *")),
        },
    };
    let target = if let Some((addr, len)) = host.split_once('/') {
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address (a CIDR is ADDRESS/BITS)"))?;
        if bracketed != addr.is_ipv6() {
            return Err(format!("{s:?}: only IPv6 networks go in brackets"));
        }
        let len: u8 = len
            .parse()
            .map_err(|_| format!("{s:?}: {len:?} is not a prefix length"))?;
        Target::Net(Net::new(addr, len).map_err(|e| format!("{s:?}: {e}"))?)
    } else if let Ok(addr) = host.parse::<IpAddr>() {
        if bracketed != addr.is_ipv6() {
            return Err(format!("{s:?}: only IPv6 addresses go in brackets"));
        }
        Target::Net(Net::host(addr))
    } else if bracketed {
        return Err(format!("{s:?}: {host:?} is not an IPv6 address"));
    } else {
        Target::Name(parse_host_name(host).map_err(|e| format!("{s:?}: {e}"))?)
    };
    Ok(AllowEntry { target, port })
}

fn parse_host_name(host: &str) -> Result<String, String> {
    let name = host.to_ascii_lowercase();
    let labels: Vec<&str> = name.strip_suffix('.').unwrap_or(&name).split('.').collect();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !labels.iter().all(|l| label_ok(l)) {
        return Err(format!("{host:?} is not an IP address, a CIDR or a host name"));
    }
    // `2130706433`, `0x7f.1`, `127.1`: resolvers read these as IPv4 addresses.
    let last = labels.last().copied().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x") {
        return Err(format!(
            "{host:?} reads as a numeric address; write it as a dotted IPv4 address"
        ));
    }
    Ok(name)
}

/// The `--fetch-allow` list.
#[derive(Clone, Debug, Default)]
pub struct FetchPolicy {
    entries: Arc<[AllowEntry]>,
}

impl fmt::Display for FetchPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return write!(f, "none");
        }
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A URL's host, as the `url` crate parsed it (WHATWG: `2130706433` and
/// `0x7f.1` are already `127.0.0.1` here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

/// The host and port a URL connects to.
pub fn destination(url: &reqwest::Url) -> Result<(Host, u16), String> {
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("no host")?;
    let port = url.port_or_known_default().ok_or("no port")?;
    let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Host::Ip(IpAddr::V6(v6.parse().map_err(|_| "bad IPv6 host")?).to_canonical())
    } else if let Ok(v4) = host.parse::<Ipv4Addr>() {
        Host::Ip(IpAddr::V4(v4))
    } else {
        Host::Name(host.to_string())
    };
    Ok((host, port))
}

/// `host:port` of a URL for messages (never its credentials, path or query).
pub fn display_dest(url: &reqwest::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or("?"),
        url.port_or_known_default().unwrap_or(0)
    )
}

impl FetchPolicy {
    pub fn new(entries: Vec<AllowEntry>) -> Self {
        Self {
            entries: entries.into(),
        }
    }

    /// A comma-separated list, as `--fetch-allow` takes it.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(parse_entry)
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether an address entry allows `ip:port` (host-name entries are not
    /// consulted: they need DNS).
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        self.entries.iter().any(|e| e.allows(ip, port))
    }

    /// Whether some host-name entry covers `port` (so an address refused by
    /// [`FetchPolicy::allows`] may still be allowed once that name resolves).
    fn names_cover(&self, port: u16) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.target, Target::Name(_)) && e.port.matches(port))
    }

    /// [`FetchPolicy::allows`], then the host-name entries for `port`,
    /// resolved now.
    pub async fn allows_resolved(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        if self.allows(ip, port) {
            return true;
        }
        for entry in self.entries.iter().filter(|e| e.port.matches(port)) {
            let Target::Name(name) = &entry.target else {
                continue;
            };
            if resolve(name, port).await.is_ok_and(|addrs| addrs.contains(&ip)) {
                return true;
            }
        }
        false
    }

    fn refusal(&self, dest: &str) -> String {
        if self.is_empty() {
            Self::disabled()
        } else {
            format!("destination not allowed: {dest} (allowed by {FLAG}: none match)")
        }
    }

    /// Why every destination is refused when the list is empty.
    pub fn disabled() -> String {
        format!("fetch is disabled: this service allows no destinations (start it with {FLAG} HOST:PORT)")
    }

    /// What can be decided about a URL without DNS (at submit): an empty
    /// list refuses everything; an IP literal must be allowed; `localhost`
    /// names must be allowed as loopback. Other names pass, to be checked
    /// after resolution when the task runs.
    pub fn check_without_dns(&self, url: &reqwest::Url) -> Result<(), String> {
        if self.is_empty() {
            return Err(Self::disabled());
        }
        let (host, port) = destination(url)?;
        let allowed = match &host {
            Host::Ip(ip) => self.allows(*ip, port) || self.names_cover(port),
            Host::Name(name) if is_localhost_name(name) => {
                self.allows(Ipv4Addr::LOCALHOST.into(), port)
                    || self.allows(Ipv6Addr::LOCALHOST.into(), port)
                    || self.names_cover(port)
            }
            Host::Name(_) => true,
        };
        if allowed {
            Ok(())
        } else {
            Err(self.refusal(&display_dest(url)))
        }
    }

    /// The addresses a URL's host resolves to that this policy allows, in
    /// resolver order; an error names the host and port if none is.
    pub async fn allowed_addrs(&self, url: &reqwest::Url) -> Result<Vec<IpAddr>, String> {
        if self.is_empty() {
            return Err(Self::disabled());
        }
        let (host, port) = destination(url)?;
        let candidates = match host {
            Host::Ip(ip) => vec![ip],
            Host::Name(name) => resolve(&name, port).await?,
        };
        let mut allowed = Vec::new();
        for ip in candidates {
            if !allowed.contains(&ip) && self.allows_resolved(ip, port).await {
                allowed.push(ip);
            }
        }
        if allowed.is_empty() {
            return Err(self.refusal(&display_dest(url)));
        }
        Ok(allowed)
    }
}

/// Resolves `name`, canonicalised and without duplicates.
async fn resolve(name: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| format!("cannot resolve {name}: timed out"))?
        .map_err(|e| format!("cannot resolve {name}: {e}"))?;
    let mut out = Vec::new();
    for addr in found {
        let ip = addr.ip().to_canonical();
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &str) -> FetchPolicy {
        FetchPolicy::parse(list).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).unwrap()
    }

    #[test]
    fn entries_parse_in_every_form() {
        let p = policy("10.0.0.5:8080, [fd00::1]:443,10.0.0.0/8:80,[fd00::/8]:*,svc.internal:9000,127.0.0.1:*");
        assert_eq!(
            p.to_string(),
            "10.0.0.5:8080,[fd00::1]:443,10.0.0.0/8:80,[fd00::/8]:*,svc.internal:9000,127.0.0.1:*"
        );
        // Host bits of a CIDR are dropped; mapped IPv6 becomes IPv4.
        assert_eq!(policy("10.1.2.3/8:80").to_string(), "10.0.0.0/8:80");
        assert_eq!(policy("[::ffff:127.0.0.1]:80").to_string(), "127.0.0.1:80");
        assert_eq!(policy("[::ffff:10.0.0.0/104]:80").to_string(), "10.0.0.0/8:80");
        assert_eq!(policy("Svc.Internal.:1").to_string(), "svc.internal.:1");
    }

    #[test]
    fn bad_entries_are_refused_with_a_reason() {
        for bad in [
            "",
            "10.0.0.1",
            "10.0.0.1:",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:http",
            "fd00::1:443",
            "[fd00::1]",
            "[fd00::1:443",
            "[10.0.0.1]:80",
            "10.0.0.0/33:80",
            "[fd00::/129]:80",
            "10.0.0.0/x:80",
            "*.example.com:80",
            "bad host:80",
            "2130706433:80",
            "0x7f000001:80",
            "127.1:80",
            "-x.example:80",
        ] {
            assert!(parse_entry(bad).is_err(), "{bad:?} parsed");
        }
        assert!(FetchPolicy::parse("10.0.0.1:80,").is_err());
    }

    #[test]
    fn cidr_and_port_matching() {
        let p = policy("10.0.0.0/8:80,[fd00::/8]:*,192.168.1.10:8080");
        assert!(p.allows(ip("10.200.3.4"), 80));
        assert!(!p.allows(ip("10.200.3.4"), 81));
        assert!(!p.allows(ip("11.0.0.1"), 80));
        assert!(p.allows(ip("fd12::1"), 1));
        assert!(p.allows(ip("fd12::1"), 65535));
        assert!(!p.allows(ip("fe00::1"), 1));
        assert!(p.allows(ip("192.168.1.10"), 8080));
        assert!(!p.allows(ip("192.168.1.11"), 8080));
        assert!(!p.allows(ip("192.168.1.10"), 80));
        // IPv4-mapped IPv6 is the IPv4 address.
        assert!(p.allows(ip("::ffff:10.1.1.1"), 80));
        assert!(!policy("[::/0]:*").allows(ip("10.1.1.1"), 80));
    }

    #[test]
    fn everything_does_not_cover_the_special_ranges() {
        let p = policy("0.0.0.0/0:*,[::/0]:*");
        assert!(p.allows(ip("93.184.216.34"), 80));
        assert!(p.allows(ip("10.0.0.1"), 80));
        assert!(p.allows(ip("2001:db8::1"), 443));
        for special in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "0.1.2.3",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(!p.allows(ip(special), 80), "{special} allowed by 0.0.0.0/0");
        }
        // Nor does a network that only overlaps one.
        assert!(!policy("120.0.0.0/5:*").allows(ip("127.0.0.1"), 80));
        assert!(!policy("169.0.0.0/8:*").allows(ip("169.254.169.254"), 80));
    }

    #[test]
    fn a_special_range_named_explicitly_is_allowed() {
        assert!(policy("127.0.0.1:8080").allows(ip("127.0.0.1"), 8080));
        assert!(policy("127.0.0.1:8080").allows(ip("::ffff:127.0.0.1"), 8080));
        assert!(!policy("127.0.0.1:8080").allows(ip("127.0.0.1"), 8081));
        assert!(!policy("127.0.0.1:8080").allows(ip("127.0.0.2"), 8080));
        assert!(!policy("127.0.0.1:8080").allows(ip("::1"), 8080));
        let p = policy("127.0.0.0/8:*");
        assert!(p.allows(ip("127.0.0.1"), 1) && p.allows(ip("127.3.2.1"), 65535));
        assert!(!p.allows(ip("169.254.169.254"), 80));
        assert!(policy("[::1]:80").allows(ip("::1"), 80));
        assert!(policy("169.254.169.254:80").allows(ip("169.254.169.254"), 80));
        assert!(policy("[fe80::/10]:*").allows(ip("fe80::1"), 80));
        assert!(policy("0.0.0.0:80").allows(ip("0.0.0.0"), 80));
        assert!(!policy("0.0.0.0:80").allows(ip("127.0.0.1"), 80));
    }

    #[test]
    fn every_spelling_of_a_local_address_is_refused_without_dns() {
        let p = policy("127.0.0.1:8080,0.0.0.0/0:*");
        for u in [
            "http://127.0.0.1:9/",
            "http://localhost:9/",
            "http://LOCALHOST.:9/",
            "http://app.localhost:9/",
            "http://0.0.0.0:9/",
            "http://2130706433:9/",
            "http://0x7f000001:9/",
            "http://127.1:9/",
            "http://[::1]:9/",
            "http://[::ffff:127.0.0.1]:9/",
            "http://[::ffff:7f00:1]:9/",
            "http://169.254.169.254/",
            "http://[fe80::1]/",
            "http://[::]/",
        ] {
            let err = p.check_without_dns(&url(u)).unwrap_err();
            assert!(err.contains("not allowed") && err.contains(FLAG), "{u}: {err}");
        }
        for u in [
            "http://127.0.0.1:8080/x",
            "http://localhost:8080/",
            "http://2130706433:8080/",
            "http://[::ffff:127.0.0.1]:8080/",
            "http://10.0.0.1/",
            // A name: decided after resolution.
            "http://example.internal:9/",
        ] {
            assert!(p.check_without_dns(&url(u)).is_ok(), "{u} refused");
        }
        // The parser already reads these as 127.0.0.1.
        for u in ["http://2130706433/", "http://0x7f.1/", "http://127.1/"] {
            assert_eq!(destination(&url(u)).unwrap(), (Host::Ip(ip("127.0.0.1")), 80), "{u}");
        }
        assert_eq!(
            destination(&url("http://[::ffff:127.0.0.1]:81/")).unwrap(),
            (Host::Ip(ip("127.0.0.1")), 81)
        );
    }

    #[test]
    fn an_empty_list_refuses_everything() {
        let p = FetchPolicy::default();
        assert!(!p.allows(ip("10.0.0.1"), 80));
        let err = p.check_without_dns(&url("http://example.com/")).unwrap_err();
        assert!(
            err.contains("fetch is disabled") && err.contains("--fetch-allow HOST:PORT"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn names_are_checked_after_resolution() {
        // `localhost` resolves to loopback, which this list does not allow on port 9.
        let p = policy("127.0.0.1:8080");
        let err = p.allowed_addrs(&url("http://localhost:9/")).await.unwrap_err();
        assert_eq!(
            err,
            "destination not allowed: localhost:9 (allowed by --fetch-allow: none match)"
        );
        let addrs = p.allowed_addrs(&url("http://localhost:8080/")).await.unwrap();
        assert_eq!(addrs, vec![ip("127.0.0.1")]);
        // An IP literal needs no resolving.
        let err = p.allowed_addrs(&url("http://2130706433:9/")).await.unwrap_err();
        assert!(err.contains("127.0.0.1:9"), "{err}");
    }

    #[tokio::test]
    async fn a_host_name_entry_allows_what_it_resolves_to() {
        let p = policy("localhost:8080");
        assert!(!p.allows(ip("127.0.0.1"), 8080), "names need resolving");
        assert!(p.allows_resolved(ip("127.0.0.1"), 8080).await);
        assert!(!p.allows_resolved(ip("127.0.0.1"), 8081).await);
        assert!(!p.allows_resolved(ip("127.0.0.2"), 8080).await);
        assert!(p.check_without_dns(&url("http://127.0.0.1:8080/")).is_ok());
        assert!(p.check_without_dns(&url("http://127.0.0.1:8081/")).is_err());
    }
}
