//! A tap on the decrypted bytes of every connection: gossip copies and bytes per protocol.
//!
//! Gossipsub drops duplicate copies before the application sees them, so the node cannot tell
//! how many copies of a catalog entry it received. The tap can: it sits between noise and
//! yamux ([`TapNoise`] is noise with the tap fitted to its output), follows the yamux frames,
//! learns each substream's protocol from its multistream-select lines, and decodes the
//! gossipsub RPCs that a node receives, counting every published message on the wire, first
//! copy or not. The same tap runs under the mesh node and under stock gossipsub, so both are
//! measured the same way. The node's own code is untouched.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt, TryFutureExt};
use libp2p::PeerId;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::noise;

/// The application protocol of a substream, as the tap classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// Not known yet (still negotiating).
    Unknown,
    Gossip,
    Log,
    CatalogSync,
    Kad,
    Identify,
    Other,
}

impl Proto {
    pub const ALL: [Proto; 7] = [
        Proto::Unknown,
        Proto::Gossip,
        Proto::Log,
        Proto::CatalogSync,
        Proto::Kad,
        Proto::Identify,
        Proto::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Proto::Unknown => "negotiation",
            Proto::Gossip => "gossipsub",
            Proto::Log => "log streams",
            Proto::CatalogSync => "catalog sync",
            Proto::Kad => "kademlia",
            Proto::Identify => "identify",
            Proto::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn classify(line: &[u8]) -> Proto {
        let line = String::from_utf8_lossy(line);
        if line.starts_with("/meshsub/") || line.starts_with("/floodsub/") {
            Proto::Gossip
        } else if line.starts_with("/mesh/log/") {
            Proto::Log
        } else if line.starts_with("/mesh/catalog-sync/") {
            Proto::CatalogSync
        } else if line.contains("/kad/") {
            Proto::Kad
        } else if line.starts_with("/ipfs/id/") || line.starts_with("/mesh/id/") {
            Proto::Identify
        } else {
            Proto::Other
        }
    }
}

/// What the tap counted at one node.
#[derive(Debug, Default)]
pub struct TapStats {
    /// Gossipsub RPCs received, each with its own length prefix: every one is a yamux frame,
    /// a substream flush and an event for the swarm of its own, whatever it carries.
    pub gossip_rpcs_received: AtomicU64,
    /// Gossipsub messages received, every copy.
    pub gossip_copies_received: AtomicU64,
    /// Message ids announced to this node in IHAVE, asked of it in IWANT, and refused with
    /// IDONTWANT.
    pub ihave_ids_received: AtomicU64,
    pub iwant_ids_received: AtomicU64,
    pub idontwant_ids_received: AtomicU64,
    /// Gossipsub RPCs that did not decode (should stay 0; a check on the tap itself).
    pub undecodable_rpcs: AtomicU64,
    /// Plaintext bytes sent and received, by protocol; index by [`Proto`].
    pub sent_by_proto: [AtomicU64; 7],
    pub received_by_proto: [AtomicU64; 7],
    /// Yamux frame headers (sent).
    pub yamux_overhead_sent: AtomicU64,
}

impl TapStats {
    pub fn sent(&self, proto: Proto) -> u64 {
        self.sent_by_proto[proto.index()].load(Ordering::Relaxed)
    }

    pub fn received(&self, proto: Proto) -> u64 {
        self.received_by_proto[proto.index()].load(Ordering::Relaxed)
    }

    pub fn copies(&self) -> u64 {
        self.gossip_copies_received.load(Ordering::Relaxed)
    }
}

// ---- the upgrade -----------------------------------------------------------------------------

/// Noise, with the tap fitted to the decrypted stream it produces.
#[derive(Clone)]
pub struct TapNoise {
    noise: noise::Config,
    stats: Arc<TapStats>,
}

impl std::fmt::Debug for TapNoise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TapNoise")
    }
}

