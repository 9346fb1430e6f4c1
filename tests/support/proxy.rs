//! A TCP proxy between one controller and the apiserver that can cut the network.
//!
//! `blackhole` models a partition that leaves connections half-dead: every connection open
//! at that moment, and every one opened while it lasts, goes silent for good: what either
//! side sends is dropped, nothing is closed (as behind a firewall that drops packets, so
//! no RST ever comes). `restore` lets *new* connections through again; the silent ones stay
//! silent until the proxy is dropped, so a client without deadlines hangs on them forever.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    /// The epoch of the current blackhole, odd while it lasts: a connection that saw an odd
    /// epoch stays silent.
    epoch: watch::Sender<u64>,
    /// Bytes forwarded from the client to the apiserver.
    up: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Proxy {
    /// A proxy in front of the apiserver `kubeconfig` names.
    pub async fn start(kubeconfig: &Path) -> Proxy {
        let upstream = server_port(kubeconfig);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listen");
        let port = listener.local_addr().expect("proxy address").port();
        let (epoch, epoch_rx) = watch::channel(0u64);
        let up = Arc::new(AtomicU64::new(0));
        let counted = up.clone();
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(connection(
                    client,
                    upstream,
                    epoch_rx.clone(),
                    counted.clone(),
                ));
            }
        });
        Proxy {
            port,
            epoch,
            up,
            accept,
        }
    }

    pub fn blackhole(&self) {
        self.epoch.send_modify(|e| *e |= 1);
    }

    pub fn restore(&self) {
        self.epoch.send_modify(|e| {
            if *e % 2 == 1 {
                *e += 1
            }
        });
    }

    /// Bytes forwarded from the client to the apiserver so far.
    pub fn bytes_up(&self) -> u64 {
        self.up.load(Ordering::SeqCst)
    }

    /// A copy of `kubeconfig` (next to it, named after the proxy's port) pointing at the
    /// proxy.
    pub fn kubeconfig(&self, kubeconfig: &Path) -> PathBuf {
        let text = std::fs::read_to_string(kubeconfig).expect("reading kubeconfig");
        let upstream = server_port(kubeconfig);
        let text = text.replace(
            &format!("server: https://127.0.0.1:{upstream}"),
            &format!("server: https://127.0.0.1:{}", self.port),
        );
        let path = kubeconfig.with_file_name(format!("proxy-{}.kubeconfig", self.port));
        std::fs::write(&path, text).expect("writing the proxy kubeconfig");
        path
    }
}

fn server_port(kubeconfig: &Path) -> u16 {
    let text = std::fs::read_to_string(kubeconfig).expect("reading kubeconfig");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("a kubeconfig for https://127.0.0.1:<port>")
}

async fn connection(
    client: TcpStream,
    upstream: u16,
    mut epoch: watch::Receiver<u64>,
    up: Arc<AtomicU64>,
) {
    if *epoch.borrow_and_update() % 2 == 1 {
        return swallow(client, None).await;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut to_server = [0u8; 16 * 1024];
    let mut to_client = [0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = epoch.changed() => {
                if *epoch.borrow_and_update() % 2 == 1 {
                    let client = client_read.reunite(client_write).expect("one stream");
                    let server = server_read.reunite(server_write).expect("one stream");
                    return swallow(client, Some(server)).await;
                }
            }
            n = client_read.read(&mut to_server) => {
                let Ok(n @ 1..) = n else { return };
                if server_write.write_all(&to_server[..n]).await.is_err() { return; }
                up.fetch_add(n as u64, Ordering::SeqCst);
            }
            n = server_read.read(&mut to_client) => {
                let Ok(n @ 1..) = n else { return };
                if client_write.write_all(&to_client[..n]).await.is_err() { return; }
            }
        }
    }
}

/// Reads and drops whatever either side sends, never closing, until the proxy goes.
async fn swallow(mut client: TcpStream, server: Option<TcpStream>) {
    let mut sink = [0u8; 16 * 1024];
    let drain_server = async move {
        if let Some(mut server) = server {
            let mut sink = [0u8; 16 * 1024];
            while let Ok(1..) = server.read(&mut sink).await {}
        }
        std::future::pending::<()>().await;
    };
    let drain_client = async {
        while let Ok(1..) = client.read(&mut sink).await {}
        std::future::pending::<()>().await;
    };
    tokio::join!(drain_server, drain_client);
}
