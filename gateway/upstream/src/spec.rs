//! Endpoint specs: what an operator writes to name a service's replicas,
//! parsed and checked once at start-up.
//!
//! A spec is a comma-separated list whose entries are `http://HOST:PORT`
//! (HOST may be a DNS name listing several addresses, such as a Kubernetes
//! headless service) or `@PATH` (a file of such entries, one per line). What
//! they resolve to is the [`crate::resolver`]'s business, again and again.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("--{flag}: no endpoint given")]
    Empty { flag: &'static str },
    #[error("--{flag}: {entry:?} is not an endpoint (expected http://HOST:PORT or @FILE): {reason}")]
    Invalid {
        flag: &'static str,
        entry: String,
        reason: String,
    },
}

/// One entry of a spec.
#[derive(Clone, Debug)]
pub enum Source {
    /// `http://HOST:PORT`.
    Endpoint(Endpoint),
    /// `@PATH`: a file listing endpoints.
    File(PathBuf),
}

/// `http://HOST:PORT`, HOST not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `http://HOST:PORT` (a bare IPv6 host in brackets).
    pub fn parse(entry: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = entry.parse().map_err(|e: http::uri::InvalidUri| e.to_string())?;
        if uri.scheme_str() != Some("http") {
            return Err("the scheme must be http".into());
        }
        let host = uri
            .host()
            .ok_or("no host")?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let port = uri.port_u16().ok_or("no port")?;
        Ok(Endpoint { host, port })
    }
}

/// A parsed endpoint spec.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The flag it came from, without its dashes, to name in messages.
    pub flag: &'static str,
    pub sources: Vec<Source>,
}

impl Spec {
    pub fn parse(flag: &'static str, spec: &str) -> Result<Spec, SpecError> {
        let sources = spec
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| match entry.strip_prefix('@') {
                Some(path) => Ok(Source::File(PathBuf::from(path))),
                None => Endpoint::parse(entry)
                    .map(Source::Endpoint)
                    .map_err(|reason| SpecError::Invalid {
                        flag,
                        entry: entry.into(),
                        reason,
                    }),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if sources.is_empty() {
            return Err(SpecError::Empty { flag });
        }
        Ok(Spec { flag, sources })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_endpoints_or_files() {
        let spec = Spec::parse("items", " http://a:1 ,@/etc/items, http://[::1]:2").unwrap();
        assert_eq!(spec.sources.len(), 3);
        assert!(matches!(&spec.sources[1], Source::File(p) if p == &PathBuf::from("/etc/items")));
        assert!(matches!(&spec.sources[2], Source::Endpoint(e) if e.host == "::1" && e.port == 2));
    }

    #[test]
    fn a_bad_entry_names_its_flag() {
        let err = Spec::parse("items", "https://a:1").unwrap_err().to_string();
        assert!(err.starts_with("--items: \"https://a:1\""), "{err}");
        assert!(Spec::parse("cache", " , ").unwrap_err().to_string().contains("--cache"));
        assert!(Spec::parse("cache", "http://a").is_err(), "no port");
    }
}
