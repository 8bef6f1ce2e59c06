//! Development certificates: a cluster CA and, per node, a certificate for
//! the peer port and one for the client port, made with rcgen (`garrison
//! certs`, `garrison dev`, the fault harness and the tests use this).
//!
//! The layout of a certificate directory ([`TlsFiles::in_dir`],
//! [`api_cert_files`]): `ca.pem` and `ca.key` (the CA); per node
//! `node-<id>.pem` and `node-<id>.key` (peer port), `api-<id>.pem` and
//! `api-<id>.key` (client port, used when the node has `api_tls`). Keys
//! are ECDSA P-256, PKCS#8 PEM, written with mode 0600. A node certificate
//! carries exactly one DNS name, `node-<id>.garrison` (its identity, see
//! [`crate::network::tls`]), and may serve as a TLS server and client. A
//! client-port certificate names `localhost`, `127.0.0.1` and `::1` (the
//! hosts a development client dials) and serves as a TLS server only.
//! Certificates use rcgen's default validity (1975 to 4096): this is a
//! development CA; a production cluster brings its own CA and issues
//! certificates of the same shape.
//!
//! Making certificates is idempotent: an existing CA in the directory is
//! reused, and so are existing node files, unless the CA was just created
//! (then every requested node certificate is issued anew).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::Error;
use crate::network::tls::{node_name, TlsFiles};
use crate::typ::NodeId;

/// What [`ensure_dev_certs`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertsReport {
    /// Whether the CA was created (false: an existing one was reused).
    pub ca_created: bool,
    /// Nodes whose peer-port certificate was issued now.
    pub issued: Vec<NodeId>,
    /// Nodes whose existing peer-port certificate and key were kept.
    pub kept: Vec<NodeId>,
    /// Nodes whose client-port certificate was issued now (the others'
    /// were kept).
    pub api_issued: Vec<NodeId>,
}

/// Errors of making certificates are configuration errors: the message
/// names the file.
fn certs_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("certificates: {what} {}: {e}", path.display()))
}

fn rcgen_error(e: rcgen::Error) -> Error {
    Error::Config(format!("certificates: {e}"))
}

/// Makes sure `dir` holds a CA and a certificate for each of `nodes`,
/// creating whatever is missing.
pub fn ensure_dev_certs(dir: &Path, nodes: &[NodeId]) -> Result<CertsReport, Error> {
    std::fs::create_dir_all(dir).map_err(|e| certs_error("cannot create", dir, e))?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca.key");
    let mut report = CertsReport::default();
    let issuer = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => {
            let key = KeyPair::from_pem(&read(&ca_key)?)
                .map_err(|e| certs_error("unusable CA key", &ca_key, e))?;
            Issuer::from_ca_cert_pem(&read(&ca_cert)?, key)
                .map_err(|e| certs_error("unusable CA certificate", &ca_cert, e))?
        }
        (false, false) => {
            let key = KeyPair::generate().map_err(rcgen_error)?;
            let params = ca_params();
            let cert = params
                .self_signed(&key)
                .map_err(rcgen_error)?;
            write(&ca_key, &key.serialize_pem(), 0o600)?;
            write(&ca_cert, &cert.pem(), 0o644)?;
            report.ca_created = true;
            Issuer::new(params, key)
        }
        _ => {
            return Err(Error::Config(format!(
                "{} holds only half a CA (ca.pem and ca.key go together); remove the other file or restore it",
                dir.display()
            )))
        }
    };
    // Each pair is kept or issued on its own: a directory made before
    // client-port certificates existed keeps its nodes' peer certificates.
    let fresh = |cert: &Path, key: &Path| report.ca_created || !(cert.exists() && key.exists());
    for &id in nodes {
        let files = TlsFiles::in_dir(dir, id);
        let (api_cert, api_key) = api_cert_files(dir, id);
        let (peer_fresh, api_fresh) = (
            fresh(&files.node_cert, &files.node_key),
            fresh(&api_cert, &api_key),
        );
        if peer_fresh {
            issue(&issuer, node_params(id)?, &files.node_cert, &files.node_key)?;
            report.issued.push(id);
        } else {
            report.kept.push(id);
        }
        if api_fresh {
            issue(&issuer, api_params(id)?, &api_cert, &api_key)?;
            report.api_issued.push(id);
        }
    }
    Ok(report)
}

