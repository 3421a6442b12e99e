//! The TCP side of `Host::forward`: each local connection becomes a
//! direct-tcpip channel to a port on the droplet's loopback.

use crate::error::{Context, Result};
use russh::client;
use tokio::net::TcpStream;

use super::connect::Client;

/// One forwarded TCP connection: a direct-tcpip channel, copied both ways
/// until both sides are done (each side's EOF is passed on to the other).
pub(super) async fn tunnel(
    session: &client::Handle<Client>,
    mut tcp: TcpStream,
    peer: std::net::SocketAddr,
    remote_port: u16,
) -> Result<()> {
    let _ = tcp.set_nodelay(true);
    let channel = session
        .channel_open_direct_tcpip(
            "127.0.0.1",
            u32::from(remote_port),
            peer.ip().to_string(),
            u32::from(peer.port()),
        )
        .await
        .context("the server refused to open the tunnel channel")?;
    let mut stream = channel.into_stream();
    // A reset here is ordinary (a client dropping a pooled connection).
    if let Err(e) = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await {
        log::debug!("tunnel connection from {peer} ended: {e}");
    }
    Ok(())
}
