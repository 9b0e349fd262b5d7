//! Log subscriptions over `/mesh/log/1`: serving logs, and following them.
//!
//! **Serving.** Any node that holds a log serves it, not only its producer: events are signed,
//! so a subscriber trusts the signatures, not the server. A server checks the product's access
//! policy against the subscriber's key, sends the fork proofs it knows, backfills from its
//! store from the requested seq, then forwards live events as they are committed. A server that
//! falls behind the live broadcast reads from the store again, so it never skips an event.
//!
//! **Following.** A subscriber asks the owner first, then any other connected peer, and on
//! failure retries with backoff. It asks from the seq it already holds, not the one after, so
//! that a fork at its head shows up as a conflicting event. Every frame goes through the hub's
//! ingest (decode, batch-verify, chain-check, durable commit); a source that sends an invalid
//! event is dropped for the next one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use mesh_protocol::sync::{LogFrame, Refusal, SubscribeRequest, SubscribeResponse};
use mesh_protocol::{ForkProof, ProductId, PublicKey};
use tokio::sync::broadcast::error::RecvError;

use crate::behaviour::LOG_PROTOCOL;
use crate::codec::{self, FrameError};
use crate::hub::Live;
use crate::network::short;
use crate::node::Shared;

/// Longest wait for the first frames of a subscription.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait to open a stream (including dialing).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// A server with nothing to send sends an empty frame this often...
const HEARTBEAT: Duration = Duration::from_secs(10);
/// ...so a subscriber that hears nothing for this long knows the source is gone.
const SILENCE_TIMEOUT: Duration = Duration::from_secs(35);
/// Longest a write to a subscriber may wait for it to read: as long as a subscriber waits
/// for a silent source.
const WRITE_TIMEOUT: Duration = SILENCE_TIMEOUT;
/// Events read from the store per backfill step.
const BACKFILL_PAGE: usize = 512;
/// Longest wait between subscription retries.
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot open a stream: {0}")]
    Open(String),
    #[error("the peer does not serve logs (no {0})")]
    Unsupported(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the stream")]
    Closed,
    #[error("the connection to the peer closed")]
    Disconnected,
    #[error("the subscriber stopped reading")]
    Stalled,
    #[error("malformed message: {0}")]
    Decode(#[from] mesh_protocol::DecodeError),
    #[error("refused: {}", .0.as_str())]
    Refused(Refusal),
    #[error("the source sent an invalid event: {0}")]
    Invalid(mesh_protocol::RejectReason),
    #[error("the source sent an invalid fork proof: {0}")]
    BadProof(mesh_protocol::ProofError),
    #[error("store: {0}")]
    Store(String),
    #[error("leaving a fallback source for the owner")]
    SwitchToOwner,
}

impl StreamError {
    /// Whether the stream failed for want of a working connection (none, or one that closed
    /// under it), rather than by the peer's choice or fault.
    fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            Self::Open(_) | Self::Disconnected | Self::Io(_) | Self::Frame(FrameError::Io(_))
        )
    }
}

// ---- serving ---------------------------------------------------------------------------------

/// Accepts subscriptions from peers and serves each in its own task.
pub async fn serve(shared: Arc<Shared>, incoming: libp2p_stream::IncomingStreams) {
    crate::node::accept_streams(shared, incoming, "log", |shared, peer, stream| async move {
        serve_one(&shared, peer, stream).await
    })
    .await;
}

/// Whether this node may serve `product`'s log to `peer`, and whether it can.
fn refusal(shared: &Shared, peer: &PeerId, product: &ProductId) -> Option<Refusal> {
    let Some(entry) = shared.catalog.get(product) else {
        return Some(Refusal::UnknownProduct);
    };
    let allowed = PublicKey::from_peer_id_bytes(&peer.to_bytes()).is_ok_and(|reader| {
        entry
            .entry()
            .descriptor
            .access
            .allows(product.owner(), &reader)
    });
    if !allowed {
        return Some(Refusal::AccessDenied);
    }
    let holds = shared.hub.head(product).is_ok_and(|h| h.seq() > 0);
    if !holds && product.owner() != &shared.public_key {
        return Some(Refusal::NotHeld);
    }
    None
}

