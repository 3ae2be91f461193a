//! gRPC channels to managers over TLS. Every channel verifies the server name
//! `shoal-manager`, so only a manager certificate can answer.

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `host:port` → a URI tonic accepts. The scheme is plain `http` because TLS is done by
/// our own connector, with our own verifier. Public so the benchmark's hollow nodes
/// connect as agents do.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10)))
}

fn connector(
    addr: String,
    cfg: Arc<ClientConfig>,
) -> impl tower::Service<
    Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_uri: Uri| {
        let addr = addr.clone();
        let cfg = cfg.clone();
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(shoal_pki::MANAGER_SERVER_NAME)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = TlsConnector::from(cfg).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    })
}

/// A channel that connects on first use and reconnects by itself.
pub fn lazy_channel(
    addr: &str,
    cfg: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(addr)?.connect_with_connector_lazy(connector(addr.to_string(), cfg)))
}

/// [`lazy_channel`] that gives up connecting after `timeout` (a call forwarded to a
/// leader that may have just been cut off: the election elsewhere takes about a second).
pub fn lazy_channel_timeout(
    addr: &str,
    cfg: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(addr)?
        .connect_timeout(timeout)
        .connect_with_connector_lazy(connector(addr.to_string(), cfg)))
}

/// A channel connected now (the TCP and TLS handshakes done).
pub async fn channel(
    addr: &str,
    cfg: Arc<ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    endpoint(addr)?
        .connect_with_connector(connector(addr.to_string(), cfg))
        .await
}

pub use shoal_proto::error_chain;
