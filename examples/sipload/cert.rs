//! `sipload gen-cert DIR`: a throwaway CA and a server certificate for the bench (rcgen), as PEM files.

use std::path::Path;

use anyhow::Context as _;

pub fn generate(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "sipload bench CA");
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate()?)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "sipload bench proxy");
    let leaf = params.signed_by(&key, &ca)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("server.crt"), leaf.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    eprintln!("wrote ca.pem, server.crt, server.key to {}", dir.display());
    Ok(())
}
