//! Turns a [`Spec`] into replica addresses, again every time it is asked:
//! DNS names are looked up afresh and endpoint files read afresh, so the
//! replica set can change with no restart of the gateway.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::spec::{Endpoint, Source, Spec};

/// Resolves a spec again and again, remembering what each entry resolved to
/// last. An entry that fails now (a DNS error, an unreadable or empty file)
/// keeps its last addresses, so a DNS hiccup, a file caught half-written or
/// one decommissioned host never empties the set, and the other entries
/// still update.
pub struct Resolver {
    spec: Spec,
    /// Last addresses of each `host:port` entry.
    last: HashMap<Endpoint, BTreeSet<String>>,
    /// Last entries each file listed.
    files: HashMap<PathBuf, Vec<Endpoint>>,
}

impl Resolver {
    pub fn new(spec: Spec) -> Self {
        Self {
            spec,
            last: HashMap::new(),
            files: HashMap::new(),
        }
    }

    /// Every replica address (`http://IP:PORT`) the spec names now (or last
    /// named, entry by entry).
    pub async fn resolve(&mut self) -> BTreeSet<String> {
        let mut entries: Vec<Endpoint> = Vec::new();
        for source in self.spec.sources.clone() {
            match source {
                Source::Endpoint(endpoint) => entries.push(endpoint),
                Source::File(path) => entries.extend(self.file_entries(&path).await),
            }
        }
        let mut out = BTreeSet::new();
        let mut next = HashMap::new();
        for endpoint in entries {
            let addrs = match tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await {
                Ok(addrs) => addrs.map(|a| format!("http://{a}")).collect(),
                Err(err) => {
                    tracing::warn!(flag = self.spec.flag, host = endpoint.host, error = %err, "cannot resolve; keeping its last addresses");
                    self.last.get(&endpoint).cloned().unwrap_or_default()
                }
            };
            out.extend(addrs.iter().cloned());
            next.insert(endpoint, addrs);
        }
        self.last = next;
        out
    }

    /// The entries a file lists now; its last ones if it cannot be read or
    /// lists none.
    async fn file_entries(&mut self, path: &Path) -> Vec<Endpoint> {
        let listed: Result<Vec<Endpoint>, String> = match tokio::fs::read_to_string(path).await {
            Err(err) => Err(err.to_string()),
            Ok(text) => {
                let entries: Vec<Endpoint> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .filter_map(|line| match Endpoint::parse(line) {
                        Ok(endpoint) => Some(endpoint),
                        Err(_) => {
                            tracing::warn!(flag = self.spec.flag, file = %path.display(), line, "not an endpoint; skipped");
                            None
                        }
                    })
                    .collect();
                if entries.is_empty() {
                    Err("it lists no endpoint".into())
                } else {
                    Ok(entries)
                }
            }
        };
        match listed {
            Ok(entries) => {
                self.files.insert(path.to_path_buf(), entries.clone());
                entries
            }
            Err(err) => {
                tracing::warn!(flag = self.spec.flag, file = %path.display(), error = %err, "cannot use the endpoints file; keeping its last entries");
                self.files.get(path).cloned().unwrap_or_default()
            }
        }
    }
}