impl TapNoise {
    pub fn new(noise: noise::Config, stats: Arc<TapStats>) -> Self {
        Self { noise, stats }
    }
}

impl UpgradeInfo for TapNoise {
    type Info = <noise::Config as UpgradeInfo>::Info;
    type InfoIter = <noise::Config as UpgradeInfo>::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.noise.protocol_info()
    }
}

impl<T> InboundConnectionUpgrade<T> for TapNoise
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, Tapped<noise::Output<T>>);
    type Error = noise::Error;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: T, info: Self::Info) -> Self::Future {
        let stats = self.stats;
        self.noise
            .upgrade_inbound(socket, info)
            .map_ok(move |(peer, io)| (peer, Tapped::new(io, stats)))
            .boxed()
    }
}

impl<T> OutboundConnectionUpgrade<T> for TapNoise
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = (PeerId, Tapped<noise::Output<T>>);
    type Error = noise::Error;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: T, info: Self::Info) -> Self::Future {
        let stats = self.stats;
        self.noise
            .upgrade_outbound(socket, info)
            .map_ok(move |(peer, io)| (peer, Tapped::new(io, stats)))
            .boxed()
    }
}

// ---- the tapped stream -----------------------------------------------------------------------

const READ: usize = 0;
const WRITE: usize = 1;
/// Most bytes kept while a substream's protocol is not known.
const NEGOTIATION_BYTES_MAX: usize = 4096;
/// Most bytes of one gossipsub RPC kept while it arrives (gossipsub's own limit is lower).
const RPC_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A stream whose bytes the tap follows in both directions.
pub struct Tapped<S> {
    inner: S,
    parser: ConnParser,
}

impl<S> std::fmt::Debug for Tapped<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tapped")
            .field("substreams", &self.parser.substreams.len())
            .finish_non_exhaustive()
    }
}

impl<S> Tapped<S> {
    fn new(inner: S, stats: Arc<TapStats>) -> Self {
        Self {
            inner,
            parser: ConnParser::new(stats),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.parser.feed(READ, &buf[..*n]);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.parser.feed(WRITE, &buf[..*n]);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

// ---- the parser ------------------------------------------------------------------------------

enum Phase {
    /// Multistream-select before yamux: length-prefixed lines.
    Negotiating(Vec<u8>),
    Yamux,
    /// Something we do not understand: count bytes only.
    Opaque,
}

struct Direction {
    phase: Phase,
    header: [u8; 12],
    header_len: usize,
    data_left: usize,
    data_stream: u32,
    data_flags: u16,
}

impl Direction {
    fn new() -> Self {
        Self {
            phase: Phase::Negotiating(Vec::new()),
            header: [0; 12],
            header_len: 0,
            data_left: 0,
            data_stream: 0,
            data_flags: 0,
        }
    }
}

#[derive(Default)]
struct Substream {
    proto: Option<Proto>,
    buffers: [Vec<u8>; 2],
    finished: [bool; 2],
}

/// Follows both directions of one connection's plaintext.
pub struct ConnParser {
    stats: Arc<TapStats>,
    directions: [Direction; 2],
    substreams: HashMap<u32, Substream>,
}

const FLAG_FIN: u16 = 4;
const FLAG_RST: u16 = 8;

impl std::fmt::Debug for ConnParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnParser")
            .field("substreams", &self.substreams.len())
            .finish_non_exhaustive()
    }
}

impl ConnParser {
    pub fn new(stats: Arc<TapStats>) -> Self {
        Self {
            stats,
            directions: [Direction::new(), Direction::new()],
            substreams: HashMap::new(),
        }
    }