/// Writes a new key, then a certificate for it signed by `issuer`.
fn issue(
    issuer: &Issuer<'_, KeyPair>,
    params: CertificateParams,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), Error> {
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let cert = params.signed_by(&key, issuer).map_err(rcgen_error)?;
    write(key_path, &key.serialize_pem(), 0o600)?;
    write(cert_path, &cert.pem(), 0o644)
}

/// Where node `id`'s client-port certificate and key are in `dir`:
/// `api-<id>.pem` and `api-<id>.key`.
pub fn api_cert_files(dir: &Path, id: NodeId) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("api-{id}.pem")),
        dir.join(format!("api-{id}.key")),
    )
}

/// The hosts a development client dials, named in every client-port
/// certificate.
pub const DEV_API_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A node's client port: the local hosts; TLS server only.
fn api_params(id: NodeId) -> Result<CertificateParams, Error> {
    let hosts: Vec<String> = DEV_API_HOSTS.iter().map(|h| h.to_string()).collect();
    let mut params = CertificateParams::new(hosts).map_err(rcgen_error)?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("garrison node {id} client port"),
    );
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// The CA: may sign certificates, nothing else.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "garrison development CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A node: one DNS name, `node-<id>.garrison`; TLS server and client.
fn node_params(id: NodeId) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(vec![node_name(id)]).map_err(rcgen_error)?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("garrison node {id}"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| certs_error("cannot read", path, e))
}

/// Writes `text` to `path` with `mode`, through a temporary file and a
/// rename, so a crash never leaves half a PEM file behind.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(|e| certs_error("cannot create", &temp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| certs_error("cannot write", &temp, e))?;
    std::fs::rename(&temp, path).map_err(|e| certs_error("cannot write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::tls::PeerTls;

    #[test]
    fn certificates_name_their_node_and_a_second_run_reuses_everything() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_dev_certs(dir.path(), &[1, 2]).unwrap();
        assert!(first.ca_created);
        assert_eq!(first.issued, vec![1, 2]);
        let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        assert_eq!(first.api_issued, vec![1, 2]);
        let second = ensure_dev_certs(dir.path(), &[1, 2, 3]).unwrap();
        assert!(!second.ca_created);
        assert_eq!((second.kept, second.issued), (vec![1, 2], vec![3]));
        assert_eq!(second.api_issued, vec![3]);
        // A directory from before client-port certificates: only those are
        // issued; the peer certificate stays as it was.
        let node_1 = std::fs::read(dir.path().join("node-1.pem")).unwrap();
        let (api_cert, api_key) = api_cert_files(dir.path(), 1);
        std::fs::remove_file(&api_cert).unwrap();
        std::fs::remove_file(&api_key).unwrap();
        let third = ensure_dev_certs(dir.path(), &[1]).unwrap();
        assert_eq!((third.kept, third.api_issued), (vec![1], vec![1]));
        assert!(api_cert.exists() && api_key.exists());
        assert_eq!(
            std::fs::read(dir.path().join("node-1.pem")).unwrap(),
            node_1
        );
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
        // Node 3's certificate, signed by the reloaded CA, loads as node 3 only.
        PeerTls::load(&TlsFiles::in_dir(dir.path(), 3), 3).unwrap();
        let wrong = PeerTls::load(&TlsFiles::in_dir(dir.path(), 3), 1).unwrap_err();
        assert!(wrong.to_string().contains("for node 3"), "{wrong}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("node-3.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn half_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        ensure_dev_certs(dir.path(), &[1]).unwrap();
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let err = ensure_dev_certs(dir.path(), &[1]).unwrap_err();
        assert!(err.to_string().contains("half a CA"), "{err}");
    }
}
