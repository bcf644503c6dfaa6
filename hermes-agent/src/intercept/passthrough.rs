//! Interception only: each steered connection is proxied to the app as a byte stream, both
//! ways, half-close included. The baseline that measures what interception costs.
use std::{net::SocketAddr, time::Duration};

use tokio::{net::TcpStream, sync::watch};

use super::Handler;

/// Bytes buffered per direction: large enough that bulk transfers move in few syscalls.
const BUFFER: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Passthrough {
    pub app: SocketAddr,
    /// Where the app is reached from.
    pub source: std::net::Ipv4Addr,
}

impl Handler for Passthrough {
    /// A byte stream has no request boundaries: on shutdown, it runs until either side closes
    /// or the grace period ends.
    async fn serve(self, mut client: TcpStream, peer: SocketAddr, _stop: watch::Receiver<bool>) {
        let connect = crate::steer::source::connect(self.source, self.app);
        let mut app = match tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        {
            Ok(app) => app,
            Err(error) => {
                // Closing the client connection is all we can tell it at the byte level.
                tracing::warn!(%peer, app = %self.app, %error, "app unreachable");
                return;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = app.set_nodelay(true);
        match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut app, BUFFER, BUFFER).await
        {
            Ok((up, down)) => tracing::debug!(%peer, up, down, "connection done"),
            Err(error) => tracing::debug!(%peer, %error, "connection ended"),
        }
    }
}
