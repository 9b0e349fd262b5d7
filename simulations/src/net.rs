//! The in-process network the simulated nodes talk over.
//!
//! A libp2p [`Transport`] for `/memory/PORT` addresses, like libp2p's own `MemoryTransport`, but
//! every connection knows which two simulated nodes it joins, so the simulator can:
//! - **delay** every write by the link's latency (plus jitter), keeping the byte order;
//! - **lose** packets the way a reliable transport experiences loss: a write that is "lost" is
//!   delivered after a retransmission timeout, and everything behind it waits (head-of-line
//!   blocking). A byte stream cannot drop bytes without breaking noise, and neither does TCP;
//! - **partition** the network: connections across the cut are reset and dials across it are
//!   refused, until the heal;
//! - **count** the bytes each node sends and receives on the wire (noise ciphertext included).
//!
//! [`SimNet::transport`] builds the full stack a node runs on it: this transport, noise, the
//! [`tap`](crate::tap) on the decrypted bytes (gossip copies and bytes per protocol), and yamux.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::core::{Transport, muxing::StreamMuxerBox, transport::Boxed};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, noise, yamux};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use crate::tap::{TapNoise, TapStats};

/// Bytes a direction of a connection holds in flight before writes wait (a TCP window).
const WINDOW_BYTES: usize = 256 * 1024;
/// Connections waiting to be accepted by one listener.
const ACCEPT_QUEUE: usize = 256;

/// How links behave. Shared by every link; changed while a run goes (degraded links, heals).
#[derive(Clone, Debug, PartialEq)]
pub struct LinkModel {
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability that a write is lost once and retransmitted.
    pub loss: f64,
    /// Retransmission timeout of a lost write.
    pub rto: Duration,
}

impl Default for LinkModel {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rto: Duration::from_millis(200),
        }
    }
}

/// Wire-level counters of one node.
#[derive(Debug, Default)]
pub struct WireStats {
    pub sent_bytes: AtomicU64,
    pub received_bytes: AtomicU64,
    pub connections_opened: AtomicU64,
    pub dials_refused: AtomicU64,
}

struct NetState {
    /// Listening port -> (node, where to hand it new connections).
    listeners: HashMap<u64, (usize, mpsc::Sender<SimStream>)>,
    link: LinkModel,
    /// Partition side of each node while a partition holds.
    sides: Option<Vec<u8>>,
    conns: Vec<Weak<Conn>>,
    rng: ChaCha8Rng,
}

struct NetInner {
    state: Mutex<NetState>,
    wire: Vec<Arc<WireStats>>,
    taps: Vec<Arc<TapStats>>,
}

/// The simulated network of one run: nodes `0..nodes` (and a few extra endpoints for rogue or
/// baseline swarms, which get indices past the nodes).
#[derive(Clone)]
pub struct SimNet {
    inner: Arc<NetInner>,
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNet")
            .field("endpoints", &self.inner.wire.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves the state consistent before it can panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimNet {
    /// A network of `endpoints` endpoints; `seed` drives jitter and loss.
    pub fn new(endpoints: usize, link: LinkModel, seed: u64) -> Self {
        Self {
            inner: Arc::new(NetInner {
                state: Mutex::new(NetState {
                    listeners: HashMap::new(),
                    link,
                    sides: None,
                    conns: Vec::new(),
                    rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
                }),
                wire: (0..endpoints).map(|_| Arc::default()).collect(),
                taps: (0..endpoints).map(|_| Arc::default()).collect(),
            }),
        }
    }

    /// The address endpoint `node` listens on.
    pub fn address(node: usize) -> Multiaddr {
        Multiaddr::empty().with(Protocol::Memory(node as u64 + 1))
    }

    pub fn wire(&self, node: usize) -> &Arc<WireStats> {
        &self.inner.wire[node]
    }

    pub fn tap(&self, node: usize) -> &Arc<TapStats> {
        &self.inner.taps[node]
    }

    pub fn endpoints(&self) -> usize {
        self.inner.wire.len()
    }

    pub fn set_link(&self, link: LinkModel) {
        lock(&self.inner.state).link = link;
    }

    pub fn link(&self) -> LinkModel {
        lock(&self.inner.state).link.clone()
    }

    /// Splits the network: endpoints with different `sides` cannot reach each other. Resets
    /// every connection across the cut.
    pub fn partition(&self, sides: Vec<u8>) {
        let mut state = lock(&self.inner.state);
        state.conns.retain(|c| c.strong_count() > 0);
        let cut: Vec<Arc<Conn>> = state
            .conns
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| side(&sides, c.ends.0) != side(&sides, c.ends.1))
            .collect();
        state.sides = Some(sides);
        drop(state);
        for conn in cut {
            conn.cut();
        }
    }

    pub fn heal(&self) {
        lock(&self.inner.state).sides = None;
    }

    /// Resets every connection of `node`, as its peers see a crashed machine.
    pub fn cut_node(&self, node: usize) {
        let conns: Vec<Arc<Conn>> = lock(&self.inner.state)
            .conns
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.ends.0 == node || c.ends.1 == node)
            .collect();
        for conn in conns {
            conn.cut();
        }
    }

