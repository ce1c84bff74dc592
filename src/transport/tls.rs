//! TLS for stream connections: the server certificate (reloadable on SIGHUP), the client side toward TLS
//! backends, and the errors that name the `[tls]` key at fault. The connections themselves are the TCP pool's
//! (`tcp.rs`): TLS only wraps the stream before the pool adopts it.
//!
//! The ring crypto provider is named explicitly everywhere, so the process-wide default provider (which the AWS
//! SDK's rustls may install as aws-lc-rs) never matters here.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// A certificate, key or CA file that cannot be used. Each names the `[tls]` key it came from.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {}: {source}", path.display())]
    Read { key: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{key}: {} holds no PEM certificate", path.display())]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("tls.key_file: {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("tls.key_file: the key in {} does not match the certificate in {}: {reason}", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf, reason: String },
    #[error("{key}: {reason}")]
    Unusable { key: &'static str, reason: String },
}

impl TlsError {
    /// The config key at fault (`tls.key_file`), for config errors.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. } | TlsError::NoCertificate { key, .. } | TlsError::Unusable { key, .. } => key,
            TlsError::NoPrivateKey { .. } | TlsError::KeyMismatch { .. } => "tls.key_file",
        }
    }
}

/// What the TLS side needs from the config (kept apart from `config::TlsConfig` so this module reads no TOML).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Server certificate chain and key; `None` when the node has no `tls:` listener.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CAs that sign the backends' certificates; `None`: the platform's store.
    pub ca_file: Option<PathBuf>,
    pub verify_backends: bool,
    pub handshake_timeout: Duration,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.into(), source })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Unusable { key, reason: format!("{}: {e}", path.display()) })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { key, path: path.into() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let key = "tls.key_file";
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.into(), source })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoPrivateKey { path: path.into() })
}

/// Load the server certificate and key into a config: what a `tls:` listener hands every new connection.
pub fn load_server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs("tls.cert_file", cert_file)?;
    let key = read_key(key_file)?;
    let mismatch = |reason: String| TlsError::KeyMismatch { key: key_file.into(), cert: cert_file.into(), reason };
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Unusable { key: "tls", reason: e.to_string() })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| mismatch(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// The client config for TLS backends: verified against `ca_file` or the platform store, or not at all.
pub fn load_client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Unusable { key: "tls", reason: e.to_string() })?;
    let cfg = if !settings.verify_backends {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider()))).with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        match &settings.ca_file {
            Some(path) => {
                for c in read_certs("tls.ca_file", path)? {
                    roots.add(c).map_err(|e| TlsError::Unusable {
                        key: "tls.ca_file",
                        reason: format!("{}: {e}", path.display()),
                    })?;
                }
            }
            None => {
                // Unreadable entries in the platform store are skipped; an empty store fails every backend
                // handshake, which the health checks then report.
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    tracing::warn!("no CA certificates in the platform store: set tls.ca_file, or TLS backends fail");
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// The server certificate, replaceable while the node runs: every accept reads the current one, connections
/// already open keep the one they shook hands with.
pub struct Reloadable {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// A std `RwLock`: read once per accept, written once per SIGHUP, never held across an `.await`.
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloadable {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Reloadable, TlsError> {
        let current = RwLock::new(load_server_config(cert_file, key_file)?);
        Ok(Reloadable { cert_file: cert_file.into(), key_file: key_file.into(), current })
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Read the files again; on failure the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let new = load_server_config(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }
}

/// Everything the stream pool needs for TLS.
pub struct TlsContext {
    /// `None` when the node has no `tls:` listener (it may still reach TLS backends).
    pub server: Option<Reloadable>,
    pub client: Arc<ClientConfig>,
    pub handshake_timeout: Duration,
}

impl TlsContext {
    pub fn load(settings: &TlsSettings) -> Result<TlsContext, TlsError> {
        let server = match (&settings.cert_file, &settings.key_file) {
            (Some(c), Some(k)) => Some(Reloadable::load(c, k)?),
            _ => None,
        };
        if !settings.verify_backends {
            tracing::warn!(
                "tls.verify_backends = false: certificates of TLS backends are NOT verified; \
                 anyone on the path can impersonate a PBX (lab use only)"
            );
        }
        Ok(TlsContext { server, client: load_client_config(settings)?, handshake_timeout: settings.handshake_timeout })
    }

    /// The name a backend's certificate must carry: its IP address (backends are configured by address).
    pub fn server_name(ip: IpAddr) -> ServerName<'static> {
        ServerName::IpAddress(ip.into())
    }
}

/// Accepts any backend certificate (`verify_backends = false`); handshake signatures are still checked, so the
/// peer holds the key of the certificate it shows.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
