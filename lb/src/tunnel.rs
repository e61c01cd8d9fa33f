//! Byte tunnel for upgraded connections (after a 101): copies both ways, passing each side's
//! end of stream on as a half-close, until both directions are done.

use std::io;

use compio::BufResult;
use compio::io::{AsyncRead, AsyncReadManaged, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;

/// Copies `a → b` and `b → a` until both have ended (or one fails).
pub async fn copy_both(a: &TcpStream, b: &TcpStream) {
    let _ = futures_util::future::join(copy(a, b), copy(b, a)).await;
}

async fn copy(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let mut reader = from;
    let mut writer = to;
    let mut fallback: Vec<u8> = Vec::new();
    loop {
        match reader.read_managed(0).await {
            Ok(Some(buf)) => {
                writer.write_all(buf).await.0?;
            }
            Ok(None) => break,
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy => {
                fallback.clear();
                fallback.reserve(16 * 1024);
                let BufResult(res, buf) = reader.read(std::mem::take(&mut fallback)).await;
                fallback = buf;
                if res? == 0 {
                    break;
                }
                let BufResult(res, buf) = writer.write_all(std::mem::take(&mut fallback)).await;
                fallback = buf;
                res?;
            }
            Err(e) => return Err(e),
        }
    }
    writer.shutdown().await
}