    /// Connections dialled so far by endpoints `0..endpoints` (the nodes, without the rogue).
    pub fn connections_opened(&self, endpoints: usize) -> u64 {
        (0..endpoints)
            .map(|i| self.wire(i).connections_opened.load(Ordering::Relaxed))
            .sum()
    }

    /// Live connections (both ends up), for the report.
    pub fn live_connections(&self) -> usize {
        let mut state = lock(&self.inner.state);
        state.conns.retain(|c| c.strong_count() > 0);
        state
            .conns
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| !c.is_cut.load(Ordering::Relaxed))
            .count()
    }

    /// The full transport stack of endpoint `node`: this network, noise, the tap, yamux.
    pub fn transport(&self, node: usize) -> mesh_node::node::TransportFactory {
        let net = self.clone();
        Box::new(move |key: &libp2p::identity::Keypair| {
            let noise = noise::Config::new(key)
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })?;
            let tap = TapNoise::new(noise, net.tap(node).clone());
            Ok(SimTransport::new(net, node)
                .upgrade(Version::V1)
                .authenticate(tap)
                .multiplex(yamux::Config::default())
                .boxed())
        })
    }

    /// The same stack as [`SimNet::transport`], for swarms the simulator builds itself.
    pub fn boxed_transport(
        &self,
        node: usize,
        key: &libp2p::identity::Keypair,
    ) -> anyhow::Result<Boxed<(PeerId, StreamMuxerBox)>> {
        let factory = self.transport(node);
        factory(key).map_err(|e| anyhow::anyhow!("transport: {e}"))
    }

    /// The delay of the next write, given the link model and the dice.
    fn sample_delay(&self) -> Duration {
        let mut state = lock(&self.inner.state);
        let link = state.link.clone();
        let mut delay = link.delay;
        if !link.jitter.is_zero() {
            let jitter_us = link.jitter.as_micros() as u64;
            delay += Duration::from_micros(state.rng.random_range(0..=jitter_us));
        }
        if link.loss > 0.0 && state.rng.random_bool(link.loss.min(1.0)) {
            delay += link.rto;
        }
        delay
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        match &lock(&self.inner.state).sides {
            Some(sides) => side(sides, a) == side(sides, b),
            None => true,
        }
    }
}

fn side(sides: &[u8], node: usize) -> u8 {
    sides.get(node).copied().unwrap_or(0)
}

/// Port number of a `/memory/PORT` address.
fn port_of(address: &Multiaddr) -> Option<u64> {
    let mut iter = address.iter();
    let port = match iter.next()? {
        Protocol::Memory(port) => port,
        _ => return None,
    };
    match iter.next() {
        None | Some(Protocol::P2p(_)) => Some(port),
        Some(_) => None,
    }
}

// ---- the transport ---------------------------------------------------------------------------

/// The transport of one endpoint of a [`SimNet`].
pub struct SimTransport {
    net: SimNet,
    node: usize,
    listeners: Vec<(ListenerId, u64, mpsc::Receiver<SimStream>)>,
    events: VecDeque<TransportEvent<futures::future::Ready<io::Result<SimStream>>, io::Error>>,
}

impl std::fmt::Debug for SimTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimTransport")
            .field("node", &self.node)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl SimTransport {
    pub fn new(net: SimNet, node: usize) -> Self {
        Self {
            net,
            node,
            listeners: Vec::new(),
            events: VecDeque::new(),
        }
    }
}

impl Drop for SimTransport {
    fn drop(&mut self) {
        let mut state = lock(&self.net.inner.state);
        for (_, port, _) in &self.listeners {
            state.listeners.remove(port);
        }
    }
}

