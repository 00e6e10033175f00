//! `MemRegistry`: an in-memory [`Registry`] with etcd's semantics (revisions, leases whose
//! revocation deletes their keys, create-if-absent, watch history) plus fault injection: an
//! outage switch, forced watch compaction and a stolen create race. For manager tests only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::Error;
use crate::registry::{
    CreateOutcome, KvEntry, Listing, PutCondition, PutOutcome, Registry, RegistryWatch, WatchEvent,
};

#[derive(Debug)]
struct State {
    config: Option<Vec<u8>>,
    kv: BTreeMap<Vec<u8>, (Vec<u8>, i64)>,
    leases: BTreeMap<i64, Duration>,
    next_lease: i64,
    revision: i64,
    history: Vec<(i64, WatchEvent)>,
    down: bool,
    compact_gen: u64,
    steal_next_create: Option<Vec<u8>>,
    race_next_create: Option<(Vec<u8>, Vec<u8>)>,
    creates: u64,
    puts: u64,
}

/// The in-memory registry (cheap to clone; clones share the store).
#[derive(Debug, Clone)]
pub(crate) struct MemRegistry {
    state: Arc<Mutex<State>>,
    wake: watch::Sender<u64>,
}

impl Default for MemRegistry {
    fn default() -> Self {
        Self::new()
    }
}

fn down_err(op: &'static str) -> Error {
    Error::Etcd {
        op,
        source: etcd_client::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "MemRegistry is down",
        )),
    }
}

