//! Receive spread by inner flow: a classic-BPF program that picks, for every datagram reaching the
//! workers' `SO_REUSEPORT` socket group, the worker whose socket receives it.
//!
//! Every datagram from one peer host carries the same outer 4-tuple (both ends use port 8285 or
//! 8472), so the kernel's own choice (a hash of that 4-tuple) puts all of one peer's traffic on one
//! worker. This program looks inside instead: it hashes the inner IPv4 addresses and, for TCP and
//! UDP, the inner ports, and returns the hash modulo the number of workers. Every datagram of one
//! inner flow gets the same worker (so its packets are not reordered between workers), different
//! flows spread. The wire does not change, so flannel peers are unaffected. One limit: with UDP
//! GRO on a physical underlay the kernel steers a merged run of datagrams by its first one
//! (docs/architecture.md, receive spread).
//!
//! What the kernel hands the program (net/core/sock_reuseport.c, `run_bpf_filter`, called from the
//! UDP socket lookup with `hdr_len = sizeof(struct udphdr)`): the datagram's data pulled past the
//! UDP header, so absolute load offsets count from the first byte of the UDP payload (for the udp
//! wire the inner IPv4 header, for vxlan the VXLAN header). A load beyond the data ends the program
//! with return value 0 (classic BPF), and a return value not below the number of sockets in the
//! group makes the kernel fall back to its 4-tuple hash. The group's sockets are indexed in the
//! order they were bound, which is the workers' order ([`crate::Dataplane::start`] binds worker 0's
//! socket first).
//!
//! Packets the program does not hash go to worker 0 (a fixed fallback: one place, no reordering
//! among them): not IPv4 (vxlan: an inner Ethernet type other than IPv4), IPv4 fragments (only the
//! first would carry ports; sending all fragments to one worker keeps a fragmented datagram's parts
//! together), and datagrams too short to hold the fields read.
//!
//! [`program`] builds the instructions in safe code; [`flow_index`] is the same function in Rust,
//! which the tests check the program against (through a small interpreter here, and through the
//! kernel in tests/spread.rs).

use crate::wire::Wire;
use libc::sock_filter;

/// How datagrams from peers are spread over the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxSpread {
    /// By inner flow: the program of [`program`] is attached to the socket group.
    InnerFlow,
    /// By the kernel's hash of the outer addresses and ports: one peer host's traffic reaches one
    /// worker (attaching the program failed).
    OuterHash,
    /// One worker: nothing to spread.
    OneWorker,
}

impl RxSpread {
    /// Stable snake_case name, as logs and metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            RxSpread::InnerFlow => "inner_flow",
            RxSpread::OuterHash => "outer_hash",
            RxSpread::OneWorker => "one_worker",
        }
    }
}

/// Multiplier of the final mix (2^32 / golden ratio, odd): spreads the XOR of addresses and
/// ports over all 32 bits before the high half is folded into the low half.
const MIX: u32 = 0x9E37_79B1;

/// Offset of the inner IPv4 header in the UDP payload of `wire`: 0 for udp, 22 for vxlan.
pub fn inner_offset(wire: Wire) -> u32 {
    wire.header_len() as u32
}

/// One instruction, with jumps to labels (resolved by [`assemble`]).
#[derive(Debug, Clone, Copy)]
enum Ins {
    /// A non-jump statement.
    Stmt(u32, u32),
    /// Conditional jump: code, k, label if true, label if false.
    Jump(u32, u32, Label, Label),
    /// Unconditional jump to a label.
    Ja(Label),
    /// Marks the position of a label (emits nothing).
    Mark(Label),
}

/// A jump target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    /// The next instruction.
    Next,
    Fallback,
    Ports,
    NoPorts,
    Mix,
}

fn stmt(code: u32, k: u32) -> Ins {
    Ins::Stmt(code, k)
}

