//! Mutual TLS on the peer port: who a peer is comes from its certificate.
//!
//! Every node holds a certificate from the cluster's CA whose subject
//! alternative names contain exactly one DNS name of the form
//! `node-<id>.garrison` ([`node_name`]): that name *is* the node's identity.
//! Both ends of a peer connection present one and check the other's:
//!
//! - the connecting side verifies the server's chain against the CA and that
//!   the server is the node it meant to reach (its name is the TLS server
//!   name, and [`certified_node`] must agree);
//! - the accepting side requires a client certificate from the CA
//!   (rustls' `WebPkiClientVerifier`) and reads the peer's node id out of it;
//!   the listener then refuses every request whose `Header.from` is another
//!   node (`PeerError::ForgedSender`).
//!
//! A peer without a certificate, with one from another CA, or speaking
//! plaintext fails the handshake and its connection is closed. There is no
//! setting that turns TLS off. Only TLS 1.3 is offered (both ends are
//! garrison), with rustls' `ring` provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::error::Error;
use crate::typ::NodeId;

/// What follows the node id in a node's DNS name.
pub const NODE_NAME_SUFFIX: &str = ".garrison";
/// What precedes the node id in a node's DNS name.
pub const NODE_NAME_PREFIX: &str = "node-";

/// The DNS name that identifies node `id` in its certificate: `node-<id>.garrison`.
pub fn node_name(id: NodeId) -> String {
    format!("{NODE_NAME_PREFIX}{id}{NODE_NAME_SUFFIX}")
}

/// The node id a DNS name stands for, if it is exactly [`node_name`] of one
/// (decimal, no leading zeros or sign).
pub fn parse_node_name(name: &str) -> Option<NodeId> {
    let digits = name
        .strip_prefix(NODE_NAME_PREFIX)?
        .strip_suffix(NODE_NAME_SUFFIX)?;
    let id: NodeId = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

/// The node a certificate identifies: its one `node-<id>.garrison` DNS name.
/// A certificate naming no node, or more than one, identifies none.
pub fn certified_node(cert: &CertificateDer<'_>) -> Result<NodeId, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| format!("the certificate's subject alternative names are invalid: {e}"))?
        .ok_or("the certificate has no subject alternative name")?;
    let mut ids = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => parse_node_name(dns),
            _ => None,
        });
    match (ids.next(), ids.next()) {
        (Some(id), None) => Ok(id),
        (None, _) => Err(format!(
            "the certificate names no node (no DNS name {NODE_NAME_PREFIX}<id>{NODE_NAME_SUFFIX})"
        )),
        (Some(a), Some(b)) => Err(format!(
            "the certificate names more than one node ({a}, {b}, ...)"
        )),
    }
}

/// Where a node finds its TLS material (PEM files).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA's certificate: peers must present a certificate it signed.
    pub ca_cert: PathBuf,
    /// This node's certificate (optionally followed by intermediates); its
    /// one DNS name `node-<id>.garrison` must name this node.
    pub node_cert: PathBuf,
    /// This node's private key (PKCS#8, SEC1 or PKCS#1).
    pub node_key: PathBuf,
}

impl TlsFiles {
    /// The layout `garrison certs` writes in `dir`: `ca.pem`,
    /// `node-<id>.pem`, `node-<id>.key`.
    pub fn in_dir(dir: &Path, id: NodeId) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            node_cert: dir.join(format!("node-{id}.pem")),
            node_key: dir.join(format!("node-{id}.key")),
        }
    }
}

/// One node's TLS identity and trust: makes the client and server ends of
/// peer connections.
#[derive(Clone)]
pub struct PeerTls {
    me: NodeId,
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("me", &self.me).finish()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read the {what} {}: {e}", path.display())))
}

impl PeerTls {
    /// Loads node `me`'s TLS material from `files`; the node certificate
    /// must name `me`.
    pub fn load(files: &TlsFiles, me: NodeId) -> Result<Self, Error> {
        Self::from_pem(
            &read(&files.ca_cert, "CA certificate")?,
            &read(&files.node_cert, "node certificate")?,
            &read(&files.node_key, "node key")?,
            me,
        )
        .map_err(|e| {
            Error::Config(format!(
                "TLS files {}, {}, {}: {e}",
                files.ca_cert.display(),
                files.node_cert.display(),
                files.node_key.display()
            ))
        })
    }

    /// Builds node `me`'s TLS ends from PEM bytes: the CA certificate(s),
    /// the node's certificate chain and its private key.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8], me: NodeId) -> Result<Self, String> {
        let roots = garrison_wire::ca_roots(ca)?;
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the node certificate is not PEM: {e}"))?;
        let leaf = chain.first().ok_or("the node certificate file is empty")?;
        let named = certified_node(leaf)?;
        if named != me {
            return Err(format!(
                "the node certificate is for node {named}, but this is node {me}"
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| format!("the node key is not a PEM private key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let versions = &[&rustls::version::TLS13];

        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("the node key does not fit its certificate: {e}"))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("cannot verify peers with this CA: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| format!("the node key does not fit its certificate: {e}"))?;
        Ok(Self {
            me,
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// The node this identity belongs to.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The client end: a TLS handshake on `stream` with `target`, which
    /// must present the CA's certificate for `target` and no other node.
    pub async fn connect(
        &self,
        stream: TcpStream,
        target: NodeId,
    ) -> std::io::Result<client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(node_name(target)).map_err(invalid)?;
        let stream = self.connector.connect(name, stream).await?;
        let (_, session) = stream.get_ref();
        let node = peer_node(session.peer_certificates())?;
        if node != target {
            return Err(invalid(format!(
                "the server's certificate is for node {node}, not {target}"
            )));
        }
        Ok(stream)
    }

    /// The server end: a TLS handshake on `stream`, requiring a client
    /// certificate from the CA. Returns the stream and the peer's node id.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(server::TlsStream<TcpStream>, NodeId)> {
        let stream = self.acceptor.accept(stream).await?;
        let node = peer_node(stream.get_ref().1.peer_certificates())?;
        Ok((stream, node))
    }
}

/// The node id of the end-entity certificate a handshake verified.
fn peer_node(certs: Option<&[CertificateDer<'_>]>) -> std::io::Result<NodeId> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| invalid("the peer presented no certificate"))?;
    certified_node(leaf).map_err(invalid)
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip_and_nothing_else_parses() {
        for id in [0, 1, 42, u64::MAX] {
            assert_eq!(parse_node_name(&node_name(id)), Some(id));
        }
        for bad in [
            "node-01.garrison",
            "node-+1.garrison",
            "node-.garrison",
            "node-1.garrison.evil",
            "node-1",
            "xnode-1.garrison",
            "node-18446744073709551616.garrison",
        ] {
            assert_eq!(parse_node_name(bad), None, "{bad}");
        }
    }
}