    /// Feeds bytes that went in direction `dir` (`READ`: received, `WRITE`: sent).
    pub fn feed(&mut self, dir: usize, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.directions[dir].phase {
                Phase::Opaque => {
                    self.count(dir, Proto::Other, bytes.len());
                    return;
                }
                Phase::Negotiating(buf) => {
                    buf.extend_from_slice(bytes);
                    let mut taken = 0;
                    let mut yamux_at = None;
                    while let Some((msg, used)) = length_prefixed(&buf[taken..]) {
                        taken += used;
                        if msg == b"/yamux/1.0.0\n" {
                            yamux_at = Some(taken);
                            break;
                        }
                    }
                    let buf = std::mem::take(buf);
                    self.count(dir, Proto::Unknown, taken);
                    match yamux_at {
                        Some(at) => {
                            self.directions[dir].phase = Phase::Yamux;
                            let rest = buf[at..].to_vec();
                            self.feed(dir, &rest);
                        }
                        None if buf.len() > NEGOTIATION_BYTES_MAX => {
                            self.directions[dir].phase = Phase::Opaque;
                            self.count(dir, Proto::Other, buf.len() - taken);
                        }
                        None => {
                            self.directions[dir].phase = Phase::Negotiating(buf[taken..].to_vec())
                        }
                    }
                    return;
                }
                Phase::Yamux => {
                    let d = &mut self.directions[dir];
                    if d.data_left > 0 {
                        let n = d.data_left.min(bytes.len());
                        d.data_left -= n;
                        let (stream, flags, done) = (d.data_stream, d.data_flags, d.data_left == 0);
                        self.substream_data(dir, stream, &bytes[..n]);
                        if done {
                            self.substream_flags(dir, stream, flags);
                        }
                        bytes = &bytes[n..];
                        continue;
                    }
                    let n = (12 - d.header_len).min(bytes.len());
                    d.header[d.header_len..d.header_len + n].copy_from_slice(&bytes[..n]);
                    d.header_len += n;
                    bytes = &bytes[n..];
                    if d.header_len < 12 {
                        return;
                    }
                    d.header_len = 0;
                    let h = d.header;
                    let kind = h[1];
                    let flags = u16::from_be_bytes([h[2], h[3]]);
                    let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                    let length = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
                    if dir == WRITE {
                        self.stats
                            .yamux_overhead_sent
                            .fetch_add(12, Ordering::Relaxed);
                    }
                    if h[0] != 0 || kind > 3 {
                        self.directions[dir].phase = Phase::Opaque;
                        continue;
                    }
                    if kind == 0 && length > 0 {
                        let d = &mut self.directions[dir];
                        d.data_left = length;
                        d.data_stream = stream;
                        d.data_flags = flags;
                    } else if kind <= 1 {
                        self.substream_flags(dir, stream, flags);
                    }
                }
            }
        }
    }

    fn count(&self, dir: usize, proto: Proto, n: usize) {
        let counters = if dir == READ {
            &self.stats.received_by_proto
        } else {
            &self.stats.sent_by_proto
        };
        counters[proto.index()].fetch_add(n as u64, Ordering::Relaxed);
    }

    fn substream_flags(&mut self, dir: usize, stream: u32, flags: u16) {
        if flags & FLAG_RST != 0 {
            self.substreams.remove(&stream);
        } else if flags & FLAG_FIN != 0
            && let Some(s) = self.substreams.get_mut(&stream)
        {
            s.finished[dir] = true;
            s.buffers[dir] = Vec::new();
            if s.finished[0] && s.finished[1] {
                self.substreams.remove(&stream);
            }
        }
    }