async fn serve_one(shared: &Arc<Shared>, peer: PeerId, stream: Stream) -> Result<(), StreamError> {
    // From the first byte on, so that neither side closes the connection as unneeded while
    // the handshake runs.
    let _kept = shared.log_stream_with(peer);
    // The stream's connection was open when it arrived, or has closed since, which `gone`
    // also sees unless the peer reconnected before this task ran (then the handshake's time
    // limit ends it). A departure from here on is its end: every read and write of the
    // stream stops then, blocked ones too (see `Shared::gone`).
    let mark = shared.arrival_of(&peer);
    tokio::select! {
        result = serve_stream(shared, peer, stream) => result,
        () = shared.gone(peer, mark) => Err(StreamError::Disconnected),
    }
}

/// How a subscriber's side of a served stream ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// A clean end: a half-close, or a reset (yamux reads both alike).
    Clean,
    /// An error: the stream or its connection is gone.
    Gone,
}

async fn serve_stream(
    shared: &Arc<Shared>,
    peer: PeerId,
    stream: Stream,
) -> Result<(), StreamError> {
    let config = shared.protocol.clone();
    let (mut reader, mut writer) = stream.split();
    let request = codec::read_frame(&mut reader, config.frame_bytes_max, HANDSHAKE_TIMEOUT).await?;
    let request = request.ok_or(StreamError::Closed)?;
    let request = SubscribeRequest::decode(request, &config)?;
    let product = request.product;
    let busy = shared.served.load(Ordering::Relaxed) >= shared.config.served_streams_max;
    let refused = if busy {
        Some(Refusal::Busy)
    } else {
        refusal(shared, &peer, &product)
    };
    let head_seq = shared.hub.head(&product).map_or(0, |h| h.seq());
    if let Some(r) = refused {
        shared.metrics.reject_stream(r.kind());
        tracing::info!(peer = %short(&peer), product = %product.short(), "subscription refused: {}", r.as_str());
        let response = SubscribeResponse {
            refusal: Some(r),
            head_seq: 0,
        };
        send(&mut writer, &response.encode()).await?;
        // Close our side cleanly (not a reset), so the subscriber reads the refusal.
        writer.close().await?;
        return Ok(());
    }
    // Listen for live events before reading the store, so none falls between the two.
    let mut live = shared
        .hub
        .subscribe_live(&product)
        .map_err(|e| StreamError::Store(e.to_string()))?;
    let _served = ServedGuard::new(shared);
    tracing::info!(peer = %short(&peer), product = %product.short(), from = request.from_seq, "serving log");
    send(
        &mut writer,
        &SubscribeResponse {
            refusal: None,
            head_seq,
        }
        .encode(),
    )
    .await?;

    let forks = shared
        .store
        .forks(Some(&product))
        .map_err(|e| StreamError::Store(e.to_string()))?;
    for fork in forks {
        write_frame(
            &mut writer,
            &LogFrame {
                events: vec![],
                fork: Some(fork),
            },
        )
        .await?;
    }
    let mut next = backfill(shared, &product, request.from_seq, &mut writer).await?;

    // The subscriber sends nothing after its request: a read that ends means it left, or
    // that it closed only its writing side (js-libp2p pipes may, after the request) and still
    // listens. yamux reads a stream the subscriber reset (dropped) as a clean end too, so an
    // end is told apart by writing an empty frame, which fails on a reset stream: without
    // that, a subscriber's slot stayed taken until the next event or heartbeat (10 s).
    let mut ended = Box::pin(async move {
        let mut byte = [0u8; 1];
        loop {
            match reader.read(&mut byte).await {
                Ok(0) => return Ended::Clean,
                Ok(_) => {} // nothing is expected after the request; ignore it
                Err(_) => return Ended::Gone,
            }
        }
    });
    let mut reading = true;
    let shutdown = shared.shutdown.clone();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.reset();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            end = &mut ended, if reading => {
                if end == Ended::Gone || write_frame(&mut writer, &LogFrame::default()).await.is_err() {
                    return Ok(());
                }
                // Half-closed: it listens still.
                reading = false;
                heartbeat.reset();
            }
            _ = heartbeat.tick() => {
                write_frame(&mut writer, &LogFrame::default()).await?;
            }
            item = live.recv() => {
                match item {
                    Ok(Live::Events(events)) => {
                        let first = events.first().map_or(next, |e| e.seq());
                        if first > next {
                            // Committed while we were backfilling: fill the hole from the store.
                            next = backfill(shared, &product, next, &mut writer).await?;
                        }
                        let fresh: Vec<Bytes> = events
                            .iter()
                            .filter(|e| e.seq() >= next)
                            .map(|e| e.encoded().clone())
                            .collect();
                        if let Some(last) = events.last() {
                            next = next.max(last.seq() + 1);
                        }
                        if !fresh.is_empty() {
                            send_events(shared, fresh, &mut writer).await?;
                            heartbeat.reset();
                        }
                    }
                    Ok(Live::Fork(proof)) => {
                        write_frame(&mut writer, &LogFrame { events: vec![], fork: Some(proof) }).await?;
                    }
                    Err(RecvError::Lagged(_)) => {
                        next = backfill(shared, &product, next, &mut writer).await?;
                    }
                    Err(RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
}

/// Sends every stored event from `from` on; returns the next seq to send.
async fn backfill<W: futures::AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    product: &ProductId,
    mut from: u64,
    writer: &mut W,
) -> Result<u64, StreamError> {
    loop {
        let store = shared.store.clone();
        let p = product.clone();
        let page = crate::node::spawn_blocking(move || store.log_range(&p, from, BACKFILL_PAGE))
            .await
            .map_err(|e| StreamError::Store(e.to_string()))?
            .map_err(|e| StreamError::Store(e.to_string()))?;
        if page.is_empty() {
            return Ok(from);
        }
        from += page.len() as u64;
        send_events(shared, page, writer).await?;
    }
}

/// Sends events in frames that respect the frame limits, then flushes.
async fn send_events<W: futures::AsyncWrite + Unpin>(
    shared: &Shared,
    events: Vec<Bytes>,
    writer: &mut W,
) -> Result<(), StreamError> {
    let config = &shared.protocol;
    // Half the frame limit leaves room for framing and keeps frames moving.
    let bytes_max = config.frame_bytes_max / 2;
    let mut frames = Vec::new();
    let mut frame = LogFrame::default();
    let mut bytes = 0;
    for event in events {
        if !frame.events.is_empty()
            && (frame.events.len() == config.frame_events_max || bytes + event.len() > bytes_max)
        {
            frames.push(std::mem::take(&mut frame));
            bytes = 0;
        }
        bytes += event.len();
        frame.events.push(event);
    }
    if !frame.events.is_empty() {
        frames.push(frame);
    }
    // Each frame has its own time limit: a batch may be a backfill page of many MiB, which a
    // subscriber on a slow link reads for longer than one limit, frame after frame.
    let last = frames.len().saturating_sub(1);
    for (i, frame) in frames.into_iter().enumerate() {
        let encoded = frame.encode();
        within_write_timeout(async {
            codec::write_frame(writer, &encoded).await?;
            if i == last {
                writer.flush().await?;
            }
            Ok(())
        })
        .await?;
    }
    Ok(())
}

async fn write_frame<W: futures::AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &LogFrame,
) -> Result<(), StreamError> {
    send(writer, &frame.encode()).await
}

/// Writes and flushes one frame. A subscriber that reads nothing for [`WRITE_TIMEOUT`]
/// while its connection lives (flow control holds the write) has stalled; its stream ends
/// rather than keep a task, a served-stream slot and the connection.
async fn send<W: futures::AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> Result<(), StreamError> {
    within_write_timeout(codec::send_frame(writer, frame)).await
}

/// A write to a subscriber, ended as [`StreamError::Stalled`] after [`WRITE_TIMEOUT`].
async fn within_write_timeout(
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), StreamError> {
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| StreamError::Stalled)??;
    Ok(())
}

