//! HTTPS for the controller's REST API and the edge's boot server: the certificate and
//! key read from PEM files into a rustls server configuration ([`server_config`]), and
//! [`TlsIncoming`], a listener that hands the server only connections whose TLS
//! handshake has finished. The only code in Substruct that serves TLS.
//!
//! [`Clients::Firmware`] adds what UEFI firmware speaks: EDK2's TLS (OVMF, and most
//! vendors' HTTPS boot) is built without elliptic curves and without TLS 1.3, so it can
//! only agree finite-field Diffie-Hellman (`TLS_DHE_RSA_WITH_AES_256_GCM_SHA384` with an
//! RSA certificate). rustls' ring provider has no FFDHE: [`ffdhe`] adds the RFC 7919
//! group over a constant-time big-integer library.
//!
//! Handshakes run beside the accept loop, at most [`MAX_HANDSHAKES`] at once and each
//! within [`HANDSHAKE_TIMEOUT`]: a client that connects and says nothing holds one slot
//! for a bounded time and never delays the next client's handshake. A client that speaks
//! plain HTTP to the HTTPS port gets a `400` that says so, not a TLS alert it cannot read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub mod ffdhe;

/// The certificate and key a server serves HTTPS with (PEM files; read at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Who the server expects to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clients {
    /// Current TLS stacks: ECDHE only (ring's defaults).
    Modern,
    /// Also UEFI firmware: adds TLS 1.2 DHE-RSA with AES-256-GCM over the RFC 7919
    /// 2048-bit group, after every ECDHE suite (a client offering ECDHE gets ECDHE).
    Firmware,
}

/// How long a client has, from connecting, to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; further connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The body of what a plain-HTTP request to the HTTPS port gets.
const PLAIN_HTTP_BODY: &str = "{\"error\":\"this port serves HTTPS: use an https:// URL\"}\n";

/// The whole `400` answer to a plain-HTTP request.
fn plain_http_answer() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    )
}

/// Why the API's certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} is not valid PEM")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS certificate {path} holds no CERTIFICATE block")]
    NoCertificate { path: PathBuf },
    #[error("TLS key {path} holds no private key (PKCS#8, PKCS#1 or SEC1 PEM block)")]
    NoKey { path: PathBuf },
    #[error("TLS certificate {cert} and key {key} cannot be used together")]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Reads the certificate chain and key named in `paths` into a TLS server configuration
/// (TLS 1.2 and 1.3, ring, HTTP/1.1 by ALPN) for `clients`. Fails naming the file when
/// either is unreadable, empty, or when the key does not belong to the certificate.
pub fn server_config(paths: &TlsPaths, clients: Clients) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read("TLS certificate", &paths.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: "TLS certificate",
            path: paths.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: paths.cert.clone(),
        });
    }
    let key_pem = read("TLS key", &paths.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: paths.key.clone(),
        },
        source => TlsError::Pem {
            what: "TLS key",
            path: paths.key.clone(),
            source,
        },
    })?;
    let unusable = |source| TlsError::Unusable {
        cert: paths.cert.clone(),
        key: paths.key.clone(),
        source,
    };
    let mut provider = rustls::crypto::ring::default_provider();
    if clients == Clients::Firmware {
        ffdhe::add_to(&mut provider);
    }
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(unusable)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The DER of the `rsaEncryption` algorithm identifier's OID (1.2.840.113549.1.1.1), as
/// it appears in a certificate's subject public key info.
const RSA_ENCRYPTION_OID: [u8; 11] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

/// Whether the server certificate in `paths` (its first) has an RSA key: what UEFI
/// firmware needs ([`Clients::Firmware`]). A certificate holds that OID only in its
/// public key info (signature algorithms use other OIDs: `…1.1.11` and so on).
pub fn has_rsa_key(paths: &TlsPaths) -> Result<bool, TlsError> {
    let cert_pem = read("TLS certificate", &paths.cert)?;
    let first = CertificateDer::pem_slice_iter(&cert_pem)
        .next()
        .transpose()
        .map_err(|source| TlsError::Pem {
            what: "TLS certificate",
            path: paths.cert.clone(),
            source,
        })?
        .ok_or_else(|| TlsError::NoCertificate {
            path: paths.cert.clone(),
        })?;
    Ok(first
        .windows(RSA_ENCRYPTION_OID.len())
        .any(|w| w == RSA_ENCRYPTION_OID))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A TCP listener whose connections come out TLS-established. Its handshake task
/// stops when the `TlsIncoming` is dropped.
#[derive(Debug)]
pub struct TlsIncoming {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsIncoming {
    /// Serves TLS with `config` on the connections `listener` accepts (spawns the
    /// accept-and-handshake task on the current runtime).
    /// `server` names the server in log lines (`REST API`, `edge HTTPS`).
    pub fn new(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        server: &'static str,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(16);
        tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx, server));
        Ok(Self { local_addr, ready })
    }

    /// The next connection whose handshake finished, and its peer.
    pub async fn accept(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The task ends only when this receiver is gone: not reached.
            None => std::future::pending().await,
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

type Ready = mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>;

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: Ready,
    server: &'static str,
) {
    let mut handshakes = FuturesUnordered::new();
    loop {
        tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept(), if handshakes.len() < MAX_HANDSHAKES => match accepted {
                Ok((tcp, peer)) => handshakes.push(handshake(acceptor.clone(), tcp, peer, server)),
                Err(e) => {
                    // Out of descriptors and the like: let connections close first.
                    tracing::warn!(error = %e, "{server}: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = handshakes.next(), if !handshakes.is_empty() => {
                if let Some(connection) = done {
                    if ready.send(connection).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The TLS handshake on one connection, bounded by [`HANDSHAKE_TIMEOUT`]; `None` when it
/// failed, timed out, or the client spoke plain HTTP (answered with a 400).
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    server: &'static str,
) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
    let attempt = async {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE_RECORD {
            refuse_plain_http(tcp).await;
            return Ok(None);
        }
        acceptor.accept(tcp).await.map(Some)
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
        Ok(Ok(Some(stream))) => Some((stream, peer)),
        Ok(Ok(None)) => {
            tracing::debug!(%peer, "{server}: plain HTTP on the HTTPS port, answered 400");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "{server}: TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "{server}: TLS handshake timed out");
            None
        }
    }
}

/// Answers a plain-HTTP client with [`plain_http_answer`], then reads a little of what
/// it sent so closing does not reset the connection before the answer is read.
async fn refuse_plain_http(mut tcp: TcpStream) {
    if tcp.write_all(plain_http_answer().as_bytes()).await.is_err() || tcp.shutdown().await.is_err()
    {
        return;
    }
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match tcp.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        TlsIncoming::accept(self).await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(TlsIncoming::local_addr(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_has_the_right_length() {
        let text = plain_http_answer();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert!(json["error"]
            .as_str()
            .unwrap_or_default()
            .contains("https://"));
    }
}
