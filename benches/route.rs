//! Route table costs: [`RouteSnapshot::lookup`] per packet, building and swapping a whole
//! snapshot with [`RouteTable::replace`], and one lease change with [`RouteTable::apply`], at
//! 1 024, 16 384 and 65 536 leases.
//!
//! Leases are /24s spread evenly over 10.0.0.0/8 (every 64th /24 for 1 024 leases, every /24 for
//! 65 536), each leased by its own peer. Lookups walk a table of 65 536 pseudo-random addresses so
//! that they touch all routes rather than one hot cache line:
//! - `route_lookup/hit/N`: an address inside a random leased /24;
//! - `route_lookup/miss/N`: an address whose /24 nobody leases: a gap inside 10.0.0.0/8 for fewer
//!   leases, and 11.0.0.0/8 for 65 536 leases (they fill the whole /8).
//!
//! `route_replace/N` builds a snapshot of N routes from a prepared list, stores it in the table and
//! frees the previous one (no reader holds it): a lease change when every change rebuilds the
//! table. `route_apply/*/N` is one change through [`RouteTable::apply`], which copies the current
//! snapshot's shard index and the one shard it touches, swaps the result in and frees the previous
//! snapshot's copy of that shard:
//! - `set`: an existing subnet moves to another peer (a lease rewritten with a new PublicIP);
//! - `insert`: a subnet nobody leased appears (timed alone; it is removed again, untimed, after
//!   each one);
//! - `remove`: a leased subnet disappears (timed alone; put back, untimed, after each one).
//!
//! `route_cache_load` is what a worker pays per batch when nothing changed.
//!
//! Run: `cargo bench --bench route` (quick check: `cargo bench --bench route -- --warm-up-time 1
//! --measurement-time 3`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::{Ipv4Net, Route, RouteChange, RouteSnapshot, RouteTable};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Lease counts measured.
const LEASES: [u32; 3] = [1_024, 16_384, 65_536];
/// /24s in 10.0.0.0/8.
const SLASH24S_IN_SLASH8: u32 = 1 << 16;
/// Addresses in each lookup table (a power of two, so the index wraps with a mask).
const ADDRS: usize = 1 << 16;
const NET_10: u32 = 0x0a00_0000;
const NET_11: u32 = 0x0b00_0000;

/// `n` routes: /24 number `k * stride` of 10.0.0.0/8 → peer 172.16.0.0 + k + 1.
fn routes(n: u32) -> Vec<Route> {
    (0..n).map(|k| routes_one(n, k)).collect()
}

/// xorshift64: reproducible spread without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
}

/// Addresses inside random leased /24s (random host byte).
fn hits(n: u32) -> Vec<Ipv4Addr> {
    let stride = SLASH24S_IN_SLASH8 / n;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..ADDRS)
        .map(|_| {
            let k = rng.next() % n;
            Ipv4Addr::from(NET_10 | ((k * stride) << 8) | (rng.next() & 0xff))
        })
        .collect()
}

/// Addresses whose /24 is not leased.
fn misses(n: u32) -> Vec<Ipv4Addr> {
    let stride = SLASH24S_IN_SLASH8 / n;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    (0..ADDRS)
        .map(|_| {
            let host = rng.next() & 0xff;
            if stride > 1 {
                let k = rng.next() % n;
                let gap = 1 + rng.next() % (stride - 1);
                Ipv4Addr::from(NET_10 | ((k * stride + gap) << 8) | host)
            } else {
                Ipv4Addr::from(NET_11 | ((rng.next() % SLASH24S_IN_SLASH8) << 8) | host)
            }
        })
        .collect()
}

fn bench_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    group.throughput(Throughput::Elements(1));
    for n in LEASES {
        let snap = RouteSnapshot::build(1, routes(n)).expect("disjoint /24s");
        for (kind, addrs, hit) in [("hit", hits(n), true), ("miss", misses(n), false)] {
            assert!(
                addrs.iter().all(|a| snap.lookup(*a).is_some() == hit),
                "every {kind} address must {} a route",
                if hit { "find" } else { "miss" }
            );
            group.bench_with_input(BenchmarkId::new(kind, n), &n, |b, _| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) & (ADDRS - 1);
                    black_box(snap.lookup(black_box(addrs[i])))
                })
            });
        }
    }
    group.finish();
}

