//! Certificates made per test (rcgen): a CA, server and client leaves,
//! written to PEM files where a daemon or client reads them.

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority made for one test.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf's PEM files (chain, key) in a directory of their own.
pub struct PemPair {
    _dir: tempfile::TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The key's PEM, to check it never leaks.
    pub key_pem: String,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "deployd test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// A server certificate for `names` and its key.
    pub fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        (
            vec![cert.der().clone(), self.issuer.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
    }

    fn write(params: CertificateParams, issuer: &Ca) -> PemPair {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &issuer.issuer).expect("leaf");
        let dir = tempfile::tempdir().expect("dir");
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.pem() + &issuer.issuer.pem()).expect("write cert");
        let key_pem = key.serialize_pem();
        std::fs::write(&key_path, &key_pem).expect("write key");
        PemPair {
            _dir: dir,
            cert: cert_path,
            key: key_path,
            key_pem,
        }
    }

    /// A server certificate for `names`, as files.
    pub fn server_files(&self, names: &[&str]) -> PemPair {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        Self::write(params, self)
    }

    /// A client certificate naming `uri` (a URI SAN), or with `cn` only;
    /// `expired` makes one whose validity ended in 2020.
    pub fn client_files(&self, uri: Option<&str>, cn: &str, expired: bool) -> PemPair {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(u) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(u.try_into().expect("URI SAN")));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = date_time_ymd(2019, 1, 1);
            params.not_after = date_time_ymd(2020, 1, 1);
        }
        Self::write(params, self)
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn pem_file(&self) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), self.issuer.pem()).expect("write CA");
        f
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read PEM")
}
