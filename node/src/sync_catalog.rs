//! Catalog anti-entropy over `/mesh/catalog-sync/1`.
//!
//! The asker sends `Digest` with its root hash, gets the other side's bucket hashes (none if the
//! roots match), and for each bucket that differs sends what it holds there and receives what it
//! lacks, page by page. One round trip of a few dozen bytes when catalogs are equal, whatever
//! their size. Every node asks a random peer on a timer and
//! every new peer at once, so a node that joined late, restarted or was partitioned converges
//! without anyone publishing again.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{PeerId, Stream};
use mesh_protocol::sync::{BucketResponse, CatalogDigest, CatalogSyncRequest};

use crate::behaviour::CATALOG_SYNC_PROTOCOL;
use crate::codec::{self, FrameError};
use crate::network::{Command, short};
use crate::node::Shared;

/// Longest wait for the other side's next frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait to open a stream (including dialing).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest bucket response. Entries are at most 60 KiB, so a page holds at least 17 of them.
const RESPONSE_BYTES_MAX: usize = 1024 * 1024;
/// Most entries one sync may bring for this node to gossip them on. A sync that brings a few
/// is a node catching up on recent updates that its neighbours, cut off with it, likely lack
/// too; one that brings many is a node joining or long away, whose neighbours hold them.
pub const REGOSSIP_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot open a stream: {0}")]
    Open(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("peer closed the stream early")]
    Closed,
    #[error("malformed message: {0}")]
    Decode(#[from] mesh_protocol::DecodeError),
    #[error("store: {0}")]
    Store(String),
}

/// Starts a sync with `peer` unless one is running already.
pub fn spawn_sync(shared: Arc<Shared>, peer: PeerId) {
    if !shared.begin_sync(peer) {
        return;
    }
    let task_shared = shared.clone();
    shared.spawn(async move {
        match sync_with(&task_shared, peer).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(peer = %short(&peer), entries = n, "catalog caught up"),
            Err(e) => tracing::debug!(peer = %short(&peer), "catalog sync failed: {e}"),
        }
        task_shared.end_sync(&peer);
    });
}

/// Pulls from `peer` every entry it holds that this node lacks or holds older. Returns how
/// many entries changed here.
///
/// Entries that changed here had not come by gossip (yet), most often because this node was
/// cut off from part of the network: it tells the event loop ([`Command::CaughtUp`]), which
/// looks again at once (at most once per 5 s) for the peers (owners) it could not reach, and,
/// when they are at most [`REGOSSIP_MAX`], gossips them on as it does an entry it receives by
/// gossip. Without that, an entry learned by sync goes no further until the next anti-entropy
/// round of each neighbour: after a partition heals, only the nodes that open a connection
/// across the cut would sync, and their neighbours would wait a sync interval (IHAVE announces
/// only entries that arrived by gossip). Neighbours that hold an entry drop the copy before
/// any signature check, and do not forward it. A sync that fails half-way tells it what the
/// pages before brought.
pub async fn sync_with(shared: &Arc<Shared>, peer: PeerId) -> Result<usize, SyncError> {
    let (mut changed, mut news) = (0, Vec::new());
    let result = pull(shared, peer, &mut changed, &mut news).await;
    if changed > 0 {
        if changed > REGOSSIP_MAX {
            news.clear();
        }
        // Fails only while the node shuts down.
        let _ = shared
            .commands
            .send(Command::CaughtUp { regossip: news })
            .await;
    }
    result.map(|()| changed)
}

/// [`sync_with`]'s exchange. Counts in `changed` the entries that changed here, and keeps the
/// first [`REGOSSIP_MAX`] of them, encoded, in `news`.
async fn pull(
    shared: &Arc<Shared>,
    peer: PeerId,
    changed: &mut usize,
    news: &mut Vec<bytes::Bytes>,
) -> Result<(), SyncError> {
    let mut stream = tokio::time::timeout(
        OPEN_TIMEOUT,
        shared.open_stream(peer, CATALOG_SYNC_PROTOCOL),
    )
    .await
    .map_err(|_| SyncError::Open("timed out".into()))?
    .map_err(|e| SyncError::Open(e.to_string()))?;
    let config = shared.protocol.clone();
    let root = shared.catalog.root();
    codec::send_frame(
        &mut stream,
        &CatalogSyncRequest::Digest { root: Some(root) }.encode(),
    )
    .await
    .map_err(FrameError::from)?;
    let digest = read(&mut stream, config.frame_bytes_max).await?;
    let theirs = CatalogDigest::decode(digest, &config)?;
    for bucket in shared.catalog.differing_buckets(&theirs) {
        loop {
            let request = CatalogSyncRequest::Bucket {
                bucket,
                have: shared.catalog.versions_in(bucket),
            };
            codec::send_frame(&mut stream, &request.encode())
                .await
                .map_err(FrameError::from)?;
            let response =
                BucketResponse::decode(read(&mut stream, config.frame_bytes_max).await?, &config)?;
            let catalog = shared.catalog.clone();
            let peer_name = short(&peer);
            let entries = response.entries;
            let accepted = crate::node::spawn_blocking(move || {
                catalog.accept_many(entries.into_iter().map(|e| (e, peer_name.as_str())))
            })
            .await
            .map_err(|e| SyncError::Store(e.to_string()))?
            .map_err(|e| SyncError::Store(e.to_string()))?;
            *changed += accepted.changed.len();
            let room = REGOSSIP_MAX.saturating_sub(news.len());
            news.extend(
                accepted
                    .changed
                    .iter()
                    .take(room)
                    .map(|e| e.encoded().clone()),
            );
            // Stop paging when the peer has nothing more, or sends nothing we can use (a peer
            // that keeps answering `more` with rejected entries cannot keep us here).
            if !response.more || accepted.changed.is_empty() {
                break;
            }
        }
    }
    let _ = futures::AsyncWriteExt::close(&mut stream).await;
    Ok(())
}

async fn read(stream: &mut Stream, max: usize) -> Result<bytes::Bytes, SyncError> {
    codec::read_frame(stream, max, FRAME_TIMEOUT)
        .await?
        .ok_or(SyncError::Closed)
}

/// Answers sync requests from peers.
pub async fn serve(shared: Arc<Shared>, incoming: libp2p_stream::IncomingStreams) {
    crate::node::accept_streams(
        shared,
        incoming,
        "catalog sync",
        |shared, _peer, stream| async move { serve_one(&shared, stream).await },
    )
    .await;
}

async fn serve_one(shared: &Arc<Shared>, mut stream: Stream) -> Result<(), SyncError> {
    let config = shared.protocol.clone();
    loop {
        let Some(frame) =
            codec::read_frame(&mut stream, config.frame_bytes_max, FRAME_TIMEOUT).await?
        else {
            return Ok(());
        };
        let response = match CatalogSyncRequest::decode(frame, &config)? {
            CatalogSyncRequest::Digest { root } => {
                shared.catalog.digest_for(root.as_ref()).encode()
            }
            CatalogSyncRequest::Bucket { bucket, have } => {
                let (entries, more) = shared.catalog.newer_than(bucket, &have, RESPONSE_BYTES_MAX);
                BucketResponse { entries, more }.encode()
            }
        };
        codec::send_frame(&mut stream, &response)
            .await
            .map_err(FrameError::from)?;
    }
}
