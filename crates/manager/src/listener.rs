//! The manager's TCP listener: each connection is counted against its address's limit
//! and the listener's, goes through a TLS handshake with the cluster's client verifier,
//! and carries what was verified about its client to every request on it.

use crate::security::auth::{Gate, PeerInfo};
use crate::security::rootca::{CaHandle, CaState};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// A TLS connection with what we verified about its client (`I`: what the listener
/// attaches to each request).
pub struct TlsConn<I> {
    inner: TlsStream<TcpStream>,
    info: I,
    /// Held while the connection lives: counts toward its address's limit.
    _slot: ConnSlot,
}

/// Connections (handshakes included) one peer address may hold at once. A node needs a
/// handful; the bound keeps one address from exhausting the manager's sockets and memory.
pub const MAX_CONNS_PER_ADDR: u32 = 64;

/// Connections the listener holds at once from all addresses together: room for a
/// fleet of 10,000 nodes with one each and their managers, and still a bound on what
/// many addresses together can make the manager hold.
pub const MAX_CONNS: u32 = 12_288;

/// Open connections per peer address, and in all.
#[derive(Default)]
struct ConnLimiter {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
    /// All open connections (changed under `open`'s lock).
    all: std::sync::atomic::AtomicU32,
}

impl ConnLimiter {
    fn total(&self) -> u32 {
        self.all.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One counted connection; dropping it frees the slot.
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: std::net::IpAddr,
}

impl ConnLimiter {
    fn acquire(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<ConnSlot> {
        let mut open = self.open.lock().ok()?;
        if self.total() >= MAX_CONNS {
            return None;
        }
        let n = open.entry(ip).or_insert(0);
        if *n >= MAX_CONNS_PER_ADDR {
            return None;
        }
        *n += 1;
        self.all.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(ConnSlot {
            limiter: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limiter.open.lock() {
            if let Some(n) = open.get_mut(&self.ip) {
                *n -= 1;
                self.limiter
                    .all
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                if *n == 0 {
                    open.remove(&self.ip);
                }
            }
        }
    }
}

impl<I: Clone + Send + Sync + 'static> Connected for TlsConn<I> {
    type ConnectInfo = I;
    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

/// What a listener checks clients against and attaches to their requests.
pub trait Admission: Clone + Send + Sync + 'static {
    type Info: Clone + Send + Sync + 'static;
    /// The roots and cluster client certificates must chain to now.
    fn trust(&self) -> shoal_pki::ClusterTrust;
    fn info(&self, remote: SocketAddr, peer: Option<shoal_pki::Peer>) -> Self::Info;
}

impl Admission for Gate {
    type Info = PeerInfo;
    fn trust(&self) -> shoal_pki::ClusterTrust {
        self.ca.get().trust.clone()
    }
    fn info(&self, remote: SocketAddr, peer: Option<shoal_pki::Peer>) -> PeerInfo {
        let (identity, user) = match peer {
            Some(shoal_pki::Peer::Node(n)) => (Some(n), None),
            Some(shoal_pki::Peer::User(u)) => (None, Some(u)),
            None => (None, None),
        };
        PeerInfo {
            remote_addr: Some(remote),
            identity,
            user,
            gate: self.clone(),
        }
    }
}

impl<I: Unpin> AsyncRead for TlsConn<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: Unpin> AsyncWrite for TlsConn<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raft messages can carry many entries or a snapshot chunk.
pub(crate) const RAFT_MAX_MESSAGE: usize = 64 << 20;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn accept_loop<A: Admission>(
    listener: TcpListener,
    acceptor: Arc<std::sync::RwLock<TlsAcceptor>>,
    gate: A,
    tx: tokio::sync::mpsc::Sender<Result<TlsConn<A::Info>, io::Error>>,
    cancel: CancellationToken,
) {
    let limiter = Arc::new(ConnLimiter::default());
    let mut last_refusal_log: Option<std::time::Instant> = None;
    loop {
        let (tcp, remote) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = limiter.acquire(remote.ip()) else {
            // Dropping the socket refuses it; log at most once a second.
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                if limiter.total() >= MAX_CONNS {
                    tracing::warn!(%remote, limit = MAX_CONNS, "refused a connection: the listener holds as many connections as it may");
                } else {
                    tracing::warn!(%remote, limit = MAX_CONNS_PER_ADDR, "refused a connection: too many open from this address");
                }
                last_refusal_log = Some(std::time::Instant::now());
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Ok(acceptor) = acceptor.read().map(|a| a.clone()) else {
            continue;
        };
        let trust = gate.trust();
        let gate = gate.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::info!(%remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            // The handshake already verified the chain and cluster; this turns the
            // certificate into the identity handlers use.
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.split_first())
                .and_then(|(ee, rest)| trust.verify_peer(ee, rest, SystemTime::now()).ok());
            let conn = TlsConn {
                inner: tls,
                info: gate.info(remote, peer),
                _slot: slot,
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

pub(crate) fn acceptor_for(
    ca: &CaState,
    leaf: &[u8],
    key_pkcs8: &[u8],
) -> Result<TlsAcceptor, shoal_pki::PkiError> {
    let cfg = shoal_pki::server_config(&ca.trust, &ca.server_chain(leaf), key_pkcs8, None)?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// What a manager's listener serves and trusts: its certificate (swapped after a
/// renewal) and the cluster's roots (swapped when a root rotation starts or ends). The
/// same identity is what the manager presents when it forwards a call to the leader.
#[derive(Clone)]
pub struct IdentityHandle {
    acceptor: Arc<std::sync::RwLock<TlsAcceptor>>,
    ca: CaHandle,
    /// The certificate and PKCS#8 key served now.
    current: Arc<std::sync::Mutex<(Vec<u8>, Vec<u8>)>>,
    /// Counts changes of certificate or roots: what was built from an older one (a
    /// channel to the leader) is built again.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl IdentityHandle {
    pub(crate) fn new(
        ca: CaHandle,
        cert_der: &[u8],
        key_pkcs8: &[u8],
    ) -> Result<IdentityHandle, shoal_pki::PkiError> {
        Ok(IdentityHandle {
            acceptor: Arc::new(std::sync::RwLock::new(acceptor_for(
                &ca.get(),
                cert_der,
                key_pkcs8,
            )?)),
            ca,
            current: Arc::new(std::sync::Mutex::new((
                cert_der.to_vec(),
                key_pkcs8.to_vec(),
            ))),
            generation: Arc::default(),
        })
    }

    pub(crate) fn acceptor(&self) -> Arc<std::sync::RwLock<TlsAcceptor>> {
        self.acceptor.clone()
    }

    /// Serves a new certificate (after a renewal).
    pub fn set(&self, cert_der: &[u8], key_pkcs8: &[u8]) -> Result<(), shoal_pki::PkiError> {
        let a = acceptor_for(&self.ca.get(), cert_der, key_pkcs8)?;
        if let Ok(mut cur) = self.current.lock() {
            *cur = (cert_der.to_vec(), key_pkcs8.to_vec());
        }
        if let Ok(mut w) = self.acceptor.write() {
            *w = a;
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Which identity is in force (see [`IdentityHandle::client_config`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A TLS client configuration with the identity in force: this manager's certificate,
    /// verifying the other side against the roots trusted now.
    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, shoal_pki::PkiError> {
        let (cert, key) = self.current.lock().map(|c| c.clone()).unwrap_or_default();
        let mut roots = rustls::RootCertStore::empty();
        for r in &self.ca.get().roots {
            roots
                .add(rustls::pki_types::CertificateDer::from(r.clone()))
                .map_err(|e| shoal_pki::PkiError::BadRoot(e.to_string()))?;
        }
        Ok(Arc::new(shoal_pki::client_config(
            Arc::new(roots),
            Some((&[cert], &key)),
        )?))
    }

    /// Rebuilds the listener's configuration whenever the cluster's roots change.
    pub(crate) async fn follow(self, cancel: CancellationToken) {
        let mut rx = self.ca.subscribe();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
            let (leaf, key) = self.current.lock().map(|c| c.clone()).unwrap_or_default();
            if let Err(e) = self.set(&leaf, &key) {
                tracing::error!(error = %e, "cannot serve the new root CA chain");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_bounded_per_address_and_freed_on_close() {
        let limiter = Arc::new(ConnLimiter::default());
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<ConnSlot> = (0..MAX_CONNS_PER_ADDR)
            .map(|_| limiter.acquire(a).expect("under the limit"))
            .collect();
        assert!(limiter.acquire(a).is_none(), "one over the limit");
        assert!(
            limiter.acquire(b).is_some(),
            "another address is not affected"
        );
        drop(held);
        assert!(
            limiter.acquire(a).is_some(),
            "closed connections free their slots"
        );
        assert!(limiter.open.lock().unwrap().len() <= 1);
    }

    #[test]
    fn connections_are_bounded_in_all_whatever_the_address() {
        let limiter = Arc::new(ConnLimiter::default());
        let held: Vec<ConnSlot> = (0..MAX_CONNS)
            .map(|i| {
                let ip = std::net::IpAddr::from([10, 1, (i / 256) as u8 % 255, (i % 256) as u8]);
                limiter.acquire(ip).expect("under the limits")
            })
            .collect();
        assert!(
            limiter.acquire("10.200.0.1".parse().unwrap()).is_none(),
            "a new address is refused once the listener is full"
        );
        drop(held);
        assert!(limiter.acquire("10.200.0.1".parse().unwrap()).is_some());
    }
}