/// Counts a served stream for as long as it lives.
struct ServedGuard<'a>(&'a Shared);

impl<'a> ServedGuard<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.served.fetch_add(1, Ordering::Relaxed);
        shared.metrics.streams_served.inc();
        Self(shared)
    }
}

impl Drop for ServedGuard<'_> {
    fn drop(&mut self) {
        self.0.served.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.streams_served.dec();
    }
}

// ---- following -------------------------------------------------------------------------------

/// Follows `product` until the node shuts down or the subscription is cancelled.
pub async fn follow(
    shared: Arc<Shared>,
    product: ProductId,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut retry = shared.config.subscription_retry;
    let mut peer_joined = shared.peer_joined.subscribe();
    let owner = owner_peer(&product);
    // The connection to the owner is wanted for as long as the subscription lasts, even while
    // no stream runs on it yet: a lookup's connection to it must not be closed as unneeded
    // before this loop gets to use it.
    let _owner_kept = owner.map(|o| shared.log_stream_with(o));
    // The times in a row the owner turned us away (see `owner_turned_away`), and until when a
    // fallback source is not left for the owner (it would likely do so again, e.g. while busy).
    let mut owner_refusals: u32 = 0;
    let mut owner_refused_until: Option<Instant> = None;
    // Whether this round already went back to the owner at once after losing its connection
    // (at most once between two waits: no loop without a wait).
    let mut owner_retried = false;
    'rounds: loop {
        peer_joined.mark_unchanged();
        if let Some(owner) = owner {
            // Kademlia's routing table holds only some peers: an owner we never met has no
            // known address until a lookup finds it.
            shared.find_peer(owner);
        }
        let mut progressed = false;
        // Set when the owner could not be reached this round for want of a working connection.
        let mut owner_unreachable = false;
        for peer in sources(&shared, &product) {
            if cancel.is_cancelled() {
                return;
            }
            // The owner's lookup connected it while other peers were being asked, or the owner's
            // connection died under the handshake while another one to it lives on: the owner
            // comes first, and each of the other peers costs a round trip. Not after a refusal.
            if owner_unreachable && owner.is_some_and(|o| o != peer && shared.is_connected(&o)) {
                continue 'rounds;
            }
            let before = shared.hub.head(&product).map_or(0, |h| h.seq());
            let mut accepted = None;
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = follow_from(&shared, &product, peer, owner_refused_until, &mut accepted) => r,
            };
            let after = shared.hub.head(&product).map_or(0, |h| h.seq());
            progressed |= after > before;
            if Some(peer) == owner {
                let served = accepted.map(|at: Instant| at.elapsed());
                if owner_turned_away(&result, served, shared.is_connected(&peer)) {
                    owner_refusals = owner_refusals.saturating_add(1);
                    owner_refused_until = Some(Instant::now() + owner_refused_wait(owner_refusals));
                } else {
                    owner_refusals = 0;
                    owner_refused_until = None;
                }
                owner_unreachable = result.as_ref().is_err_and(StreamError::is_connection_loss)
                    && (!shared.is_connected(&peer)
                        || !std::mem::replace(&mut owner_retried, true));
            }
            match result {
                Err(StreamError::SwitchToOwner) => {
                    // Start a new round at once: the owner comes first.
                    tracing::info!(product = %product.short(), "owner reachable: switching back to it");
                    continue 'rounds;
                }
                Ok(()) => {
                    tracing::debug!(peer = %short(&peer), product = %product.short(), "source closed the stream")
                }
                Err(StreamError::Refused(r)) => {
                    tracing::debug!(peer = %short(&peer), product = %product.short(), "source refused: {}", r.as_str());
                }
                Err(e) => {
                    tracing::info!(peer = %short(&peer), product = %product.short(), "source lost: {e}")
                }
            }
        }
        if progressed {
            retry = shared.config.subscription_retry;
        }
        // Wait, but not past a new peer's arrival: it may be the owner coming back, or another
        // holder of the log.
        owner_retried = false;
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(retry) => retry = (retry * 2).min(RETRY_MAX),
            _ = peer_joined.changed() => retry = shared.config.subscription_retry,
        }
    }
}

