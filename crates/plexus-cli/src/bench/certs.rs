//! `--tls`: a throwaway certificate authority for one run, and a certificate for each node
//! naming it (`plexus::node_name`), written as PEM files into the run's own directory
//! (owner-only, removed with it): `ca.crt`, and `node<i>.crt` / `node<i>.key`.

use std::path::Path;

use plexus::NodeId;

/// Writes the authority and the certificates of nodes `0..nodes` into `dir`.
pub fn write(dir: &Path, nodes: u32) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("--tls: making certificates: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(&e))?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "plexus bench authority");
    let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail(&e))?;
    let put = |name: String, text: String| {
        std::fs::write(dir.join(&name), text).map_err(|e| fail(&format!("{name}: {e}")))
    };
    put("ca.crt".into(), ca_cert.pem())?;
    for i in 0..nodes {
        let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
        let params = rcgen::CertificateParams::new(vec![plexus::node_name(NodeId(i))])
            .map_err(|e| fail(&e))?;
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .map_err(|e| fail(&e))?;
        put(format!("node{i}.crt"), cert.pem())?;
        put(format!("node{i}.key"), key.serialize_pem())?;
    }
    Ok(())
}

/// The files of node `i` in `dir`: certificate, key, authority.
pub fn files(dir: &Path, i: u32) -> [std::path::PathBuf; 3] {
    [
        dir.join(format!("node{i}.crt")),
        dir.join(format!("node{i}.key")),
        dir.join("ca.crt"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_gets_an_identity_the_library_accepts() {
        let dir = super::super::agents::TempDir::create().expect("dir");
        write(dir.path(), 3).expect("written");
        for i in 0..3 {
            let [cert, key, ca] = files(dir.path(), i);
            plexus::TlsIdentity::from_pem_files(&cert, &key, &ca).expect("identity");
        }
    }
}
