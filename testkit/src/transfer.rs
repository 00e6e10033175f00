//! A TCP transfer between two namespaces whose every byte the receiver checks, with progress
//! tracking so a test can assert that forwarding never stalled.
use crate::netns::{enter, Netns};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const TRANSFER_PORT: u16 = 5001;

/// Deterministic content of 64 KiB block `n` of a transfer (xorshift64* seeded by the index).
pub fn fill_block(n: u64, buf: &mut [u8]) {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

const BLOCK: usize = 64 * 1024;

/// A TCP transfer from ctr_a to ctr_b whose every byte the receiver checks.
#[derive(Debug)]
pub struct Transfer {
    stop: Arc<AtomicBool>,
    sender: JoinHandle<io::Result<u64>>,
    receiver: JoinHandle<io::Result<(u64, Duration)>>,
}

impl Transfer {
    /// Sends at least `min_bytes`, and keeps sending until [`Transfer::finish`] when `open_ended`.
    pub fn start(
        from: &Netns,
        to: &Netns,
        to_ip: &str,
        min_bytes: u64,
        open_ended: bool,
    ) -> Transfer {
        let (ready_tx, ready_rx) = mpsc::channel();
        let ctr_b = to.path();
        let listen_ip = to_ip.to_string();
        let dst_ip = to_ip.to_string();
        let receiver = thread::spawn(move || -> io::Result<(u64, Duration)> {
            enter(&ctr_b)?;
            let l = TcpListener::bind((listen_ip.as_str(), TRANSFER_PORT))?;
            let _ = ready_tx.send(());
            let (mut s, _) = l.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            let mut got = vec![0u8; BLOCK];
            let mut want = vec![0u8; BLOCK];
            let mut total = 0u64;
            let mut fill = 0usize;
            let mut last = Instant::now();
            let mut max_gap = Duration::ZERO;
            loop {
                let n = s.read(&mut got[fill..])?;
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                max_gap = max_gap.max(now - last);
                last = now;
                fill += n;
                if fill == BLOCK {
                    fill_block(total / BLOCK as u64, &mut want);
                    if got != want {
                        return Err(io::Error::other(format!(
                            "corrupted data in block at offset {total}"
                        )));
                    }
                    total += BLOCK as u64;
                    fill = 0;
                }
            }
            if fill != 0 {
                return Err(io::Error::other(format!(
                    "stream ended mid-block after {total} bytes"
                )));
            }
            Ok((total, max_gap))
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("receiver listening");
        let stop = Arc::new(AtomicBool::new(!open_ended));
        let stop_s = Arc::clone(&stop);
        let ctr_a = from.path();
        let sender = thread::spawn(move || -> io::Result<u64> {
            enter(&ctr_a)?;
            // IPv4 or IPv6.
            let ip: IpAddr = dst_ip.parse().map_err(io::Error::other)?;
            let dst = SocketAddr::new(ip, TRANSFER_PORT);
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(10))?;
            s.set_write_timeout(Some(Duration::from_secs(60)))?;
            let mut block = vec![0u8; BLOCK];
            let mut sent = 0u64;
            while sent < min_bytes || !stop_s.load(Ordering::Relaxed) {
                fill_block(sent / BLOCK as u64, &mut block);
                s.write_all(&block)?;
                sent += BLOCK as u64;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            Ok(sent)
        });
        Transfer {
            stop,
            sender,
            receiver,
        }
    }

    /// Ends the transfer; returns the bytes that arrived, all checked.
    pub fn finish(self) -> u64 {
        self.finish_with_gap().0
    }

    /// Ends the transfer; returns the bytes that arrived (all checked) and the longest time the
    /// receiver waited for data. Panics if either side failed or the counts differ.
    pub fn finish_with_gap(self) -> (u64, Duration) {
        self.try_finish()
            .unwrap_or_else(|e| panic!("transfer: {e}"))
    }

    /// Ends the transfer; `Err` names what went wrong (a side failed, or the receiver got fewer
    /// bytes than were sent), so a test can add its own diagnostics.
    pub fn try_finish(self) -> io::Result<(u64, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        // A sender that failed may never have connected: return without waiting for the receiver.
        let sent = self
            .sender
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            .map_err(|e| io::Error::new(e.kind(), format!("sender: {e}")))?;
        let (got, gap) = self
            .receiver
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            .map_err(|e| io::Error::new(e.kind(), format!("receiver: {e}")))?;
        if got != sent {
            return Err(io::Error::other(format!(
                "bytes received ({got}) differ from bytes sent ({sent})"
            )));
        }
        Ok((got, gap))
    }
}