    fn substream_data(&mut self, dir: usize, stream: u32, bytes: &[u8]) {
        let s = self.substreams.entry(stream).or_default();
        let proto = s.proto.unwrap_or(Proto::Unknown);
        let wants_bytes = match proto {
            Proto::Unknown => true,
            Proto::Gossip => dir == READ,
            _ => false,
        };
        if !wants_bytes {
            self.count(dir, proto, bytes.len());
            return;
        }
        s.buffers[dir].extend_from_slice(bytes);
        let mut buf = std::mem::take(&mut s.buffers[dir]);
        let mut taken = 0;
        let mut rpcs = Vec::new();
        let mut proto = s.proto;
        while let Some((msg, used)) = length_prefixed(&buf[taken..]) {
            taken += used;
            if is_negotiation_line(msg) {
                if msg == b"na\n" {
                    proto = None;
                } else if !msg.starts_with(b"/multistream/") {
                    proto = Some(Proto::classify(msg));
                }
                continue;
            }
            match proto {
                Some(Proto::Gossip) if dir == READ => rpcs.push(msg.to_vec()),
                Some(_) => {}
                // Data before any protocol line: not multistream-select as we know it.
                None => proto = Some(Proto::Other),
            }
            if proto != Some(Proto::Gossip) {
                break;
            }
        }
        let counted_as = proto.unwrap_or(Proto::Unknown);
        s.proto = proto;
        let keep = match proto {
            None => buf.len() - taken <= NEGOTIATION_BYTES_MAX,
            Some(Proto::Gossip) => dir == READ && buf.len() - taken <= RPC_BYTES_MAX,
            Some(_) => false,
        };
        if keep {
            buf.drain(..taken);
            s.buffers[dir] = buf;
        }
        self.count(dir, counted_as, bytes.len());
        for rpc in rpcs {
            self.on_gossip_rpc(&rpc);
        }
    }

    fn on_gossip_rpc(&self, rpc: &[u8]) {
        let mut ok = true;
        let mut copies = 0u64;
        let (mut ihave, mut iwant, mut idontwant) = (0u64, 0u64, 0u64);
        for field in Fields::new(rpc) {
            match field {
                Some((2, Value::Bytes(_))) => copies += 1,
                Some((3, Value::Bytes(control))) => {
                    for field in Fields::new(control) {
                        let (kind, body) = match field {
                            Some((k @ (1 | 2 | 5), Value::Bytes(b))) => (k, b),
                            Some(_) => continue,
                            None => {
                                ok = false;
                                break;
                            }
                        };
                        let id_field = if kind == 1 { 2 } else { 1 };
                        let ids = Fields::new(body)
                            .filter(|f| matches!(f, Some((n, Value::Bytes(_))) if *n == id_field))
                            .count() as u64;
                        match kind {
                            1 => ihave += ids,
                            2 => iwant += ids,
                            _ => idontwant += ids,
                        }
                    }
                }
                Some(_) => {}
                None => {
                    ok = false;
                    break;
                }
            }
        }
        let s = &self.stats;
        if !ok {
            s.undecodable_rpcs.fetch_add(1, Ordering::Relaxed);
        }
        s.gossip_rpcs_received.fetch_add(1, Ordering::Relaxed);
        s.gossip_copies_received
            .fetch_add(copies, Ordering::Relaxed);
        s.ihave_ids_received.fetch_add(ihave, Ordering::Relaxed);
        s.iwant_ids_received.fetch_add(iwant, Ordering::Relaxed);
        s.idontwant_ids_received
            .fetch_add(idontwant, Ordering::Relaxed);
    }
}

fn is_negotiation_line(msg: &[u8]) -> bool {
    msg.ends_with(b"\n") && (msg.starts_with(b"/") || msg == b"na\n" || msg == b"ls\n")
}

/// An unsigned-varint length prefix and the message after it, if complete.
fn length_prefixed(buf: &[u8]) -> Option<(&[u8], usize)> {
    let (len, used) = varint(buf)?;
    let len = usize::try_from(len).ok()?;
    let end = used.checked_add(len)?;
    (buf.len() >= end).then(|| (&buf[used..end], end))
}

fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