impl MemRegistry {
    /// An empty store at revision 1.
    pub(crate) fn new() -> Self {
        MemRegistry {
            state: Arc::new(Mutex::new(State {
                config: None,
                kv: BTreeMap::new(),
                leases: BTreeMap::new(),
                next_lease: 1000,
                revision: 1,
                history: Vec::new(),
                down: false,
                compact_gen: 0,
                steal_next_create: None,
                race_next_create: None,
                creates: 0,
                puts: 0,
            })),
            wake: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn poke(&self) {
        self.wake.send_modify(|v| *v += 1);
    }

    /// Sets `<prefix>/config`.
    pub(crate) fn set_config(&self, text: &str) {
        self.lock().config = Some(text.as_bytes().to_vec());
    }

    /// Writes a key as another host or an admin would (`lease_id` 0 = no lease).
    pub(crate) fn put_raw(&self, key: &str, value: &[u8], lease_id: i64) {
        {
            let mut s = self.lock();
            put_locked(&mut s, key.as_bytes(), value, lease_id);
        }
        self.poke();
    }

    /// Deletes a key (like `etcdctl del`).
    pub(crate) fn delete_raw(&self, key: &str) {
        {
            let mut s = self.lock();
            delete_locked(&mut s, key.as_bytes());
        }
        self.poke();
    }

    /// Reads a key: `(value, lease_id)`.
    pub(crate) fn get_raw(&self, key: &str) -> Option<(Vec<u8>, i64)> {
        self.lock().kv.get(key.as_bytes()).cloned()
    }

    /// The TTL a lease was granted with.
    pub(crate) fn lease_ttl(&self, lease_id: i64) -> Option<Duration> {
        self.lock().leases.get(&lease_id).copied()
    }

    /// Simulates an outage (`true`) or its end. Running watches fail at once.
    pub(crate) fn set_down(&self, down: bool) {
        self.lock().down = down;
        self.poke();
    }

    /// Cancels every running watch with a compaction error (etcd does this to slow watchers).
    pub(crate) fn compact_watchers(&self) {
        self.lock().compact_gen += 1;
        self.poke();
    }

    /// Makes the next create lose its race: the key is created with `value` first.
    pub(crate) fn steal_next_create(&self, value: &[u8]) {
        self.lock().steal_next_create = Some(value.to_vec());
    }

    /// Makes another host win a race on an overlapping key: just before the next create, `key`
    /// is created with `value` (the create itself then goes through).
    pub(crate) fn race_next_create(&self, key: &str, value: &[u8]) {
        self.lock().race_next_create = Some((key.as_bytes().to_vec(), value.to_vec()));
    }

    /// Number of create and put calls so far.
    pub(crate) fn calls(&self) -> (u64, u64) {
        let s = self.lock();
        (s.creates, s.puts)
    }
}

fn put_locked(s: &mut State, key: &[u8], value: &[u8], lease_id: i64) {
    s.revision += 1;
    s.kv.insert(key.to_vec(), (value.to_vec(), lease_id));
    let rev = s.revision;
    s.history.push((
        rev,
        WatchEvent::Put(KvEntry {
            key: key.to_vec(),
            value: value.to_vec(),
            lease_id,
        }),
    ));
}

fn delete_locked(s: &mut State, key: &[u8]) {
    if s.kv.remove(key).is_some() {
        s.revision += 1;
        let rev = s.revision;
        s.history
            .push((rev, WatchEvent::Delete { key: key.to_vec() }));
    }
}

fn grant_locked(s: &mut State, ttl: Duration) -> i64 {
    s.next_lease += 1;
    let id = s.next_lease;
    s.leases.insert(id, ttl);
    id
}

impl Registry for MemRegistry {
    type Watch = MemWatch;

    async fn get_config(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let s = self.lock();
        if s.down {
            return Err(down_err("get config"));
        }
        Ok(s.config.clone())
    }

    async fn list_subnets(&mut self) -> Result<Listing, Error> {
        let s = self.lock();
        if s.down {
            return Err(down_err("list subnets"));
        }
        Ok(Listing {
            revision: s.revision,
            entries: s
                .kv
                .iter()
                .map(|(k, (v, l))| KvEntry {
                    key: k.clone(),
                    value: v.clone(),
                    lease_id: *l,
                })
                .collect(),
        })
    }

    async fn create_subnet(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<CreateOutcome, Error> {
        let out = {
            let mut s = self.lock();
            if s.down {
                return Err(down_err("create subnet"));
            }
            s.creates += 1;
            if let Some(v) = s.steal_next_create.take() {
                put_locked(&mut s, key.as_bytes(), &v, 0);
            }
            if let Some((k, v)) = s.race_next_create.take() {
                put_locked(&mut s, &k, &v, 0);
            }
            if s.kv.contains_key(key.as_bytes()) {
                CreateOutcome::Exists
            } else {
                let id = grant_locked(&mut s, ttl);
                put_locked(&mut s, key.as_bytes(), value, id);
                CreateOutcome::Created { lease_id: id, ttl }
            }
        };
        self.poke();
        Ok(out)
    }

    async fn put_subnet(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        cond: PutCondition<'_>,
    ) -> Result<PutOutcome, Error> {
        let out = {
            let mut s = self.lock();
            if s.down {
                return Err(down_err("put subnet"));
            }
            s.puts += 1;
            let holds = match cond {
                PutCondition::Always => true,
                PutCondition::ValueIs(v) => {
                    s.kv.get(key.as_bytes()).is_some_and(|(cur, _)| cur == v)
                }
            };
            if holds {
                let id = ttl.map(|t| grant_locked(&mut s, t)).unwrap_or(0);
                put_locked(&mut s, key.as_bytes(), value, id);
                PutOutcome::Written { lease_id: id, ttl }
            } else {
                PutOutcome::ConditionFailed
            }
        };
        self.poke();
        Ok(out)
    }

    async fn delete_subnet(&mut self, key: &str) -> Result<(), Error> {
        {
            let mut s = self.lock();
            if s.down {
                return Err(down_err("delete subnet"));
            }
            delete_locked(&mut s, key.as_bytes());
        }
        self.poke();
        Ok(())
    }

    async fn revoke_lease(&mut self, lease_id: i64) -> Result<(), Error> {
        {
            let mut s = self.lock();
            if s.down {
                return Err(down_err("revoke lease"));
            }
            s.leases.remove(&lease_id);
            let attached: Vec<Vec<u8>> =
                s.kv.iter()
                    .filter(|(_, (_, l))| *l == lease_id)
                    .map(|(k, _)| k.clone())
                    .collect();
            for k in attached {
                delete_locked(&mut s, &k);
            }
        }
        self.poke();
        Ok(())
    }

    async fn watch_subnets(&mut self, from_revision: i64) -> Result<MemWatch, Error> {
        let s = self.lock();
        if s.down {
            return Err(down_err("watch subnets"));
        }
        Ok(MemWatch {
            reg: self.clone(),
            next_rev: from_revision,
            gen: s.compact_gen,
            wake: self.wake.subscribe(),
        })
    }
}

/// A watch on a [`MemRegistry`].
#[derive(Debug)]
pub(crate) struct MemWatch {
    reg: MemRegistry,
    next_rev: i64,
    gen: u64,
    wake: watch::Receiver<u64>,
}

impl RegistryWatch for MemWatch {
    async fn next(&mut self) -> Result<Vec<WatchEvent>, Error> {
        loop {
            self.wake.borrow_and_update();
            {
                let s = self.reg.lock();
                if s.down {
                    return Err(down_err("watch"));
                }
                if s.compact_gen != self.gen {
                    return Err(Error::Compacted {
                        compact_revision: s.revision,
                    });
                }
                let events: Vec<WatchEvent> = s
                    .history
                    .iter()
                    .filter(|(rev, _)| *rev >= self.next_rev)
                    .map(|(_, e)| e.clone())
                    .collect();
                if !events.is_empty() {
                    self.next_rev = s.revision + 1;
                    return Ok(events);
                }
            }
            if self.wake.changed().await.is_err() {
                return Err(Error::WatchClosed {
                    reason: "registry dropped".into(),
                });
            }
        }
    }
}
