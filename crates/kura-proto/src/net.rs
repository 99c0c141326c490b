//! Serving on a listener the caller bound.
//!
//! tonic's `Server::tcp_nodelay` applies only to listeners tonic binds
//! itself; every Kura server binds its own (port 0 in tests, addresses
//! from config), so the accepted connections must get `TCP_NODELAY` here.
//! Without it a small response waits for the peer's delayed ACK: every
//! metadata read and shard fetch took ~40 ms more on loopback.

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

/// The connections `listener` accepts, with Nagle's algorithm off.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
        conn
    })
}
