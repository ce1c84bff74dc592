//! sipfront's `tls:` listener for the interop tests whose phones speak TLS to it: a test CA and a certificate for
//! sipfront's address (rcgen), written as PEM files into the test dir, and the `[tls]` table that loads them. The
//! phones trust the CA file (baresip's `sip_cafile`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// The CA file (for the phones) and sipfront's `[tls]` table, for a certificate of `ip` written into `dir`.
pub fn front_tls(dir: &Path, ip: Ipv4Addr) -> (PathBuf, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "sipfront interop CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key")).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![ip.to_string()]).expect("leaf params");
    params.distinguished_name.push(rcgen::DnType::CommonName, ip.to_string());
    let cert = params.signed_by(&key, &ca).expect("leaf");
    let (ca_file, crt, key_file) = (dir.join("ca.pem"), dir.join("front.crt"), dir.join("front.key"));
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    std::fs::write(&crt, cert.pem()).expect("write cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write key");
    let section = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"",
        crt.display(),
        key_file.display(),
        ca_file.display()
    );
    (ca_file, section)
}
