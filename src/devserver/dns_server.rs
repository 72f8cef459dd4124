//! The embedded server's DNS sockets, UDP and TCP on one address: each query is answered by
//! `dns::respond` from a snapshot of the state. Thin: no DNS rule lives here.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::dns::{respond, Snapshot, Transport};
use super::server::Core;
use super::DevError;

/// Queries answered at once; beyond that UDP queries are dropped (the client retries) and
/// TCP connections wait.
const IN_FLIGHT: usize = 256;
/// A TCP connection idle this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The bound sockets, before serving.
pub struct DnsSockets {
    udp: UdpSocket,
    tcp: TcpListener,
    pub addr: SocketAddr,
}

/// Binds UDP and TCP on `addr`; an address in use is an error that names the flag to change.
pub async fn bind(addr: SocketAddr) -> Result<DnsSockets, DevError> {
    let fail = |proto: &'static str| {
        move |cause| DevError::Dns {
            addr: addr.to_string(),
            proto,
            cause,
        }
    };
    let udp = UdpSocket::bind(addr).await.map_err(fail("udp"))?;
    let tcp = TcpListener::bind(addr).await.map_err(fail("tcp"))?;
    Ok(DnsSockets { udp, tcp, addr })
}

/// Serves DNS until the returned tasks are aborted.
pub fn serve(s: DnsSockets, core: Core, node_addr: IpAddr) -> Vec<JoinHandle<()>> {
    let answerer = Arc::new(Answerer {
        core,
        node_addr,
        seed: AtomicU64::new(crate::util::time::now_ns() as u64),
    });
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));
    let udp = Arc::new(s.udp);
    vec![
        tokio::spawn(serve_udp(udp, answerer.clone(), limit.clone())),
        tokio::spawn(serve_tcp(s.tcp, answerer, limit)),
    ]
}

struct Answerer {
    core: Core,
    node_addr: IpAddr,
    seed: AtomicU64,
}

impl Answerer {
    async fn answer(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let node = self.core.node().to_string();
        let ip = self.node_addr;
        let snap = self.core.read(|st| Snapshot::of(st, &node, ip)).await;
        let serial = (crate::util::time::now_ms() / 1000) as u32;
        // A different shuffle for each query.
        let seed = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        respond(packet, &snap, transport, serial, seed)
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, a: Arc<Answerer>, limit: Arc<Semaphore>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                // ICMP errors from earlier replies surface here; keep serving.
                tracing::debug!(error = %e, "dns: udp receive");
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "dns: busy, query dropped");
            continue;
        };
        let packet = buf[..n].to_vec();
        let (sock, a) = (sock.clone(), a.clone());
        tokio::spawn(async move {
            if let Some(out) = a.answer(&packet, Transport::Udp).await {
                if let Err(e) = sock.send_to(&out, peer).await {
                    tracing::debug!(%peer, error = %e, "dns: udp send");
                }
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(l: TcpListener, a: Arc<Answerer>, limit: Arc<Semaphore>) {
    loop {
        let (conn, peer) = match l.accept().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "dns: tcp accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A weak handle: an idle connection must not keep the core (and its data file) open
        // after the server stops.
        let (a, limit) = (Arc::downgrade(&a), limit.clone());
        tokio::spawn(async move {
            if let Err(e) = tcp_conn(conn, a, &limit).await {
                tracing::debug!(%peer, error = %e, "dns: tcp connection");
            }
        });
    }
}

/// Length-prefixed queries on one connection, answered in order, until EOF or idle.
async fn tcp_conn(
    mut conn: TcpStream,
    a: std::sync::Weak<Answerer>,
    limit: &Semaphore,
) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut packet)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        let Some(a) = a.upgrade() else { return Ok(()) };
        let out = {
            let _permit = limit.acquire().await;
            a.answer(&packet, Transport::Tcp).await
        };
        drop(a);
        let Some(out) = out else { return Ok(()) };
        let Ok(n) = u16::try_from(out.len()) else {
            return Ok(());
        };
        conn.write_all(&n.to_be_bytes()).await?;
        conn.write_all(&out).await?;
    }
}
