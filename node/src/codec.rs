//! Framing for node-to-node streams: a 4-byte big-endian length, then that many bytes.
//!
//! The length is checked against a cap before anything is allocated, so a peer that announces a
//! huge frame costs four bytes of reading. Every read has a deadline: a peer that stops sending
//! mid-frame cannot hold a task forever.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("stream I/O: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("peer sent nothing for {0:?}")]
    Timeout(Duration),
}

/// Writes one frame. Does not flush: callers flush once after a burst of frames.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) -> io::Result<()> {
    let len = u32::try_from(frame.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(frame).await
}

/// Writes one frame and flushes.
pub async fn send_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &[u8]) -> io::Result<()> {
    write_frame(writer, frame).await?;
    writer.flush().await
}

/// Reads one frame of at most `max` bytes, waiting at most `timeout` for it. `Ok(None)` when the
/// peer closed the stream cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    timeout: Duration,
) -> Result<Option<Bytes>, FrameError> {
    tokio::time::timeout(timeout, read_frame_inner(reader, max))
        .await
        .map_err(|_| FrameError::Timeout(timeout))?
}

async fn read_frame_inner<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut len_bytes = [0u8; 4];
    // Distinguish a clean close (no bytes of a new frame) from a cut inside the length.
    let first = reader.read(&mut len_bytes[..1]).await?;
    if first == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut len_bytes[1..]).await?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = vec![0u8; len];
    reader.read_exact(&mut buf).await?;
    Ok(Some(Bytes::from(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    const WAIT: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn frames_round_trip_and_a_clean_close_is_none() {
        let mut buf = Cursor::new(Vec::new());
        write_frame(&mut buf, b"hello").await.unwrap();
        send_frame(&mut buf, b"").await.unwrap();
        let mut reader = Cursor::new(buf.into_inner());
        assert_eq!(
            read_frame(&mut reader, 16, WAIT).await.unwrap().unwrap(),
            Bytes::from("hello")
        );
        assert_eq!(
            read_frame(&mut reader, 16, WAIT).await.unwrap().unwrap(),
            Bytes::new()
        );
        assert!(read_frame(&mut reader, 16, WAIT).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let mut reader = Cursor::new(vec![0, 0, 1, 0]);
        assert!(matches!(
            read_frame(&mut reader, 255, WAIT).await,
            Err(FrameError::TooLarge { len: 256, max: 255 })
        ));
        let mut reader = Cursor::new(vec![0, 0, 0, 5, b'a']);
        assert!(matches!(
            read_frame(&mut reader, 16, WAIT).await,
            Err(FrameError::Io(_))
        ));
        let mut reader = Cursor::new(vec![0, 0]);
        assert!(matches!(
            read_frame(&mut reader, 16, WAIT).await,
            Err(FrameError::Io(_))
        ));
    }
}
