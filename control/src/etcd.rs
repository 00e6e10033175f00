//! [`Registry`] on etcd v3 (etcd-client), laid out exactly like flannel (docs/compatibility.md §3).
//!
//! * Config: `<prefix>/config`; leases: `<prefix>/subnets/<key>` (`path.Join` semantics for the
//!   prefix).
//! * Create: `LeaseGrant(86400)` then txn `If(Version(key) == 0) Then(Put(key, value, lease))`;
//!   the grant is revoked when the txn fails or does not succeed (as flannel does).
//! * Renew: **a fresh 24 h grant and a put**, as flannel's `updateSubnet` does, rather than
//!   KeepAlive. Reasons: it needs no long-lived keep-alive stream (one RPC pair a day instead),
//!   other hosts see the same PUT event a flannel renewal produces, and the renewal is a txn
//!   comparing the key's value with ours, so a renewal can never overwrite a subnet another host
//!   took after our key was deleted (flannel's unconditional put can). The superseded etcd lease
//!   is revoked afterwards (flannel leaves it to expire; it has no keys left either way).
//! * List: `Get(<prefix>/subnets/)` in pages of [`LIST_PAGE`] keys, every page at the first
//!   page's revision (one snapshot); a single response for 65 536 leases (about 12 MB) would
//!   exceed the client's 4 MiB message limit.
//! * Watch: `Watch(<prefix>/subnets/, prefix, start_revision, prev_kv)` with `require_leader`;
//!   a compacted start revision or server-side cancel ends the watch with
//!   [`Error::Compacted`]/[`Error::WatchClosed`] and the manager re-lists.
//! * Connection: endpoints as given; TLS when any of ca/cert/key files is given (cert and key
//!   must come together; a CA alone verifies the server only, which flannel does not support);
//!   username/password with automatic token refresh; per-request timeout 5 s and HTTP/2
//!   keep-alive pings so a dead connection is noticed within ~15 s. The underlying channel
//!   reconnects by itself; the manager re-lists and re-watches after any error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};

use crate::error::Error;
use crate::registry::{
    CreateOutcome, KvEntry, Listing, PutCondition, PutOutcome, Registry, RegistryWatch, WatchEvent,
};

/// flannel's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// Timeout applied to each etcd request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout for establishing a connection to an endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys per page of the lease listing (a page of ordinary leases is well under 1 MiB).
pub const LIST_PAGE: i64 = 4096;
/// HTTP/2 keep-alive ping interval (etcd refuses pings more often than every 5 s).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keep-alive ping may go unanswered.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach etcd (flannel's `--etcd-*` flags). Its `Debug` output never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Endpoint URLs (`http://127.0.0.1:2379`, `https://...`).
    pub endpoints: Vec<String>,
    /// Key prefix (`/coreos.com/network`).
    pub prefix: String,
    /// CA bundle (PEM) to verify the server.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM).
    pub key_file: Option<PathBuf>,
    /// Username for etcd authentication.
    pub username: Option<String>,
    /// Password for etcd authentication.
    pub password: Option<String>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec![
                "http://127.0.0.1:4001".to_owned(),
                "http://127.0.0.1:2379".to_owned(),
            ],
            prefix: DEFAULT_PREFIX.to_owned(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
        }
    }
}

/// Go's `path.Join(prefix, name)`: cleans `//`, `.` and `..`.
pub fn join_key(prefix: &str, name: &str) -> String {
    // Go skips empty elements before joining.
    let joined = [prefix, name]
        .iter()
        .filter(|e| !e.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/");
    let rooted = joined.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            s => parts.push(s),
        }
    }
    let body = parts.join("/");
    if rooted {
        format!("/{body}")
    } else {
        body
    }
}

/// The end of the key range of all keys starting with `prefix` (etcd's prefix range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from the prefix on.
    vec![0]
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        op: "read TLS file",
        path: path.to_path_buf(),
        source,
    })
}