enum Value<'a> {
    Varint,
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of a protobuf message; `None` once it does not decode (and then stops).
struct Fields<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, failed: false }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Option<(u64, Value<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let parsed = (|| {
            let (key, used) = varint(self.buf)?;
            let rest = &self.buf[used..];
            let (value, used) = match key & 7 {
                0 => (Value::Varint, varint(rest)?.1),
                1 => (Value::Fixed, (rest.len() >= 8).then_some(8)?),
                5 => (Value::Fixed, (rest.len() >= 4).then_some(4)?),
                2 => {
                    let (bytes, used) = length_prefixed(rest)?;
                    (Value::Bytes(bytes), used)
                }
                _ => return None,
            };
            self.buf = &rest[used..];
            Some((key >> 3, value))
        })();
        if parsed.is_none() {
            self.failed = true;
        }
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut n = msg.len() as u64;
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(msg);
        out
    }

    fn frame(stream: u32, flags: u16, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0];
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        out
    }

    /// An RPC with `n` published messages and one IHAVE of two ids.
    fn rpc(n: usize) -> Vec<u8> {
        let message = [
            vec![0x12],
            lp(b"payload"),
            vec![0x22],
            lp(b"mesh/v1/catalog"),
        ]
        .concat();
        let mut rpc = Vec::new();
        for _ in 0..n {
            rpc.push(0x12);
            rpc.extend(lp(&message));
        }
        let ihave = [vec![0x12], lp(b"id-1"), vec![0x12], lp(b"id-2")].concat();
        let control = [vec![0x0a], lp(&ihave)].concat();
        rpc.push(0x1a);
        rpc.extend(lp(&control));
        rpc
    }

    #[test]
    fn copies_are_counted_across_arbitrary_chunking() {
        let stats = Arc::new(TapStats::default());
        let mut parser = ConnParser::new(stats.clone());
        let mut wire = [lp(b"/multistream/1.0.0\n"), lp(b"/yamux/1.0.0\n")].concat();
        let substream = [
            lp(b"/multistream/1.0.0\n"),
            lp(b"/meshsub/1.2.0\n"),
            lp(&rpc(2)),
            lp(&rpc(1)),
        ]
        .concat();
        wire.extend(frame(1, 1, &substream[..10]));
        wire.extend(frame(
            3,
            1,
            &[
                lp(b"/multistream/1.0.0\n"),
                lp(b"/mesh/log/1\n"),
                vec![9; 100],
            ]
            .concat(),
        ));
        wire.extend(frame(1, 0, &substream[10..]));
        for chunk in wire.chunks(7) {
            parser.feed(READ, chunk);
        }
        assert_eq!(stats.copies(), 3);
        assert_eq!(stats.gossip_rpcs_received.load(Ordering::Relaxed), 2);
        assert_eq!(stats.ihave_ids_received.load(Ordering::Relaxed), 4);
        assert_eq!(stats.undecodable_rpcs.load(Ordering::Relaxed), 0);
        // The log substream's bytes: all of them once its protocol line was seen.
        let log = stats.received(Proto::Log);
        assert!((100..=133).contains(&log), "{log}");
        assert!(stats.received(Proto::Gossip) > 0);
    }

    #[test]
    fn sent_gossip_is_counted_as_bytes_not_copies() {
        let stats = Arc::new(TapStats::default());
        let mut parser = ConnParser::new(stats.clone());
        let mut wire = [lp(b"/multistream/1.0.0\n"), lp(b"/yamux/1.0.0\n")].concat();
        wire.extend(frame(
            2,
            1,
            &[
                lp(b"/multistream/1.0.0\n"),
                lp(b"/meshsub/1.2.0\n"),
                lp(&rpc(5)),
            ]
            .concat(),
        ));
        parser.feed(WRITE, &wire);
        assert_eq!(stats.copies(), 0);
        assert_eq!(stats.gossip_rpcs_received.load(Ordering::Relaxed), 0);
        assert!(stats.sent(Proto::Gossip) > 0);
        assert_eq!(stats.yamux_overhead_sent.load(Ordering::Relaxed), 12);
    }
}
