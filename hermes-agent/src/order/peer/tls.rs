//! Peer authentication: mutual TLS (rustls, TLS 1.3). Every node has a certificate from the
//! cluster's CA that names it with the DNS name `hermes-node-<id>`, for both server and client
//! use. A connection to node N checks that the server's certificate names N; the server checks
//! that the client's certificate names the node every call claims to come from.
//!
//! The three files are read again when they change (checked every [`RELOAD_EVERY`]): rotating a
//! certificate or the CA needs no restart. Connections made with the old files are closed, so
//! that every peer shows the new ones. Rotating the CA goes in three steps, each on every node:
//! a CA file with both CAs, then the new certificates, then the new CA alone.
use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::warnings::Warnings;
use crate::order::typ::NodeId;

/// How often the files are checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The DNS name a node's certificate carries.
pub fn name(id: NodeId) -> String {
    format!("hermes-node-{id}")
}

/// Where a node's credentials are.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, String),
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
}

/// What a peer connection is made with: TLS, or (only when asked for) plain TCP.
#[derive(Clone)]
pub enum Security {
    Tls(Arc<PeerTls>),
    Insecure,
}

/// A stream to or from a peer.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The certificate chain a client presented.
pub struct Presented {
    end_entity: CertificateDer<'static>,
    intermediates: Vec<CertificateDer<'static>>,
}

/// The node's TLS credentials, as last read.
pub struct PeerTls {
    files: Files,
    /// The one name every peer's certificate carries (pod mode: the agents'); `None`: each
    /// node's names it, `hermes-node-<id>`.
    shared_name: Option<String>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Configs>>,
    stamps: Mutex<Stamps>,
    /// Counts reloads: connections made before one are closed.
    generation: AtomicU64,
    handshake_failures: AtomicU64,
    refused: Warnings,
}

struct Configs {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// Checks a presented chain against the CA and a node's name.
    names: Arc<WebPkiServerVerifier>,
}

/// When each file last changed, and its size.
type Stamps = [Option<(SystemTime, u64)>; 3];

impl PeerTls {
    /// Reads the credentials in `files`.
    pub fn load(files: Files) -> Result<Arc<Self>, TlsError> {
        Self::load_as(files, None)
    }

    /// Reads the credentials in `files`; with `shared_name`, every peer's certificate must
    /// carry that name instead of its node's.
    pub fn load_as(files: Files, shared_name: Option<String>) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let configs = build(&files, &provider)?;
        Ok(Arc::new(Self {
            stamps: Mutex::new(stamps(&files)),
            files,
            shared_name,
            provider,
            current: RwLock::new(Arc::new(configs)),
            generation: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            refused: Warnings::default(),
        }))
    }

    /// Reads the files again whenever they change, for as long as the runtime runs;
    /// `reloaded` is called after each reload.
    pub fn watch(self: &Arc<Self>, reloaded: impl Fn() + Send + 'static) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let now = stamps(&this.files);
                if *this.stamps.lock().unwrap() == now {
                    continue;
                }
                match build(&this.files, &this.provider) {
                    Ok(configs) => {
                        *this.current.write().unwrap() = Arc::new(configs);
                        *this.stamps.lock().unwrap() = now;
                        this.generation.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(cert = %this.files.cert.display(), "peer certificates reloaded");
                        reloaded();
                    }
                    // Half-written files, or a mistake: keep what works, say so, try again.
                    Err(error) => {
                        tracing::error!(%error, "cannot reload the peer certificates; keeping the old ones")
                    }
                }
            }
        });
    }

    fn configs(&self) -> Arc<Configs> {
        Arc::clone(&self.current.read().unwrap())
    }

    /// Reloads so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// TLS handshakes with peers that failed, both ways.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// Counts a failed handshake, and warns of it (rate-limited): a peer with the wrong
    /// certificate, or a stranger, keeps trying.
    fn handshake_failed(&self, error: &std::io::Error, way: &str) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
        if let Some(failures) = self.refused.failed(std::time::Instant::now()) {
            tracing::warn!(
                %error,
                failures,
                "peer TLS handshake {way} failed (check both nodes' certificates and CA; \
                 failures counts those since the last such warning)"
            );
        }
    }

    /// The name node `id`'s certificate must carry.
    fn name_of(&self, id: NodeId) -> String {
        self.shared_name.clone().unwrap_or_else(|| name(id))
    }

    /// Opens TLS to node `id` on `stream`: its certificate must name `id`.
    pub async fn connect(&self, stream: TcpStream, id: NodeId) -> std::io::Result<Box<dyn Io>> {
        let server = ServerName::try_from(self.name_of(id)).map_err(std::io::Error::other)?;
        let connector = TlsConnector::from(Arc::clone(&self.configs().client));
        match connector.connect(server, stream).await {
            Ok(stream) => Ok(Box::new(stream)),
            Err(error) => {
                self.handshake_failed(&error, &format!("to node {id}"));
                Err(error)
            }
        }
    }

    /// Accepts TLS on `stream`, the handshake done `within` that time; the client's chain
    /// (verified against the CA) comes along.
    pub async fn accept(
        &self,
        stream: TcpStream,
        within: Duration,
    ) -> std::io::Result<(Box<dyn Io>, Presented)> {
        let from = stream
            .peer_addr()
            .map_or_else(|_| "from a peer".to_owned(), |addr| format!("from {addr}"));
        let acceptor = TlsAcceptor::from(Arc::clone(&self.configs().server));
        let accepted = tokio::time::timeout(within, acceptor.accept(stream))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no TLS handshake within {within:?}"),
                ))
            });
        let stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                self.handshake_failed(&error, &from);
                return Err(error);
            }
        };
        let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
        let (end_entity, intermediates) = chain
            .split_first()
            .ok_or_else(|| std::io::Error::other("the peer presented no certificate"))?;
        let presented = Presented {
            end_entity: end_entity.clone().into_owned(),
            intermediates: intermediates
                .iter()
                .map(|c| c.clone().into_owned())
                .collect(),
        };
        Ok((Box::new(stream), presented))
    }

    /// Whether `presented` is a certificate of the CA that names node `id`.
    pub fn names(&self, presented: &Presented, id: NodeId) -> bool {
        let Ok(server) = ServerName::try_from(self.name_of(id)) else {
            return false;
        };
        self.configs()
            .names
            .verify_server_cert(
                &presented.end_entity,
                &presented.intermediates,
                &server,
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }
}

fn stamps(files: &Files) -> Stamps {
    [&files.cert, &files.key, &files.ca].map(|path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    })
}

fn build(files: &Files, provider: &Arc<CryptoProvider>) -> Result<Configs, TlsError> {
    let invalid =
        |path: &Path, e: &dyn std::fmt::Display| TlsError::Invalid(path.to_owned(), e.to_string());
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| invalid(&files.key, &e))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.ca)? {
        roots.add(ca).map_err(|e| invalid(&files.ca, &e))?;
    }
    let roots = Arc::new(roots);
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(provider))
            .build()
            .map_err(|e| invalid(&files.ca, &e))?;
    let server = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid(&files.cert, &e))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| invalid(&files.cert, &e))?;
    let client = ClientConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid(&files.cert, &e))?
        .with_root_certificates(Arc::clone(&roots))
        .with_client_auth_cert(certs, key)
        .map_err(|e| invalid(&files.cert, &e))?;
    let names = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(provider))
        .build()
        .map_err(|e| invalid(&files.ca, &e))?;
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
        names,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Read(path.to_owned(), e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(path.to_owned(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}