/// While following another subscriber, how often to look whether the owner is reachable.
const OWNER_RECHECK: Duration = Duration::from_secs(2);
/// The longest a fallback source is kept, without looking at the owner, after the owner
/// refused a subscription.
const OWNER_REFUSED_WAIT_MAX: Duration = Duration::from_secs(30);

/// How long a fallback source is kept after the owner's `refusals`-th refusal in a row:
/// `OWNER_RECHECK`, doubling with each further refusal up to `OWNER_REFUSED_WAIT_MAX`. A
/// refusal may pass in a moment (an owner that restarted and has not got its catalog back
/// yet), or last (an owner serving all the streams it will): the first is retried soon, the
/// second does not make its subscribers flap.
fn owner_refused_wait(refusals: u32) -> Duration {
    OWNER_RECHECK
        .saturating_mul(1 << refusals.saturating_sub(1).min(8))
        .min(OWNER_REFUSED_WAIT_MAX)
}

/// Whether the owner turned a subscriber away, so that it is asked again only after
/// [`owner_refused_wait`]: it refused the subscription, or ended or broke the stream within
/// `OWNER_RECHECK` of accepting it (`served`, `None` if it never accepted) while the connection
/// stayed up (`connected`). An owner that does either would likely do it again, and without
/// the wait its subscribers would leave a fallback source for it, and come back, every
/// `OWNER_RECHECK`.
fn owner_turned_away(
    result: &Result<(), StreamError>,
    served: Option<Duration>,
    connected: bool,
) -> bool {
    match result {
        Err(StreamError::Refused(_)) => true,
        // Not the owner's doing: no connection, or this node's own store.
        Err(e) if e.is_connection_loss() => false,
        Err(StreamError::Store(_) | StreamError::SwitchToOwner) => false,
        Ok(()) | Err(_) => connected && served.is_none_or(|d| d < OWNER_RECHECK),
    }
}