impl Transport for SimTransport {
    type Output = SimStream;
    type Error = io::Error;
    type ListenerUpgrade = futures::future::Ready<io::Result<SimStream>>;
    type Dial = BoxFuture<'static, io::Result<SimStream>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let Some(port) = port_of(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let port = if port == 0 {
            SimNet::address(self.node)
                .iter()
                .find_map(|p| match p {
                    Protocol::Memory(p) => Some(p),
                    _ => None,
                })
                .unwrap_or(port)
        } else {
            port
        };
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        {
            let mut state = lock(&self.net.inner.state);
            if state.listeners.contains_key(&port) {
                return Err(TransportError::Other(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("/memory/{port} is in use"),
                )));
            }
            state.listeners.insert(port, (self.node, tx));
        }
        self.listeners.push((id, port, rx));
        self.events.push_back(TransportEvent::NewAddress {
            listener_id: id,
            listen_addr: Multiaddr::empty().with(Protocol::Memory(port)),
        });
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(i) = self.listeners.iter().position(|(l, _, _)| *l == id) else {
            return false;
        };
        let (_, port, _) = self.listeners.remove(i);
        lock(&self.net.inner.state).listeners.remove(&port);
        true
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(port) = port_of(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let net = self.net.clone();
        let me = self.node;
        Ok(async move {
            let refused = |why: &str| {
                net.wire(me).dials_refused.fetch_add(1, Ordering::Relaxed);
                io::Error::new(io::ErrorKind::ConnectionRefused, why.to_owned())
            };
            let target = lock(&net.inner.state).listeners.get(&port).cloned();
            let Some((them, accept)) = target else {
                return Err(refused("nobody listens there"));
            };
            if !net.reachable(me, them) {
                return Err(refused("partitioned"));
            }
            let conn = Arc::new(Conn {
                ends: (me, them),
                is_cut: AtomicBool::new(false),
                pipes: [Pipe::default(), Pipe::default()],
            });
            lock(&net.inner.state).conns.push(Arc::downgrade(&conn));
            let ours = SimStream::new(net.clone(), conn.clone(), 0, me, them);
            let theirs = SimStream::new(net.clone(), conn, 1, them, me);
            accept
                .try_send(theirs)
                .map_err(|_| refused("accept queue full"))?;
            net.wire(me)
                .connections_opened
                .fetch_add(1, Ordering::Relaxed);
            Ok(ours)
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(event);
        }
        for (id, port, rx) in &mut self.listeners {
            if let Poll::Ready(Some(stream)) = rx.poll_recv(cx) {
                let from = SimNet::address(stream.remote);
                return Poll::Ready(TransportEvent::Incoming {
                    listener_id: *id,
                    upgrade: futures::future::ready(Ok(stream)),
                    local_addr: Multiaddr::empty().with(Protocol::Memory(*port)),
                    send_back_addr: from,
                });
            }
        }
        Poll::Pending
    }
}

// ---- connections -----------------------------------------------------------------------------

#[derive(Default)]
struct PipeState {
    /// Bytes in flight with the instant each chunk arrives, in order.
    chunks: VecDeque<(Instant, bytes::Bytes)>,
    buffered: usize,
    last_arrival: Option<Instant>,
    writer_closed: bool,
    reader_gone: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

#[derive(Default)]
struct Pipe(Mutex<PipeState>);

struct Conn {
    ends: (usize, usize),
    is_cut: AtomicBool,
    /// `pipes[0]` carries bytes from `ends.0` to `ends.1`, `pipes[1]` back.
    pipes: [Pipe; 2],
}

impl Conn {
    fn cut(&self) {
        self.is_cut.store(true, Ordering::Relaxed);
        for pipe in &self.pipes {
            let mut p = lock(&pipe.0);
            if let Some(w) = p.read_waker.take() {
                w.wake();
            }
            if let Some(w) = p.write_waker.take() {
                w.wake();
            }
        }
    }
}

/// One end of a simulated connection.
pub struct SimStream {
    net: SimNet,
    conn: Arc<Conn>,
    /// Writes go to `conn.pipes[side]`, reads come from the other pipe.
    side: usize,
    local: usize,
    remote: usize,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for SimStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStream")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish()
    }
}

impl SimStream {
    fn new(net: SimNet, conn: Arc<Conn>, side: usize, local: usize, remote: usize) -> Self {
        Self {
            net,
            conn,
            side,
            local,
            remote,
            sleep: None,
        }
    }

