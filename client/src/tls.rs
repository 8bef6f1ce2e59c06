//! TLS on the client port (optional; the peer port always has it).
//!
//! A node started with `api_tls` in its configuration serves clients only
//! over TLS, with the certificate and key it names. A client given the CA
//! that signed that certificate ([`ClientTls`]) checks the node's chain
//! against it and the endpoint's host (a DNS name or an IP address) against
//! the certificate's names. Players have no client certificates: they prove
//! who they are by signing. TLS 1.3 and 1.2, with rustls' `ring` provider.
//!
//! The two cannot be mixed. A plaintext client at a TLS port fails at its
//! first request (the node reads it as a bad handshake and closes the
//! connection); a TLS client at a plaintext port fails in the handshake
//! (the node reads its hello as an oversized frame and closes).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

/// The client's end: the CA it trusts for the cluster's client ports.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Trusts the CA certificate(s) in the PEM file at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        Self::from_ca_pem(&read(path, "CA certificate")?)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Trusts the CA certificate(s) in `pem`.
    pub fn from_ca_pem(pem: &[u8]) -> Result<Self, String> {
        let roots = garrison_wire::ca_roots(pem)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Runs the handshake on `stream`, connected to `addr` (`host:port`),
    /// checking the node's certificate against `host`.
    pub async fn connect(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> Result<client::TlsStream<TcpStream>, String> {
        let name = server_name(addr)?;
        self.connector
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))
    }
}

/// The host of `addr` (`host:port`, `[v6]:port`) as a TLS server name.
fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = addr
        .rsplit_once(':')
        .map(|(host, _)| host)
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} is neither a DNS name nor an IP address: {e}"))
}

/// The node's end: its client-port certificate chain and key.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// Loads the certificate chain and private key (PEM files).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        Self::from_pem(&read(cert, "certificate")?, &read(key, "key")?)
            .map_err(|e| format!("{}, {}: {e}", cert.display(), key.display()))
    }

    /// From PEM bytes: the certificate (optionally followed by
    /// intermediates) and its private key (PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate is not PEM: {e}"))?;
        if chain.is_empty() {
            return Err("the certificate file holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| format!("the key is not a PEM private key: {e}"))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the server side of the handshake on an accepted connection.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<server::TlsStream<TcpStream>> {
        self.acceptor.accept(stream).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_endpoint_host() {
        assert_eq!(
            server_name("127.0.0.1:7601").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("[::1]:7601").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            server_name("game.example.org:443").unwrap(),
            ServerName::try_from("game.example.org").unwrap()
        );
        assert!(server_name("no-port").unwrap_err().contains("host:port"));
        assert!(server_name("bad host!:1").is_err());
    }

    #[test]
    fn unusable_pem_is_refused_with_a_reason() {
        let none = ClientTls::from_ca_pem(b"").unwrap_err();
        assert!(none.contains("no certificate"), "{none}");
        let junk = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        assert!(ClientTls::from_ca_pem(junk).is_err());
        let empty = ServerTls::from_pem(b"", b"").unwrap_err();
        assert!(empty.contains("no certificate"), "{empty}");
    }
}
