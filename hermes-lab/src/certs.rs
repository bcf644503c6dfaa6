//! Certificates for a cluster's peers (rcgen): a CA, and per node a certificate naming it
//! `hermes-node-<id>` (a DNS name), for both server and client use, as `hermes-agent
//! --peer-cert/--peer-key/--peer-ca` wants them. `cargo xtask certs` writes a set; the lab makes
//! one per cluster.
use std::{
    io,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate authority for one cluster.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// Where a node's files are, as the agent's flags want them.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl NodeFiles {
    /// `--peer-cert C --peer-key K --peer-ca A`.
    pub fn args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_str().expect("UTF-8 path").to_owned();
        vec![
            "--peer-cert".into(),
            path(&self.cert),
            "--peer-key".into(),
            path(&self.key),
            "--peer-ca".into(),
            path(&self.ca),
        ]
    }
}

fn error(e: rcgen::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl Authority {
    /// A new CA called `name`.
    pub fn new(name: &str) -> io::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(error)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(error)?;
        Ok(Self { issuer })
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate and key (PEM) for node `id`.
    pub fn node(&self, id: u64) -> io::Result<(String, String)> {
        self.named(&format!("hermes-node-{id}"))
    }

    /// A certificate and key (PEM) carrying the DNS name `name` (pod mode's agents share one,
    /// `hermes-agent`).
    pub fn named(&self, name: &str) -> io::Result<(String, String)> {
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(error)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Writes `ca.pem` and, for each of `ids`, `node-<id>.pem` and `node-<id>-key.pem` (mode
    /// 0600) into `dir`; returns each node's files.
    pub fn write(&self, dir: &Path, ids: &[u64]) -> io::Result<Vec<NodeFiles>> {
        std::fs::create_dir_all(dir)?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, self.pem())?;
        ids.iter()
            .map(|&id| {
                let (cert_pem, key_pem) = self.node(id)?;
                let files = NodeFiles {
                    cert: dir.join(format!("node-{id}.pem")),
                    key: dir.join(format!("node-{id}-key.pem")),
                    ca: ca.clone(),
                };
                std::fs::write(&files.cert, cert_pem)?;
                write_private(&files.key, key_pem.as_bytes())?;
                Ok(files)
            })
            .collect()
    }
}

impl Authority {
    /// Writes `ca.pem`, `<name>.pem` and `<name>-key.pem` (mode 0600) into `dir`, for a
    /// certificate carrying the DNS name `name`.
    pub fn write_named(&self, dir: &Path, name: &str) -> io::Result<NodeFiles> {
        std::fs::create_dir_all(dir)?;
        let files = NodeFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&files.ca, self.pem())?;
        let (cert_pem, key_pem) = self.named(name)?;
        std::fs::write(&files.cert, cert_pem)?;
        write_private(&files.key, key_pem.as_bytes())?;
        Ok(files)
    }
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}