/// Resolves labels into relative jump offsets.
fn assemble(ins: &[Ins]) -> Vec<sock_filter> {
    // Position of each emitted instruction and of each label.
    let mut at = Vec::new();
    let mut pos = 0usize;
    for i in ins {
        match i {
            Ins::Mark(l) => at.push((*l, pos)),
            _ => pos += 1,
        }
    }
    let target = |l: Label, me: usize| -> u32 {
        if l == Label::Next {
            return 0;
        }
        let (_, p) = at
            .iter()
            .find(|(m, _)| *m == l)
            .expect("every label used is marked");
        assert!(*p > me, "classic BPF jumps only forward");
        (p - me - 1) as u32
    };
    let mut out = Vec::with_capacity(pos);
    for i in ins {
        let me = out.len();
        match *i {
            Ins::Mark(_) => continue,
            Ins::Stmt(code, k) => out.push(sock_filter {
                code: code as u16,
                jt: 0,
                jf: 0,
                k,
            }),
            Ins::Jump(code, k, t, f) => {
                let (jt, jf) = (target(t, me), target(f, me));
                out.push(sock_filter {
                    code: code as u16,
                    jt: u8::try_from(jt).expect("jump within 255 instructions"),
                    jf: u8::try_from(jf).expect("jump within 255 instructions"),
                    k,
                });
            }
            Ins::Ja(l) => out.push(sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JA) as u16,
                jt: 0,
                jf: 0,
                k: target(l, me),
            }),
        }
    }
    out
}

/// The program for `wire` and `workers` sockets (`workers` ≥ 1): returns the index of the socket
/// that receives each datagram, as [`flow_index`] computes it.
pub fn program(wire: Wire, workers: u32) -> Vec<sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K,
        BPF_LD, BPF_LDX, BPF_MEM, BPF_MISC, BPF_MOD, BPF_MSH, BPF_MUL, BPF_RET, BPF_RSH, BPF_ST,
        BPF_TAX, BPF_W, BPF_X, BPF_XOR,
    };
    let b = inner_offset(wire);
    let mut p = Vec::with_capacity(32);
    if matches!(wire, Wire::Vxlan { .. }) {
        // The inner Ethernet type (after the 8-byte VXLAN header and both MACs) must be IPv4.
        p.push(stmt(BPF_LD | BPF_H | BPF_ABS, b - 2));
        p.push(Ins::Jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            0x0800,
            Label::Next,
            Label::Fallback,
        ));
    }
    p.extend([
        // Version 4.
        stmt(BPF_LD | BPF_B | BPF_ABS, b),
        stmt(BPF_ALU | BPF_AND | BPF_K, 0xf0),
        Ins::Jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            0x40,
            Label::Next,
            Label::Fallback,
        ),
        // Not a fragment: MF clear and fragment offset 0.
        stmt(BPF_LD | BPF_H | BPF_ABS, b + 6),
        Ins::Jump(
            BPF_JMP | BPF_JSET | BPF_K,
            0x3fff,
            Label::Fallback,
            Label::Next,
        ),
        // M[0] = source ^ destination.
        stmt(BPF_LD | BPF_W | BPF_ABS, b + 16),
        stmt(BPF_MISC | BPF_TAX, 0),
        stmt(BPF_LD | BPF_W | BPF_ABS, b + 12),
        stmt(BPF_ALU | BPF_XOR | BPF_X, 0),
        stmt(BPF_ST, 0),
        // TCP or UDP: fold in the ports.
        stmt(BPF_LD | BPF_B | BPF_ABS, b + 9),
        Ins::Jump(BPF_JMP | BPF_JEQ | BPF_K, 6, Label::Ports, Label::Next),
        Ins::Jump(BPF_JMP | BPF_JEQ | BPF_K, 17, Label::Ports, Label::NoPorts),
        Ins::Mark(Label::NoPorts),
        stmt(BPF_LD | BPF_MEM, 0),
        Ins::Ja(Label::Mix),
        Ins::Mark(Label::Ports),
        // X = 4 * IHL; A = the ports word (source << 16 | destination) after the IPv4 header.
        stmt(BPF_LDX | BPF_B | BPF_MSH, b),
        stmt(BPF_LD | BPF_W | BPF_IND, b),
        stmt(BPF_MISC | BPF_TAX, 0),
        stmt(BPF_LD | BPF_MEM, 0),
        stmt(BPF_ALU | BPF_XOR | BPF_X, 0),
        Ins::Mark(Label::Mix),
        // A = A * MIX; A ^= A >> 16; A %= workers.
        stmt(BPF_ALU | BPF_MUL | BPF_K, MIX),
        stmt(BPF_MISC | BPF_TAX, 0),
        stmt(BPF_ALU | BPF_RSH | BPF_K, 16),
        stmt(BPF_ALU | BPF_XOR | BPF_X, 0),
        stmt(BPF_ALU | BPF_MOD | BPF_K, workers.max(1)),
        stmt(BPF_RET | BPF_A, 0),
        Ins::Mark(Label::Fallback),
        stmt(BPF_RET | BPF_K, 0),
    ]);
    assemble(&p)
}