fn bench_replace(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_replace");
    for n in LEASES {
        let list = routes(n);
        let table = RouteTable::new();
        table.replace(list.iter().copied()).expect("disjoint /24s");
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| black_box(table.replace(black_box(&list).iter().copied())))
        });
        assert_eq!(table.load().len(), n as usize);
    }
    group.finish();
}

/// Route `k` of [`routes`] with the peer moved to 198.51.100.0 + `k` (+1 if `alt`).
fn moved(n: u32, k: u32, alt: bool) -> Route {
    let r = routes_one(n, k);
    Route::udp(
        r.subnet,
        SocketAddrV4::new(Ipv4Addr::from(0xc633_6400 + k + u32::from(alt)), 8285),
    )
}

/// Route `k` of [`routes`]`(n)`.
fn routes_one(n: u32, k: u32) -> Route {
    let stride = SLASH24S_IN_SLASH8 / n;
    Route::udp(
        Ipv4Net::new(Ipv4Addr::from(NET_10 | ((k * stride) << 8)), 24).expect("prefix 24 is valid"),
        SocketAddrV4::new(Ipv4Addr::from(0xac10_0000 + k + 1), 8285),
    )
}

/// A /24 nobody leases in [`routes`]`(n)`: in 11.0.0.0/8, numbered `k`.
fn unleased(k: u32) -> Route {
    Route::udp(
        Ipv4Net::new(Ipv4Addr::from(NET_11 | ((k % SLASH24S_IN_SLASH8) << 8)), 24)
            .expect("prefix 24 is valid"),
        SocketAddrV4::new(Ipv4Addr::from(0xc633_6400 + k), 8285),
    )
}

/// Times `timed` alone over `iters` rounds, running `untimed` after each.
fn timed_alone(iters: u64, mut timed: impl FnMut(u32), mut untimed: impl FnMut(u32)) -> Duration {
    let mut total = Duration::ZERO;
    for i in 0..iters {
        let k = (i % u64::from(SLASH24S_IN_SLASH8)) as u32;
        let t = Instant::now();
        timed(k);
        total += t.elapsed();
        untimed(k);
    }
    total
}

fn bench_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_apply");
    for n in LEASES {
        let table = RouteTable::new();
        table.replace(routes(n)).expect("disjoint /24s");
        group.bench_with_input(BenchmarkId::new("set", n), &n, |b, _| {
            let mut i = 0u32;
            b.iter(|| {
                i = i.wrapping_add(1);
                let r = moved(n, i % n, i / n % 2 == 1);
                black_box(table.apply([RouteChange::Set(black_box(r))]))
            })
        });
        group.bench_with_input(BenchmarkId::new("insert", n), &n, |b, _| {
            b.iter_custom(|iters| {
                timed_alone(
                    iters,
                    |k| {
                        black_box(table.apply([RouteChange::Set(unleased(k))]))
                            .expect("no overlap");
                    },
                    |k| {
                        table
                            .apply([RouteChange::Remove(unleased(k).subnet)])
                            .expect("removal");
                    },
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("remove", n), &n, |b, _| {
            b.iter_custom(|iters| {
                timed_alone(
                    iters,
                    |k| {
                        black_box(table.apply([RouteChange::Remove(routes_one(n, k % n).subnet)]))
                            .expect("removal");
                    },
                    |k| {
                        table
                            .apply([RouteChange::Set(routes_one(n, k % n))])
                            .expect("no overlap");
                    },
                )
            })
        });
        let snap = table.load();
        assert_eq!(snap.len(), n as usize, "every change was undone");
        assert!(
            hits(n).iter().all(|a| snap.lookup(*a).is_some()),
            "every leased /24 is still routed"
        );
    }
    group.finish();
}

fn bench_cache_load(c: &mut Criterion) {
    let table = RouteTable::new();
    table.replace(routes(256)).expect("disjoint /24s");
    let mut cache = table.cache();
    c.bench_function("route_cache_load", |b| {
        b.iter(|| black_box(cache.load().generation()))
    });
}

criterion_group!(
    benches,
    bench_lookup,
    bench_replace,
    bench_apply,
    bench_cache_load
);
criterion_main!(benches);
