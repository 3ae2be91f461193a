//! Tests of the CA, identities and their checks together.

use crate::*;
use std::time::{Duration, SystemTime};
use x509_parser::prelude::*;

const DAY: Duration = Duration::from_secs(86400);

fn issue(ca: &RootCa, cluster: &ClusterId, role: Role) -> (NodeId, IssuedCert) {
    let key = NodeKey::generate().unwrap();
    let node = NodeId::generate();
    let cert = ca
        .sign_node(&key.csr_der().unwrap(), &node, role, cluster, 90 * DAY)
        .unwrap();
    (node, cert)
}

#[test]
fn node_certificate_carries_ca_chosen_names() {
    let ca = RootCa::generate(20 * 365 * DAY).unwrap();
    let cluster = ClusterId::generate();
    let (node, issued) = issue(&ca, &cluster, Role::Worker);
    let (_, cert) = X509Certificate::from_der(&issued.cert_der).unwrap();
    let s = cert.subject();
    assert_eq!(
        s.iter_common_name().next().unwrap().as_str().unwrap(),
        node.as_str()
    );
    assert_eq!(
        s.iter_organizational_unit()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "shoal-worker"
    );
    assert_eq!(
        s.iter_organization().next().unwrap().as_str().unwrap(),
        cluster.as_str()
    );
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(
        sans.contains(&"DNSName(shoal-worker)".to_string()),
        "{sans:?}"
    );
    assert!(sans.contains(&format!("DNSName({node})")), "{sans:?}");
    assert!(
        sans.contains(&format!("URI(spiffe://{cluster}/node/{node})")),
        "{sans:?}"
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    let want = (90 * DAY + CERT_BACKDATE).as_secs() as i64;
    assert!((life - want).abs() <= 2, "life {life}s, want {want}s");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        cert.validity().not_before.timestamp() < now - 60,
        "backdated"
    );
}

#[test]
fn csr_subject_is_ignored() {
    // A CSR that asks to be a manager named "evil" gets what the CA decides.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["shoal-manager".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "evil");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "shoal-manager");
    let csr = params.serialize_request(&key).unwrap();
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let node = NodeId::generate();
    let issued = ca
        .sign_node(csr.der(), &node, Role::Worker, &cluster, DAY)
        .unwrap();
    let trust = ClusterTrust::new(cluster, &[ca.cert_der().to_vec()]).unwrap();
    let id = trust
        .verify(&issued.cert_der, &[], SystemTime::now())
        .unwrap();
    assert_eq!(id.role(), Role::Worker);
    assert_eq!(id.node_id(), &node);
}

#[test]
fn verified_certificate_becomes_identity() {
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let (node, issued) = issue(&ca, &cluster, Role::Manager);
    let trust = ClusterTrust::new(cluster.clone(), &[ca.cert_der().to_vec()]).unwrap();
    let id = trust
        .verify(&issued.cert_der, &[], SystemTime::now())
        .unwrap();
    assert_eq!(id.node_id(), &node);
    assert_eq!(id.role(), Role::Manager);
    assert_eq!(id.cluster_id(), &cluster);
    assert_eq!(id.serial(), issued.serial);
}

#[test]
fn certificate_of_another_ca_with_same_names_is_refused() {
    let ca = RootCa::generate(DAY).unwrap();
    let other = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let (_, forged) = issue(&other, &cluster, Role::Manager);
    let trust = ClusterTrust::new(cluster, &[ca.cert_der().to_vec()]).unwrap();
    let err = trust
        .verify(&forged.cert_der, &[], SystemTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("chain check failed"), "{err}");
}

#[test]
fn certificate_of_another_cluster_is_refused() {
    let ca = RootCa::generate(DAY).unwrap();
    let (_, cert) = issue(&ca, &ClusterId::generate(), Role::Worker);
    let trust = ClusterTrust::new(ClusterId::generate(), &[ca.cert_der().to_vec()]).unwrap();
    let err = trust
        .verify(&cert.cert_der, &[], SystemTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("is for cluster"), "{err}");
}

#[test]
fn expired_certificate_is_refused() {
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .sign_node(
            &key.csr_der().unwrap(),
            &NodeId::generate(),
            Role::Worker,
            &cluster,
            MIN_CERT_EXPIRY,
        )
        .unwrap();
    let trust = ClusterTrust::new(cluster, &[ca.cert_der().to_vec()]).unwrap();
    let later = SystemTime::now() + Duration::from_secs(120);
    assert!(trust.verify(&cert.cert_der, &[], later).is_err());
}

#[test]
fn short_expiry_and_bad_csr_are_refused() {
    let ca = RootCa::generate(DAY).unwrap();
    let key = NodeKey::generate().unwrap();
    let c = ClusterId::generate();
    let n = NodeId::generate();
    let err = ca
        .sign_node(
            &key.csr_der().unwrap(),
            &n,
            Role::Worker,
            &c,
            Duration::from_secs(59),
        )
        .unwrap_err();
    assert!(err.to_string().contains("minimum of 1 minute"), "{err}");
    let err = ca
        .sign_node(
            &key.csr_der().unwrap(),
            &n,
            Role::Worker,
            &c,
            Duration::from_secs(u64::MAX / 4),
        )
        .unwrap_err();
    assert!(err.to_string().contains("maximum of 20 years"), "{err}");
    let err = ca
        .sign_node(b"garbage", &n, Role::Worker, &c, DAY)
        .unwrap_err();
    assert!(matches!(err, PkiError::BadCsr(_)), "{err}");
}

#[test]
fn root_round_trips_through_pem() {
    let ca = RootCa::generate(DAY).unwrap();
    let again = RootCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(again.cert_der(), ca.cert_der());
    assert_eq!(again.digest(), ca.digest());
    assert_eq!(ca.digest().len(), 50);
    let cluster = ClusterId::generate();
    let (_, cert) = issue(&again, &cluster, Role::Worker);
    let trust = ClusterTrust::new(cluster, &[ca.cert_der().to_vec()]).unwrap();
    assert!(trust.verify(&cert.cert_der, &[], SystemTime::now()).is_ok());
}

#[test]
fn csr_key_matches_only_its_own_certificate() {
    let ca = RootCa::generate(DAY).unwrap();
    let cluster = ClusterId::generate();
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .sign_node(
            &key.csr_der().unwrap(),
            &NodeId::generate(),
            Role::Worker,
            &cluster,
            DAY,
        )
        .unwrap();
    assert!(csr_matches_cert(&key.csr_der().unwrap(), &cert.cert_der).unwrap());
    let other = NodeKey::generate().unwrap();
    assert!(!csr_matches_cert(&other.csr_der().unwrap(), &cert.cert_der).unwrap());
}