fn be32(d: &[u8], at: usize) -> Option<u32> {
    let b = d.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn be16(d: &[u8], at: usize) -> Option<u16> {
    let b = d.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// The worker (`0..workers`) the program of [`program`] picks for a datagram whose UDP payload is
/// `payload` (0 for what it does not hash, see the module documentation).
pub fn flow_index(payload: &[u8], wire: Wire, workers: u32) -> u32 {
    let b = inner_offset(wire) as usize;
    if matches!(wire, Wire::Vxlan { .. }) && be16(payload, b - 2) != Some(0x0800) {
        return 0;
    }
    flow_key(payload.get(b..).unwrap_or_default()) % workers.max(1)
}

/// The 32-bit hash the program takes modulo the number of workers, of the IPv4 packet `ip` (from
/// its first header byte): of its addresses and, for TCP and UDP, its ports. 0 for what is not
/// hashed (not IPv4, a fragment, too short). Packets of one flow have one key, so a sender that
/// never mixes keys in one UDP GSO message keeps each message to one receiving worker.
#[inline]
pub fn flow_key(ip: &[u8]) -> u32 {
    key(ip).unwrap_or(0)
}

#[inline]
fn key(d: &[u8]) -> Option<u32> {
    let ver = *d.first()?;
    if ver & 0xf0 != 0x40 || be16(d, 6)? & 0x3fff != 0 {
        return Some(0);
    }
    let mut h = be32(d, 16)? ^ be32(d, 12)?;
    let proto = *d.get(9)?;
    if proto == 6 || proto == 17 {
        h ^= be32(d, usize::from(ver & 0x0f) * 4)?;
    }
    let a = h.wrapping_mul(MIX);
    Some(a ^ (a >> 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for the instructions [`program`] uses, with the kernel's rules for
    /// socket programs: absolute and indirect loads count from the start of `data`, a load beyond
    /// it returns 0 from the program.
    fn run(prog: &[sock_filter], data: &[u8]) -> u32 {
        use libc::*;
        let (mut a, mut x) = (0u32, 0u32);
        let mut mem = [0u32; 16];
        let mut pc = 0usize;
        let load = |at: u32, size: u32| -> Option<u32> {
            let at = at as usize;
            match size {
                BPF_W => be32(data, at),
                BPF_H => be16(data, at).map(u32::from),
                BPF_B => data.get(at).map(|&v| u32::from(v)),
                _ => panic!("size {size:#x}"),
            }
        };
        loop {
            let i = prog[pc];
            let code = u32::from(i.code);
            pc += 1;
            let class = code & 0x07;
            match class {
                BPF_LD => {
                    let size = code & 0x18;
                    match code & 0xe0 {
                        BPF_ABS => match load(i.k, size) {
                            Some(v) => a = v,
                            None => return 0,
                        },
                        BPF_IND => match load(x.wrapping_add(i.k), size) {
                            Some(v) => a = v,
                            None => return 0,
                        },
                        BPF_MEM => a = mem[i.k as usize],
                        m => panic!("ld mode {m:#x}"),
                    }
                }
                BPF_LDX => {
                    assert_eq!(code & 0xe0, BPF_MSH);
                    match load(i.k, BPF_B) {
                        Some(v) => x = 4 * (v & 0x0f),
                        None => return 0,
                    }
                }
                BPF_ST => mem[i.k as usize] = a,
                BPF_ALU => {
                    let v = if code & BPF_X != 0 { x } else { i.k };
                    a = match code & 0xf0 {
                        BPF_AND => a & v,
                        BPF_XOR => a ^ v,
                        BPF_MUL => a.wrapping_mul(v),
                        BPF_RSH => a >> v,
                        BPF_MOD => {
                            if v == 0 {
                                return 0;
                            }
                            a % v
                        }
                        op => panic!("alu op {op:#x}"),
                    }
                }
                BPF_JMP => {
                    let op = code & 0xf0;
                    if op == BPF_JA {
                        pc += i.k as usize;
                        continue;
                    }
                    let taken = match op {
                        BPF_JEQ => a == i.k,
                        BPF_JSET => a & i.k != 0,
                        _ => panic!("jmp op {op:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                BPF_RET => {
                    return if code & 0x18 == BPF_A { a } else { i.k };
                }
                BPF_MISC => {
                    assert_eq!(code & 0xf8, BPF_TAX);
                    x = a;
                }
                c => panic!("class {c:#x}"),
            }
        }
    }

    const VXLAN: Wire = Wire::Vxlan {
        vni: 1,
        mac: [0x0e, 0x57, 192, 0, 2, 1],
    };

    /// UDP payload for `wire` carrying an IPv4 packet with `proto`, the addresses and ports.
    fn datagram(wire: Wire, proto: u8, src: [u8; 4], dst: [u8; 4], ports: [u16; 2]) -> Vec<u8> {
        let mut d = Vec::new();
        if matches!(wire, Wire::Vxlan { .. }) {
            d.extend([0x08, 0, 0, 0, 0, 0, 1, 0]);
            d.extend([
                0x0e, 0x57, 192, 0, 2, 2, 0x0e, 0x57, 192, 0, 2, 1, 0x08, 0x00,
            ]);
        }
        d.extend([0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, proto, 0, 0]);
        d.extend(src);
        d.extend(dst);
        d.extend(ports[0].to_be_bytes());
        d.extend(ports[1].to_be_bytes());
        d.extend([0u8; 16]);
        d
    }

    /// xorshift64*, so the tests see many packets without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn the_program_computes_flow_index_on_well_formed_and_random_bytes() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for wire in [Wire::Udp, VXLAN] {
            for workers in [1u32, 2, 3, 4, 7, 16, 64] {
                let prog = program(wire, workers);
                for _ in 0..2000 {
                    let r = rng.next();
                    let proto = [6u8, 17, 1, 47][(r & 3) as usize];
                    let mut d = datagram(
                        wire,
                        proto,
                        (r as u32).to_be_bytes(),
                        ((r >> 32) as u32).to_be_bytes(),
                        [(r >> 7) as u16, (r >> 23) as u16],
                    );
                    let b = inner_offset(wire) as usize;
                    // Now and then: options (IHL 6..15), a fragment, another version, a cut.
                    match (r >> 60) & 7 {
                        0 => d[b] = 0x40 | ((r >> 40) as u8 % 11 + 5),
                        1 => d[b + 6] = 0x20,
                        2 => d[b + 7] = 0x01,
                        3 => d[b] = 0x60,
                        4 => d.truncate((r >> 44) as usize % (b + 26)),
                        5 if b > 0 => d[b - 1] = 0xdd,
                        _ => {}
                    }
                    let want = flow_index(&d, wire, workers);
                    assert!(want < workers);
                    assert_eq!(run(&prog, &d), want, "{wire:?} {workers} {d:02x?}");
                }
                for len in 0..64 {
                    let d: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    assert_eq!(run(&prog, &d), flow_index(&d, wire, workers));
                }
            }
        }
    }

    #[test]
    fn flows_spread_and_what_is_not_hashed_goes_to_worker_zero() {
        for wire in [Wire::Udp, VXLAN] {
            let b = inner_offset(wire) as usize;
            let mut per = [0u32; 4];
            for port in 0..4000u16 {
                let d = datagram(wire, 6, [10, 1, 1, 2], [10, 1, 2, 2], [40000 + port, 5201]);
                per[flow_index(&d, wire, 4) as usize] += 1;
            }
            assert!(per.iter().all(|&n| (800..=1200).contains(&n)), "{per:?}");
            // One flow, one worker; another source port changes the choice for some flows.
            let d = datagram(wire, 17, [10, 1, 1, 2], [10, 1, 2, 2], [5000, 53]);
            let w = flow_index(&d, wire, 8);
            assert_eq!(flow_index(&d, wire, 8), w);
            let mut frag = d.clone();
            frag[b + 6] = 0x20;
            assert_eq!(flow_index(&frag, wire, 8), 0);
            let mut v6 = d.clone();
            v6[b] = 0x60;
            assert_eq!(flow_index(&v6, wire, 8), 0);
            assert_eq!(flow_index(&d[..b + 19], wire, 8), 0);
        }
        let mut d = datagram(VXLAN, 6, [10, 1, 1, 2], [10, 1, 2, 2], [1, 2]);
        d[21] = 0xdd;
        assert_eq!(flow_index(&d, VXLAN, 8), 0);
    }

    #[test]
    fn the_program_fits_classic_bpf_limits() {
        for wire in [Wire::Udp, VXLAN] {
            let p = program(wire, 2);
            assert!(p.len() < 64, "{}", p.len());
            assert_eq!(
                u32::from(p.last().expect("not empty").code),
                libc::BPF_RET | libc::BPF_K
            );
        }
    }
}
