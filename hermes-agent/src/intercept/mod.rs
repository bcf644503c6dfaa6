//! Interception: accepts the connections steered to the agent and serves each one with a
//! protocol handler, until shutdown; then lets in-flight connections finish within a grace period.
//! At most `max_connections` are served at once; a client beyond that is refused at once
//! ([`Handler::refuse`]) and its connection closed.
pub mod http;
pub mod passthrough;
pub mod tcp;
#[cfg(test)]
mod tcp_tests;
#[cfg(test)]
mod tests;

/// Serves `handler` on loopback until the test ends; returns where clients connect.
#[cfg(test)]
fn serve_in_test(handler: impl Handler) -> SocketAddr {
    let listeners = Listeners::bind().unwrap();
    let addr = listeners.v4.local_addr().unwrap();
    tokio::spawn(serve(
        listeners,
        handler,
        std::future::pending(),
        Duration::from_secs(1),
        1000,
    ));
    addr
}

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
    task::JoinSet,
};

use crate::steer::Listeners;

/// Serves one accepted client connection. `stop` turns true on shutdown: finish the request in
/// progress, then close.
pub trait Handler: Clone + Send + 'static {
    fn serve(
        self,
        client: TcpStream,
        peer: SocketAddr,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;

    /// Turns away a client beyond the connection limit (the connection closes afterwards).
    fn refuse(&self, client: TcpStream) {
        drop(client);
    }
}

/// Accepts on `listeners` until `shutdown` resolves, then waits up to `grace` for the connections
/// being served to finish and aborts the rest. Dropping the listeners on shutdown makes the
/// kernel remove them from the SOCKMAP: from then on the port fails closed (or open).
pub async fn serve(
    listeners: Listeners,
    handler: impl Handler,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    max_connections: usize,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections));
    let v4 = into_tokio(listeners.v4)?;
    let v6 = listeners.v6.map(into_tokio).transpose()?;
    let mut connections = JoinSet::new();
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = v4.accept() => accepted,
            accepted = accept(v6.as_ref()) => accepted,
            // Reap finished connections so the set does not grow with the connection count.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((client, peer)) => match Arc::clone(&slots).try_acquire_owned() {
                Ok(slot) => {
                    let served = handler.clone().serve(client, peer, stopping.clone());
                    connections.spawn(async move {
                        served.await;
                        drop(slot);
                    });
                }
                Err(_) => {
                    tracing::debug!(%peer, max_connections, "too many connections; refusing one");
                    handler.refuse(client);
                }
            },
            Err(error) => {
                // Out of file descriptors or memory: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop((v4, v6));
    let _ = stop.send(true);
    tracing::info!(
        in_flight = connections.len(),
        grace = ?grace,
        "shutting down: no longer accepting"
    );
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            aborted = connections.len(),
            "grace period over; closing connections still open"
        );
        connections.shutdown().await;
    }
    Ok(())
}

fn into_tokio(listener: std::net::TcpListener) -> io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}
