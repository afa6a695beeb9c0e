//! Key-change notifications: a connection of its own, outside the pool, that `LISTEN`s on
//! [`CHANNEL`] and turns every notification into a change of a watch channel.
//!
//! A lost connection is made again after [`RECONNECT`]; each (re)connection counts as a
//! change, since notifications sent while it was down are lost and the manifest may have
//! moved. The task ends once nobody holds the receiver.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use super::connect::Connector;

/// The channel the key manifest's writers notify.
pub(super) const CHANNEL: &str = "tailpass_keys";
/// How long to wait before connecting again.
const RECONNECT: Duration = Duration::from_secs(2);

/// Starts the listener; its receiver changes on every notification.
pub(super) fn start(connector: Connector) -> watch::Receiver<u64> {
    let (sender, receiver) = watch::channel(0);
    tokio::spawn(run(connector, sender));
    receiver
}

async fn run(connector: Connector, sender: watch::Sender<u64>) {
    loop {
        tokio::select! {
            () = sender.closed() => return,
            () = listen_once(&connector, &sender) => {}
        }
        tokio::select! {
            () = sender.closed() => return,
            () = tokio::time::sleep(RECONNECT) => {}
        }
    }
}

/// One connection's life: connect, `LISTEN`, forward notifications until it ends.
async fn listen_once(connector: &Connector, sender: &watch::Sender<u64>) {
    let (client, mut connection) = match connector.config.connect(connector.tls.clone()).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %super::StoreError::from(e), "key notifications: cannot connect");
            return;
        }
    };
    let statement = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listen, if !listening => {
                if let Err(e) = done {
                    tracing::warn!(error = %super::StoreError::from(e), "key notifications: LISTEN failed");
                    return;
                }
                listening = true;
                // Whatever changed while no connection listened.
                sender.send_modify(|n| *n = n.wrapping_add(1));
            }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(_))) => {
                    sender.send_modify(|n| *n = n.wrapping_add(1));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %super::StoreError::from(e), "key notifications: connection lost");
                    return;
                }
                None => return,
            },
        }
    }
}