/// Aborts a task when dropped: here, the reader of a stream we stopped following.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The peer id of a product's owner.
fn owner_peer(product: &ProductId) -> Option<PeerId> {
    libp2p::identity::ed25519::PublicKey::try_from_bytes(product.owner().as_bytes())
        .ok()
        .map(|k| libp2p::identity::PublicKey::from(k).to_peer_id())
}

/// Where to ask for a product's log, best first: its owner, then the connected peers that
/// announced they consume it (the likeliest to hold it), then every other connected peer.
/// Each peer that does not hold the log costs a round trip.
fn sources(shared: &Shared, product: &ProductId) -> Vec<PeerId> {
    let mut peers: Vec<PeerId> = owner_peer(product).into_iter().collect();
    let (likely, others): (Vec<PeerId>, Vec<PeerId>) =
        shared.connected_peers().into_iter().partition(|p| {
            PublicKey::from_peer_id_bytes(&p.to_bytes())
                .is_ok_and(|key| shared.discovery.is_consumer(product, &key))
        });
    for peer in likely.into_iter().chain(others) {
        if !peers.contains(&peer) {
            peers.push(peer);
        }
    }
    peers.retain(|p| *p != shared.peer_id);
    peers
}

async fn follow_from(
    shared: &Arc<Shared>,
    product: &ProductId,
    peer: PeerId,
    owner_refused_until: Option<Instant>,
    accepted: &mut Option<Instant>,
) -> Result<(), StreamError> {
    let config = shared.protocol.clone();
    // Held from before the stream opens: closing the connection as unneeded mid-handshake
    // would leave us waiting out the handshake timeout.
    let _kept = shared.log_stream_with(peer);
    let mut stream = tokio::time::timeout(OPEN_TIMEOUT, shared.open_stream(peer, LOG_PROTOCOL))
        .await
        .map_err(|_| StreamError::Open("timed out".into()))?
        .map_err(|e| match e {
            libp2p_stream::OpenStreamError::UnsupportedProtocol(p) => {
                StreamError::Unsupported(p.to_string())
            }
            e => StreamError::Open(e.to_string()),
        })?;
    // Taken once the stream is open, on a connection open now: a departure from here on is
    // its end. (Taken before, a connection that closed and reopened while the stream opened
    // would end a stream that lives.)
    let mark = shared.arrival_of(&peer);
    let held = shared.hub.head(product).map_or(0, |h| h.seq());
    let request = SubscribeRequest {
        product: product.clone(),
        from_seq: held.max(1),
    };
    codec::send_frame(&mut stream, &request.encode()).await?;
    let response = tokio::select! {
        response = codec::read_frame(&mut stream, config.frame_bytes_max, HANDSHAKE_TIMEOUT) => response?,
        () = shared.gone(peer, mark) => return Err(StreamError::Disconnected),
    };
    let response = response.ok_or(StreamError::Closed)?;
    let response = SubscribeResponse::decode(response, &config)?;
    if let Some(r) = response.refusal {
        return Err(StreamError::Refused(r));
    }
    *accepted = Some(Instant::now());
    tracing::info!(peer = %short(&peer), product = %product.short(), source_head = response.head_seq, held, "following");
    let mut source_head = response.head_seq;
    shared.set_source(product, peer, source_head);
    shared.hub.set_lag(product, source_head);
    let peer_name = short(&peer);
    // Following another subscriber is a fallback: when the owner is reachable again, go back
    // to it (not before `owner_refused_until`, after a refusal). Otherwise subscribers that
    // fell back to each other could keep following each other and never see the owner's new
    // events.
    let owner = owner_peer(product).filter(|o| *o != peer);
    let mut peer_joined = shared.peer_joined.subscribe();
    let mut owner_check = tokio::time::interval(OWNER_RECHECK);
    owner_check.reset();
    // Frames are read by their own task, so that waiting for a frame can be interrupted
    // without cutting a frame in half.
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel(4);
    let frame_bytes_max = config.frame_bytes_max;
    let _reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let frame = codec::read_frame(&mut stream, frame_bytes_max, SILENCE_TIMEOUT).await;
            let last = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || last {
                return;
            }
        }
    }));
    enum Next {
        Frame(Option<Bytes>),
        LookForOwner,
    }
    let mut disconnected = std::pin::pin!(shared.gone(peer, mark));
    loop {
        let next = tokio::select! {
            frame = frames.recv() => Next::Frame(frame.ok_or(StreamError::Closed)??),
            () = &mut disconnected => return Err(StreamError::Disconnected),
            _ = peer_joined.changed(), if owner.is_some() => Next::LookForOwner,
            _ = owner_check.tick(), if owner.is_some() => Next::LookForOwner,
        };
        let frame = match next {
            Next::Frame(Some(frame)) => frame,
            Next::Frame(None) => return Ok(()),
            Next::LookForOwner => {
                if owner_refused_until.is_some_and(|until| Instant::now() < until) {
                    continue;
                }
                if let Some(o) = owner {
                    if shared.connected_peers().contains(&o) {
                        return Err(StreamError::SwitchToOwner);
                    }
                    // After a partition heals nothing reconnects us to the owner by itself.
                    shared.find_peer(o);
                }
                continue;
            }
        };
        let frame = LogFrame::decode(frame, &config)?;
        if let Some(proof) = frame.fork {
            let proof =
                ForkProof::decode_and_verify(proof, &config).map_err(StreamError::BadProof)?;
            if proof.product() == product {
                shared
                    .hub
                    .record_fork(&proof, &peer_name)
                    .map_err(|e| StreamError::Store(e.to_string()))?;
            }
        }
        if frame.events.is_empty() {
            continue;
        }
        let hub = shared.hub.clone();
        let (p, name) = (product.clone(), peer_name.clone());
        let report = crate::node::spawn_blocking(move || hub.ingest(&p, frame.events, &name))
            .await
            .map_err(|e| StreamError::Store(e.to_string()))?
            .map_err(|e| StreamError::Store(e.to_string()))?;
        let head = shared.hub.head(product).map_or(0, |h| h.seq());
        source_head = source_head.max(head);
        shared.set_source(product, peer, source_head);
        shared.hub.set_lag(product, source_head);
        if let Some(error) = report.error {
            return Err(StreamError::Invalid(error));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeHandle;
    use crate::node::tests::{address, memory_node, publish_orders, until_connected};
    use mesh_protocol::{ProductName, SecretKey};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A subscriber that never reads: flow control holds every write.
    struct NeverReads;

    impl futures::AsyncWrite for NeverReads {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_to_a_subscriber_that_never_reads_ends_as_stalled() {
        let started = tokio::time::Instant::now();
        let error = send(&mut NeverReads, b"frame").await.unwrap_err();
        assert!(matches!(error, StreamError::Stalled), "{error}");
        assert!(
            started.elapsed() >= WRITE_TIMEOUT,
            "{:?}",
            started.elapsed()
        );

        // A subscriber that reads gets the frame, whole.
        let mut read = Vec::new();
        send(&mut futures::io::Cursor::new(&mut read), b"frame")
            .await
            .unwrap();
        assert!(read.ends_with(b"frame"), "{read:?}");
    }

    #[test]
    fn an_owner_that_keeps_refusing_is_asked_again_less_and_less_often() {
        let waits: Vec<u64> = (1..=6).map(|n| owner_refused_wait(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 30, 30]);
        assert_eq!(owner_refused_wait(u32::MAX), OWNER_REFUSED_WAIT_MAX);
    }

    #[test]
    fn an_owner_that_ends_an_accepted_stream_at_once_is_waited_for_as_after_a_refusal() {
        let soon = Some(OWNER_RECHECK / 4);
        let later = Some(OWNER_RECHECK * 2);
        let refused = || Err(StreamError::Refused(Refusal::UnknownProduct));
        let invalid = || Err(StreamError::Frame(FrameError::TooLarge { len: 2, max: 1 }));
        assert!(owner_turned_away(&refused(), None, true));
        // Accepted, then closed or sent something invalid: at once, turned away; after a
        // while, a stream that served; with the connection gone, not the owner's choice.
        for result in [Ok(()), Err(StreamError::Closed), invalid()] {
            assert!(owner_turned_away(&result, soon, true), "{result:?}");
            assert!(!owner_turned_away(&result, later, true), "{result:?}");
            assert!(!owner_turned_away(&result, soon, false), "{result:?}");
        }
        // A malformed answer instead of an acceptance is the owner's fault too.
        assert!(owner_turned_away(&invalid(), None, true));
        // The connection failing, or this node's store, is not the owner turning us away.
        for result in [
            Err(StreamError::Disconnected),
            Err(StreamError::Open("no addresses".into())),
            Err(StreamError::Store("disk full".into())),
        ] {
            assert!(!owner_turned_away(&result, soon, true), "{result:?}");
        }
    }

    /// A bare libp2p peer connected to `node`, with `behaviour`; its swarm runs until the
    /// returned task is aborted.
    async fn bare_peer<B>(node: &NodeHandle, behaviour: B) -> (PeerId, tokio::task::JoinHandle<()>)
    where
        B: libp2p::swarm::NetworkBehaviour + Send + 'static,
    {
        let mut bare = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(crate::node::memory_transport)
            .unwrap()
            .with_behaviour(|_| behaviour)
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let bare_id = *bare.local_peer_id();
        bare.dial(address(node)).unwrap();
        let driver = tokio::spawn(async move {
            loop {
                futures::StreamExt::select_next_some(&mut bare).await;
            }
        });
        until_connected(node, bare_id, true).await;
        (bare_id, driver)
    }

    #[tokio::test]
    async fn a_peer_without_the_log_protocol_is_unsupported_not_gone() {
        let node = memory_node(Vec::new()).await;
        let (bare_id, driver) = bare_peer(&node, libp2p::swarm::dummy::Behaviour).await;

        let owner = SecretKey::from_bytes(&[3; 32]);
        let product = ProductId::new(owner.public(), ProductName::new("orders").unwrap());
        let error = follow_from(&node.shared, &product, bare_id, None, &mut None)
            .await
            .unwrap_err();
        assert!(matches!(error, StreamError::Unsupported(_)), "{error}");
        assert!(!error.is_connection_loss(), "{error}");
        assert!(node.shared.is_connected(&bare_id), "the connection stays");
        driver.abort();
        node.shutdown().await;
    }

    /// `owner` with one published product, and a bare peer subscribed to it by hand: the
    /// stream, accepted.
    async fn subscribed_by_hand(
        owner: &NodeHandle,
    ) -> (ProductId, Stream, tokio::task::JoinHandle<()>) {
        let product = publish_orders(owner).await;
        let streams = libp2p_stream::Behaviour::new();
        let mut control = streams.new_control();
        let (_, driver) = bare_peer(owner, streams).await;
        let mut stream = control
            .open_stream(owner.peer_id(), LOG_PROTOCOL)
            .await
            .unwrap();
        let request = SubscribeRequest {
            product: product.clone(),
            from_seq: 1,
        };
        codec::send_frame(&mut stream, &request.encode())
            .await
            .unwrap();
        let config = mesh_protocol::Config::default();
        let response = codec::read_frame(&mut stream, config.frame_bytes_max, HANDSHAKE_TIMEOUT)
            .await
            .unwrap()
            .unwrap();
        let response = SubscribeResponse::decode(response, &config).unwrap();
        assert!(response.refusal.is_none(), "{:?}", response.refusal);
        assert_eq!(owner.shared.served.load(Ordering::Relaxed), 1);
        (product, stream, driver)
    }

    #[tokio::test]
    async fn a_subscriber_that_drops_its_stream_frees_its_slot_before_any_write() {
        let owner = memory_node(Vec::new()).await;
        let (_, stream, driver) = subscribed_by_hand(&owner).await;

        // Dropping resets the stream, which yamux reads as a clean end: only a write tells.
        drop(stream);
        tokio::time::timeout(HEARTBEAT / 2, async {
            while owner.shared.served.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the slot is freed without waiting for the next heartbeat");
        driver.abort();
        owner.shutdown().await;
    }

    #[tokio::test]
    async fn a_subscriber_that_closes_its_writing_side_is_still_served() {
        let owner = memory_node(Vec::new()).await;
        let (product, mut stream, driver) = subscribed_by_hand(&owner).await;

        // As js-libp2p pipes may do after the request.
        stream.close().await.unwrap();
        owner
            .append(
                &product,
                Bytes::from_static(b"k1"),
                mesh_protocol::Operation::Upsert,
                Bytes::from_static(b"{}"),
                vec![],
            )
            .await
            .unwrap();
        let config = mesh_protocol::Config::default();
        loop {
            let frame = codec::read_frame(&mut stream, config.frame_bytes_max, HEARTBEAT)
                .await
                .unwrap()
                .expect("the owner keeps the stream open");
            if !LogFrame::decode(frame, &config).unwrap().events.is_empty() {
                break;
            }
        }
        assert_eq!(owner.shared.served.load(Ordering::Relaxed), 1);
        driver.abort();
        owner.shutdown().await;
    }
}