/// Builds the client options (TLS files are read here, so a bad path is reported at once).
fn connect_options(opts: &EtcdOptions) -> Result<ConnectOptions, Error> {
    if opts.endpoints.is_empty() {
        return Err(Error::Options("no etcd endpoints given".into()));
    }
    let mut co = ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_require_leader(true);
    let tls_wanted = opts.ca_file.is_some() || opts.cert_file.is_some() || opts.key_file.is_some();
    if tls_wanted {
        if let Some(ep) = opts.endpoints.iter().find(|e| e.starts_with("http://")) {
            return Err(Error::Options(format!(
                "etcd TLS files given but endpoint {ep} is not https://"
            )));
        }
        let mut tls = TlsOptions::new();
        if let Some(ca) = &opts.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_file(ca)?));
        }
        match (&opts.cert_file, &opts.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read_file(cert)?, read_file(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(Error::Options(
                    "--etcd-certfile and --etcd-keyfile must be given together".into(),
                ))
            }
        }
        co = co.with_tls(tls);
    } else {
        tracing::warn!("no certificate provided: connecting to etcd with http. This is insecure");
    }
    match (&opts.username, &opts.password) {
        (Some(u), p) if !u.is_empty() => {
            co = co
                .with_user(u.clone(), p.clone().unwrap_or_default())
                .with_auto_token_refresh(true);
        }
        _ => {}
    }
    Ok(co)
}

/// The etcd v3 registry.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
    config_key: String,
    subnets_prefix: String,
}

impl std::fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("config_key", &self.config_key)
            .field("subnets_prefix", &self.subnets_prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdRegistry {
    /// Connects (lazily: without authentication no RPC is made until the first request).
    ///
    /// Fails at once, not retryably, for bad options or unreadable TLS files.
    pub async fn connect(opts: &EtcdOptions) -> Result<EtcdRegistry, Error> {
        let co = connect_options(opts)?;
        let client = Client::connect(&opts.endpoints, Some(co))
            .await
            .map_err(Error::etcd("connect"))?;
        Ok(EtcdRegistry {
            client,
            config_key: join_key(&opts.prefix, "config"),
            subnets_prefix: join_key(&opts.prefix, "subnets") + "/",
        })
    }

    /// The full key of the network config (`/coreos.com/network/config`).
    pub fn config_key(&self) -> &str {
        &self.config_key
    }

    /// The lease key prefix (`/coreos.com/network/subnets/`).
    pub fn subnets_prefix(&self) -> &str {
        &self.subnets_prefix
    }

    /// The underlying client (for tests and tools).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.subnets_prefix)
    }

    fn strip<'a>(&self, key: &'a [u8]) -> &'a [u8] {
        key.strip_prefix(self.subnets_prefix.as_bytes())
            .unwrap_or(key)
    }

    async fn grant(&mut self, ttl: Duration) -> Result<(i64, Duration), Error> {
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        let r = self
            .client
            .lease_grant(ttl_secs, None)
            .await
            .map_err(Error::etcd("lease grant"))?;
        Ok((r.id(), Duration::from_secs(r.ttl().max(0).unsigned_abs())))
    }

    async fn revoke_quietly(&mut self, lease_id: i64) {
        if let Err(e) = self.revoke_lease(lease_id).await {
            tracing::debug!(lease_id, error = %e, "revoking an unused etcd lease failed");
        }
    }
}

impl Registry for EtcdRegistry {
    type Watch = EtcdWatch;

    async fn get_config(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let key = self.config_key.clone();
        let mut r = self
            .client
            .get(key, None)
            .await
            .map_err(Error::etcd("get config"))?;
        Ok(r.take_kvs()
            .into_iter()
            .next()
            .map(|kv| kv.into_key_value().1))
    }