    fn reset() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, "link cut")
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.conn.is_cut.load(Ordering::Relaxed) {
                return Poll::Ready(Err(Self::reset()));
            }
            let this = &mut *self;
            let pipe = &this.conn.pipes[1 - this.side];
            let mut p = lock(&pipe.0);
            let now = Instant::now();
            let writer_closed = p.writer_closed;
            match p.chunks.front_mut() {
                Some((at, chunk)) if *at <= now => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    if n == chunk.len() {
                        p.chunks.pop_front();
                    } else {
                        let _ = chunk.split_to(n);
                    }
                    p.buffered -= n;
                    if let Some(w) = p.write_waker.take() {
                        w.wake();
                    }
                    drop(p);
                    this.net.inner.wire[this.local]
                        .received_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Some((at, _)) => {
                    let at = *at;
                    drop(p);
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    sleep.as_mut().reset(at);
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The chunk is due: loop and read it.
                }
                None if writer_closed => return Poll::Ready(Ok(0)),
                None => {
                    p.read_waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.conn.is_cut.load(Ordering::Relaxed) {
            return Poll::Ready(Err(Self::reset()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let delay = self.net.sample_delay();
        let pipe = &self.conn.pipes[self.side];
        let mut p = lock(&pipe.0);
        if p.reader_gone {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the other end is closed",
            )));
        }
        let room = WINDOW_BYTES.saturating_sub(p.buffered);
        if room == 0 {
            p.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        let mut at = Instant::now() + delay;
        if let Some(last) = p.last_arrival {
            at = at.max(last);
        }
        p.last_arrival = Some(at);
        p.chunks
            .push_back((at, bytes::Bytes::copy_from_slice(&buf[..n])));
        p.buffered += n;
        if let Some(w) = p.read_waker.take() {
            w.wake();
        }
        drop(p);
        self.net.inner.wire[self.local]
            .sent_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.is_cut.load(Ordering::Relaxed) {
            return Poll::Ready(Err(Self::reset()));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut p = lock(&self.conn.pipes[self.side].0);
        p.writer_closed = true;
        if let Some(w) = p.read_waker.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        {
            let mut p = lock(&self.conn.pipes[self.side].0);
            p.writer_closed = true;
            if let Some(w) = p.read_waker.take() {
                w.wake();
            }
        }
        let mut p = lock(&self.conn.pipes[1 - self.side].0);
        p.reader_gone = true;
        p.chunks.clear();
        p.buffered = 0;
        if let Some(w) = p.write_waker.take() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};

    fn dial(t: &mut SimTransport, port: u64) -> BoxFuture<'static, io::Result<SimStream>> {
        t.dial(
            Multiaddr::empty().with(Protocol::Memory(port)),
            DialOpts {
                role: libp2p::core::Endpoint::Dialer,
                port_use: libp2p::core::transport::PortUse::Reuse,
            },
        )
        .unwrap()
    }

    async fn accept(t: &mut SimTransport) -> SimStream {
        loop {
            let event = futures::future::poll_fn(|cx| Pin::new(&mut *t).poll(cx)).await;
            if let Some((upgrade, _)) = event.into_incoming() {
                return upgrade.await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_after_the_delay_and_are_counted() {
        let link = LinkModel {
            delay: Duration::from_millis(30),
            ..LinkModel::default()
        };
        let net = SimNet::new(2, link, 1);
        let mut a = SimTransport::new(net.clone(), 0);
        let mut b = SimTransport::new(net.clone(), 1);
        b.listen_on(ListenerId::next(), "/memory/0".parse().unwrap())
            .unwrap();
        let mut ours = dial(&mut a, 2).await.unwrap();
        let mut theirs = accept(&mut b).await;
        let start = Instant::now();
        ours.write_all(b"hello ").await.unwrap();
        ours.write_all(b"world").await.unwrap();
        let mut got = [0u8; 11];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        assert!(
            start.elapsed() >= Duration::from_millis(29),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(net.wire(0).sent_bytes.load(Ordering::Relaxed), 11);
        assert_eq!(net.wire(1).received_bytes.load(Ordering::Relaxed), 11);
    }

    #[tokio::test]
    async fn a_partition_resets_connections_and_refuses_dials_until_healed() {
        let net = SimNet::new(2, LinkModel::default(), 1);
        let mut a = SimTransport::new(net.clone(), 0);
        let mut b = SimTransport::new(net.clone(), 1);
        b.listen_on(ListenerId::next(), "/memory/0".parse().unwrap())
            .unwrap();
        let mut ours = dial(&mut a, 2).await.unwrap();
        let _theirs = accept(&mut b).await;
        net.partition(vec![0, 1]);
        assert!(ours.write_all(b"x").await.is_err());
        assert!(dial(&mut a, 2).await.is_err());
        net.heal();
        assert!(dial(&mut a, 2).await.is_ok());
    }
}