    async fn list_subnets(&mut self) -> Result<Listing, Error> {
        // In pages of LIST_PAGE keys, all at the revision of the first page: one response holding
        // 65 536 leases (about 12 MB) exceeds the client's 4 MiB message limit.
        let prefix = self.subnets_prefix.clone();
        let end = prefix_end(prefix.as_bytes());
        let mut start = prefix.into_bytes();
        let mut revision = 0;
        let mut entries = Vec::new();
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE)
                .with_revision(revision);
            let mut r = self
                .client
                .get(start.clone(), Some(opts))
                .await
                .map_err(Error::etcd("list subnets"))?;
            if revision == 0 {
                // Without the first page's revision the later pages would read newer data:
                // an inconsistent listing. (A revision compacted between pages fails the next
                // page with a retryable error, and the listing starts again.)
                revision = r
                    .header()
                    .map(|h| h.revision())
                    .filter(|&rev| rev > 0)
                    .ok_or(Error::ListIncomplete {
                        reason: "a response without its revision",
                    })?;
            }
            let more = r.more();
            let kvs = r.take_kvs();
            if let Some(last) = kvs.last() {
                start = last.key().to_vec();
                start.push(0);
            }
            let page = kvs.len();
            entries.extend(kvs.into_iter().map(|kv| {
                let lease_id = kv.lease();
                let (k, v) = kv.into_key_value();
                KvEntry {
                    key: self.strip(&k).to_vec(),
                    value: v,
                    lease_id,
                }
            }));
            if !more || page == 0 {
                return Ok(Listing { revision, entries });
            }
        }
    }

    async fn create_subnet(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<CreateOutcome, Error> {
        let (lease_id, granted) = self.grant(ttl).await?;
        let full = self.full_key(key);
        let txn = Txn::new()
            .when([Compare::version(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                full,
                value.to_vec(),
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        match self.client.txn(txn).await {
            Ok(r) if r.succeeded() => Ok(CreateOutcome::Created {
                lease_id,
                ttl: granted,
            }),
            Ok(_) => {
                self.revoke_quietly(lease_id).await;
                Ok(CreateOutcome::Exists)
            }
            Err(e) => {
                self.revoke_quietly(lease_id).await;
                Err(Error::Etcd {
                    op: "create subnet",
                    source: e,
                })
            }
        }
    }

    async fn put_subnet(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        cond: PutCondition<'_>,
    ) -> Result<PutOutcome, Error> {
        let (lease_id, granted) = match ttl {
            Some(ttl) => {
                let (id, g) = self.grant(ttl).await?;
                (id, Some(g))
            }
            None => (0, None),
        };
        let full = self.full_key(key);
        let put_opts = (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
        let mut txn = Txn::new();
        if let PutCondition::ValueIs(expected) = cond {
            txn = txn.when([Compare::value(
                full.clone(),
                CompareOp::Equal,
                expected.to_vec(),
            )]);
        }
        let txn = txn.and_then([TxnOp::put(full, value.to_vec(), put_opts)]);
        match self.client.txn(txn).await {
            Ok(r) if r.succeeded() => Ok(PutOutcome::Written {
                lease_id,
                ttl: granted,
            }),
            Ok(_) => {
                if lease_id != 0 {
                    self.revoke_quietly(lease_id).await;
                }
                Ok(PutOutcome::ConditionFailed)
            }
            Err(e) => {
                if lease_id != 0 {
                    self.revoke_quietly(lease_id).await;
                }
                Err(Error::Etcd {
                    op: "put subnet",
                    source: e,
                })
            }
        }
    }

    async fn delete_subnet(&mut self, key: &str) -> Result<(), Error> {
        let full = self.full_key(key);
        self.client
            .delete(full, None)
            .await
            .map_err(Error::etcd("delete subnet"))?;
        Ok(())
    }

    async fn revoke_lease(&mut self, lease_id: i64) -> Result<(), Error> {
        match self.client.lease_revoke(lease_id).await {
            Ok(_) => Ok(()),
            // NOT_FOUND (code 5): already expired or revoked.
            Err(etcd_client::Error::GRpcStatus(s)) if s.code() as i32 == 5 => Ok(()),
            Err(e) => Err(Error::Etcd {
                op: "revoke lease",
                source: e,
            }),
        }
    }

    async fn watch_subnets(&mut self, from_revision: i64) -> Result<EtcdWatch, Error> {
        let prefix = self.subnets_prefix.clone();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision)
            .with_prev_key();
        let stream = self
            .client
            .watch(prefix.clone(), Some(opts))
            .await
            .map_err(Error::etcd("watch subnets"))?;
        Ok(EtcdWatch { stream, prefix })
    }
}

/// A running etcd watch on `<prefix>/subnets/`.
#[derive(Debug)]
pub struct EtcdWatch {
    stream: WatchStream,
    prefix: String,
}

impl RegistryWatch for EtcdWatch {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, Error> {
        loop {
            let resp = match self.stream.message().await {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Err(Error::WatchClosed {
                        reason: "stream ended".into(),
                    })
                }
                Err(e) => {
                    return Err(Error::Etcd {
                        op: "watch",
                        source: e,
                    })
                }
            };
            if resp.compact_revision() != 0 {
                return Err(Error::Compacted {
                    compact_revision: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                return Err(Error::WatchClosed {
                    reason: format!("cancelled by server: {}", resp.cancel_reason()),
                });
            }
            if resp.events().is_empty() {
                // The "created" confirmation or a progress notification.
                continue;
            }
            let strip = |k: &[u8]| k.strip_prefix(self.prefix.as_bytes()).unwrap_or(k).to_vec();
            let events = resp
                .events()
                .iter()
                .filter_map(|ev| {
                    let kv = ev.kv()?;
                    Some(match ev.event_type() {
                        EventType::Put => WatchEvent::Put(KvEntry {
                            key: strip(kv.key()),
                            value: kv.value().to_vec(),
                            lease_id: kv.lease(),
                        }),
                        EventType::Delete => WatchEvent::Delete {
                            key: strip(kv.key()),
                        },
                    })
                })
                .collect();
            return Ok(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_password() {
        let o = EtcdOptions {
            username: Some("weft".into()),
            password: Some("s3cr3t-pw".into()),
            ..EtcdOptions::default()
        };
        let text = format!("{o:?}");
        assert!(
            !text.contains("s3cr3t-pw") && text.contains("<redacted>"),
            "{text}"
        );
        assert!(text.contains("weft"), "{text}");
    }

    #[test]
    fn path_join_like_go() {
        assert_eq!(
            join_key("/coreos.com/network", "config"),
            "/coreos.com/network/config"
        );
        assert_eq!(
            join_key("/coreos.com/network/", "subnets"),
            "/coreos.com/network/subnets"
        );
        assert_eq!(join_key("//a//b/./c/../", "config"), "/a/b/config");
        assert_eq!(join_key("", "config"), "config");
        assert_eq!(join_key("/", "config"), "/config");
    }

    #[test]
    fn prefix_range_end() {
        assert_eq!(
            prefix_end(b"/coreos.com/network/subnets/"),
            b"/coreos.com/network/subnets0"
        );
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn option_validation() {
        let mut o = EtcdOptions::default();
        assert!(connect_options(&o).is_ok());
        o.endpoints.clear();
        assert!(matches!(connect_options(&o), Err(Error::Options(_))));
        let mut o = EtcdOptions {
            endpoints: vec!["https://127.0.0.1:2379".into()],
            cert_file: Some("/nonexistent/cert.pem".into()),
            ..EtcdOptions::default()
        };
        assert!(matches!(connect_options(&o), Err(Error::Options(m)) if m.contains("together")));
        o.key_file = Some("/nonexistent/key.pem".into());
        match connect_options(&o) {
            Err(e @ Error::Io { .. }) => {
                assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
                assert!(!e.is_retryable());
            }
            other => panic!("{other:?}"),
        }
        o.endpoints = vec!["http://127.0.0.1:2379".into()];
        assert!(matches!(connect_options(&o), Err(Error::Options(m)) if m.contains("not https")));
    }
}
